"""``points.upsample``: a coarse cloud + CLIP embedding(s) -> a denser cloud.

The stage generates ``num_points`` new points conditioned on the (augmented)
coarse cloud and returns the coarse points followed by the new ones, as Point-E's
upsampler does; unlike Point-E's text path, it keeps the CLIP conditioning.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from cdm3d.core import STAGES, DiffusionStage, DiffusionStageConfig
from cdm3d.core.augmentation import AugmentationConfig
from cdm3d.core.stage import DiffusionConfig
from cdm3d.errors import InputError
from cdm3d.models.point_transformer import PointDenoiser, PointTransformerConfig
from cdm3d.stages.points.coarse import CHANNELS
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


@STAGES.register("points.upsample")
class UpsamplePointsStage(DiffusionStage):
    Config = UpsamplePointsConfig
    config: UpsamplePointsConfig
    consumes: ClassVar[str] = "PointClouds"
    produces: ClassVar[str] = "PointClouds"

    def build_network(self) -> nn.Module:
        cfg = self.config
        return PointDenoiser(cfg.network, CHANNELS, cfg.embed_dim, len(cfg.cond_keys), cond_channels=CHANNELS)

    def sample_shape(self) -> tuple[int, ...]:
        return (self.config.num_points, CHANNELS)

    def condition_input(self, prev: Any) -> torch.Tensor:
        self.check_prev(prev)
        return prev.to_tensor()

    def to_output(self, x: torch.Tensor, prev: Any) -> PointClouds:
        if not isinstance(prev, PointClouds):
            raise InputError(f"stage '{self.name}' needs the coarse PointClouds to complete its output")
        return PointClouds.concat([prev.to("cpu"), PointClouds.from_tensor(x.cpu())])
