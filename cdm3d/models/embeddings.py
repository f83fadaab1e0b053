"""Shared embedding helpers."""

from __future__ import annotations

import math

import torch
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding ``[B, dim]`` of (possibly fractional) timesteps ``t [B]``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


class ScalarEmbedding(nn.Module):
    """A scalar per example (timestep, augmentation level) -> a width-``width`` vector: an MLP (SiLU, or GELU as
    Point-E's time embedding) of its sinusoidal embedding."""

    def __init__(self, width: int, scale: float = 1.0, activation: str = "silu") -> None:
        super().__init__()
        self.scale = scale
        act = nn.GELU() if activation == "gelu" else nn.SiLU()
        self.mlp = nn.Sequential(nn.Linear(width, width * 4), act, nn.Linear(width * 4, width))
        self.width = width

    def forward(self, value: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(value * self.scale, self.width))
