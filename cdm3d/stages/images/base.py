"""``images.base``: CLIP embedding(s) -> a low-resolution RGB image (the first stage of an image cascade)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import nn

from cdm3d.core import STAGES, DiffusionStage, DiffusionStageConfig
from cdm3d.models.unet import UNetConfig, UNetDenoiser
from cdm3d.types import Images


class BaseImageConfig(DiffusionStageConfig):
    type: Literal["images.base"] = "images.base"
    size: int = Field(32, ge=8)  # pixels a side
    network: UNetConfig = UNetConfig()


@STAGES.register("images.base")
class BaseImageStage(DiffusionStage):
    Config = BaseImageConfig
    config: BaseImageConfig
    produces: ClassVar[str] = "Images"

    def build_network(self) -> nn.Module:
        cfg = self.config
        return UNetDenoiser(cfg.network, 3, cfg.embed_dim, len(cfg.cond_keys), size=cfg.size)

    def sample_shape(self) -> tuple[int, ...]:
        return (3, self.config.size, self.config.size)

    def to_output(self, x: torch.Tensor, prev: Any) -> Images:
        return Images.from_tensor(x.cpu())
