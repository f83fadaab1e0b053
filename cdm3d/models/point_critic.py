"""``PointCritic``: a PointNet that embeds a coloured cloud into CLIP's embedding space (``points.select``).

With ``local_k > 0`` the first per-point layer is an edge convolution (DGCNN's EdgeConv, Wang et al. 2019):
each point's feature is the max over its ``local_k`` nearest neighbours (in xyz) of an MLP of the point and
the neighbour's offset from it, so the pooled feature sees local shape (edges, flat faces, thin handles) and
not only each point's own position.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from cdm3d.core import StrictConfig


class PointCriticConfig(StrictConfig):
    # Per-point MLP widths are width / 2, width, 2 width, 4 width; the pooled feature is 8 width.
    width: int = Field(64, ge=4)
    # Neighbours of each point's first-layer edge convolution; 0: a plain PointNet (per-point MLP only).
    local_k: int = Field(0, ge=0, le=64)
    # Critics of an ensemble (each its own weights and temperature; the selector averages their cosines). An
    # ensemble of separately trained critics is made by tools/ensemble_critics.py.
    members: int = Field(1, ge=1, le=8)


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


class EdgeConv(nn.Module):
    """``x [B, N, C]`` -> ``[B, N, out]``: max over each point's ``k`` nearest neighbours (xyz, itself
    excluded) of ``MLP([x_i, x_j - x_i])``."""

    def __init__(self, channels: int, out: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.mlp = nn.Sequential(nn.Linear(2 * channels, out), nn.GELU(), nn.Linear(out, out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xyz = x[..., :3].float()
        k = min(self.k, x.shape[1] - 1)
        if k < 1:
            return self.mlp(torch.cat([x, torch.zeros_like(x)], -1))
        idx = torch.cdist(xyz, xyz).topk(k + 1, largest=False).indices[..., 1:]  # [B, N, k]
        neighbours = torch.gather(
            x[:, None].expand(-1, x.shape[1], -1, -1), 2, idx[..., None].expand(-1, -1, -1, x.shape[-1])
        )
        centre = x[:, :, None].expand_as(neighbours)
        return self.mlp(torch.cat([centre, neighbours - centre], -1)).amax(2)


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
        if config.local_k > 0:  # the edge convolution replaces the per-point MLP's first layer
            self.point_mlp[0] = EdgeConv(channels, w // 2, config.local_k)
        self.head = nn.Sequential(nn.LayerNorm(8 * w), nn.Linear(8 * w, 2 * w), nn.GELU(), nn.Linear(2 * w, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(pool(self.point_mlp(x)))


class PointCriticEnsemble(nn.Module):
    """``config.members`` critics: ``x [B, N, 6]`` -> ``[B, M, D]``; ``logit_scale`` is ``[M]``."""

    def __init__(self, config: PointCriticConfig, channels: int, embed_dim: int, temperature: float) -> None:
        super().__init__()
        self.members = nn.ModuleList(
            PointCritic(config, channels, embed_dim, temperature) for _ in range(config.members)
        )

    @property
    def logit_scale(self) -> torch.Tensor:
        return torch.stack([m.logit_scale for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members], 1)


def build_critic(
    config: PointCriticConfig, channels: int, embed_dim: int, temperature: float
) -> PointCritic | PointCriticEnsemble:
    """One critic, or an ensemble of ``config.members``."""
    cls = PointCritic if config.members == 1 else PointCriticEnsemble
    return cls(config, channels, embed_dim, temperature)
