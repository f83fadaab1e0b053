"""``points.coarse``: CLIP embedding(s) -> a coloured point cloud of ``num_points`` points."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from cdm3d.core import STAGES, DiffusionStage, DiffusionStageConfig
from cdm3d.models.point_transformer import PointDenoiser, PointTransformerConfig
from cdm3d.stages.points.frame import Frame, from_network, to_network
from cdm3d.types import PointClouds

CHANNELS = 6  # xyz + rgb


class CoarsePointsConfig(DiffusionStageConfig):
    type: Literal["points.coarse"] = "points.coarse"
    # Text and image slots both: one model serves text-to-3D and image-to-3D.
    cond_keys: list[str] = ["text", "image"]
    num_points: int = Field(1024, ge=1)
    network: PointTransformerConfig = PointTransformerConfig()
    # The network's coordinate frame (frame.py): "pointe" for Point-E's converted models, which also draw their
    # noise channels-first, as Point-E does, so that a seed gives Point-E's sample.
    frame: Frame = "cdm3d"


class PointStageMixin:
    """What the point diffusion stages share: the network's frame, mapped at the stage's boundary."""

    config: CoarsePointsConfig

    def draw_noise(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        n, c = self.sample_shape()
        if self.config.frame == "pointe":
            return torch.randn((batch, c, n), generator=generator).transpose(1, 2)
        return torch.randn((batch, n, c), generator=generator)

    def training_pair(
        self, x0: torch.Tensor, cond_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        frame = self.config.frame
        return to_network(x0, frame), None if cond_input is None else to_network(cond_input, frame)


@STAGES.register("points.coarse")
class CoarsePointsStage(PointStageMixin, DiffusionStage):
    Config = CoarsePointsConfig
    config: CoarsePointsConfig
    produces: ClassVar[str] = "PointClouds"

    def build_network(self) -> nn.Module:
        cfg = self.config
        return PointDenoiser(cfg.network, CHANNELS, cfg.embed_dim, len(cfg.cond_keys))

    def sample_shape(self) -> tuple[int, ...]:
        return (self.config.num_points, CHANNELS)

    def to_output(self, x: torch.Tensor, prev: Any) -> PointClouds:
        return PointClouds.from_tensor(from_network(x, self.config.frame).cpu())
