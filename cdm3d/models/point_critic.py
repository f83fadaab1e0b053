"""``PointCritic``: a PointNet that embeds a coloured cloud into CLIP's embedding space (``points.select``)."""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from cdm3d.core import StrictConfig


class PointCriticConfig(StrictConfig):
    # Per-point MLP widths are width / 2, width, 2 width, 4 width; the pooled feature is 8 width.
    width: int = Field(64, ge=4)


def point_mlp(channels: int, width: int) -> nn.Sequential:
    """PointNet's shared per-point MLP: ``channels`` -> width / 2 -> width -> 2 width -> 4 width."""
    return nn.Sequential(
        nn.Linear(channels, width // 2),
        nn.GELU(),
        nn.Linear(width // 2, width),
        nn.GELU(),
        nn.Linear(width, 2 * width),
        nn.GELU(),
        nn.Linear(2 * width, 4 * width),
    )


def pool(h: torch.Tensor) -> torch.Tensor:
    """``[B, N, C]`` per-point features -> ``[B, 2C]``: max and mean over the points (order-invariant)."""
    return torch.cat([h.amax(1), h.mean(1)], -1)


class PointCritic(nn.Module):
    """``x [B, N, 6]`` (xyz, rgb in [-1, 1]) -> ``[B, D]`` (not normalised): a shared per-point MLP, max and
    mean pooling (order-invariant, any N), an MLP head. ``logit_scale`` is the contrastive loss's log inverse
    temperature."""

    def __init__(self, config: PointCriticConfig, channels: int, embed_dim: int, temperature: float) -> None:
        super().__init__()
        w = config.width
        self.point_mlp = point_mlp(channels, w)
        self.head = nn.Sequential(nn.LayerNorm(8 * w), nn.Linear(8 * w, 2 * w), nn.GELU(), nn.Linear(2 * w, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pool(self.point_mlp(x)))
