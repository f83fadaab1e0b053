"""``points.coarse``: CLIP embedding(s) -> a coloured point cloud of ``num_points`` points."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from cdm3d.core import STAGES, DiffusionStage, DiffusionStageConfig
from cdm3d.models.point_transformer import PointDenoiser, PointTransformerConfig
from cdm3d.types import PointClouds

CHANNELS = 6  # xyz + rgb


class CoarsePointsConfig(DiffusionStageConfig):
    type: Literal["points.coarse"] = "points.coarse"
    # Text and image slots both: one model serves text-to-3D and image-to-3D.
    cond_keys: list[str] = ["text", "image"]
    num_points: int = Field(1024, ge=1)
    network: PointTransformerConfig = PointTransformerConfig()


@STAGES.register("points.coarse")
class CoarsePointsStage(DiffusionStage):
    Config = CoarsePointsConfig
    config: CoarsePointsConfig
    produces: ClassVar[str] = "PointClouds"

    def build_network(self) -> nn.Module:
        cfg = self.config
        return PointDenoiser(cfg.network, CHANNELS, cfg.embed_dim, len(cfg.cond_keys))

    def sample_shape(self) -> tuple[int, ...]:
        return (self.config.num_points, CHANNELS)

    def to_output(self, x: torch.Tensor, prev: Any) -> PointClouds:
        return PointClouds.from_tensor(x.cpu())
