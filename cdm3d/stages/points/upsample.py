"""``points.upsample``: a coarse cloud + CLIP embedding(s) -> a denser cloud.

The stage generates ``num_points`` new points conditioned on the (augmented)
coarse cloud and returns the coarse points followed by the new ones, as Point-E's
upsampler does; unlike Point-E's text path, it keeps the CLIP conditioning.

With ``anchored``, new point ``j`` is generated as an offset from coarse point
``j mod M`` (its anchor; the offset's xyz divided by ``anchor_scale``), and the
anchor enters that point's token. Diffusion then models the local spread of the
surface around each coarse point instead of the whole shape again: an offset of
zero is nearest-neighbour upsampling, what the model improves on. Training pairs
each anchor with points drawn from its Voronoi cell in a dense sample of the
surface (``anchored_children``), so anchors and offsets together cover the
surface uniformly.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from cdm3d.core import STAGES, DiffusionStage, DiffusionStageConfig
from cdm3d.core.augmentation import AugmentationConfig
from cdm3d.core.stage import DiffusionConfig
from cdm3d.errors import InputError
from cdm3d.models.point_transformer import PointDenoiser, PointTransformerConfig, tile_anchors
from cdm3d.stages.points.coarse import CHANNELS, PointStageMixin
from cdm3d.stages.points.frame import Frame, from_network, to_network
from cdm3d.types import PointClouds


class UpsamplePointsConfig(DiffusionStageConfig):
    type: Literal["points.upsample"] = "points.upsample"
    cond_keys: list[str] = ["text", "image"]
    # New points generated; the output holds the coarse points plus these.
    num_points: int = Field(3072, ge=1)
    # The coarse cloud size the stage is trained with (others are accepted).
    coarse_points: int = Field(1024, ge=1)
    network: PointTransformerConfig = PointTransformerConfig()
    diffusion: DiffusionConfig = DiffusionConfig(augmentation=AugmentationConfig(max_level=0.3))
    # Generate offsets from anchor points (see the module docstring); off: absolute positions, as Point-E.
    anchored: bool = False
    anchor_scale: float = Field(0.04, gt=0)  # xyz offsets are divided by this (about their spread on the world)
    frame: Frame = "cdm3d"  # the network's coordinate frame (points.coarse)
    # Refuse coarse clouds of another size than coarse_points (a network trained on one size only: Point-E's).
    exact_coarse_points: bool = False

    @model_validator(mode="after")
    def _check_frame(self) -> UpsamplePointsConfig:
        if self.anchored and self.frame != "cdm3d":
            raise ValueError("an anchored upsampler works in cdm3d's frame; frame must be 'cdm3d'")
        return self


@STAGES.register("points.upsample")
class UpsamplePointsStage(PointStageMixin, DiffusionStage):
    Config = UpsamplePointsConfig
    config: UpsamplePointsConfig
    consumes: ClassVar[str] = "PointClouds"
    produces: ClassVar[str] = "PointClouds"

    def build_network(self) -> nn.Module:
        cfg = self.config
        return PointDenoiser(
            cfg.network, CHANNELS, cfg.embed_dim, len(cfg.cond_keys), cond_channels=CHANNELS, anchored=cfg.anchored
        )

    def _offset_scale(self, device: torch.device) -> torch.Tensor:
        s = self.config.anchor_scale
        return torch.tensor([s, s, s, 1.0, 1.0, 1.0], device=device)

    def sample_shape(self) -> tuple[int, ...]:
        return (self.config.num_points, CHANNELS)

    def condition_input(self, prev: Any) -> torch.Tensor:
        self.check_prev(prev)
        cfg = self.config
        if cfg.exact_coarse_points and prev.num_points != cfg.coarse_points:
            raise InputError(
                f"stage '{self.name}' upsamples clouds of exactly {cfg.coarse_points} points, got {prev.num_points}"
            )
        return to_network(prev.to_tensor(), cfg.frame)

    def to_output(self, x: torch.Tensor, prev: Any) -> PointClouds:
        if not isinstance(prev, PointClouds):
            raise InputError(f"stage '{self.name}' needs the coarse PointClouds to complete its output")
        if self.config.anchored:
            anchors = tile_anchors(prev.to_tensor().to(x.device, x.dtype), x.shape[1])
            x = anchors + x * self._offset_scale(x.device)
        x = from_network(x, self.config.frame)
        return PointClouds.concat([prev.to("cpu"), PointClouds.from_tensor(x.cpu())])

    def loss(
        self,
        x0: torch.Tensor,
        cond: Any,
        cond_input: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        part: tuple[int, int] | None = None,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """The diffusion loss; an anchored stage's targets ``x0`` (absolute new points, point ``j`` drawn
        around anchor ``j mod M``) become offsets from their anchors first."""
        if self.config.anchored and cond_input is not None:
            x0 = (x0 - tile_anchors(cond_input, x0.shape[1])) / self._offset_scale(x0.device)
        return super().loss(x0, cond, cond_input, generator, part, net)
