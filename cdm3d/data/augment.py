"""Augmentations that make world renders look like the images a model will meet: generated, upsampled, or
photographed."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def augment_images(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x [B, 3, S, S]`` in [0, 1]: half of them through 32 px, then pixel noise and a shift of a few pixels,
    as generated (and upsampled) images would be."""
    b, _, s, _ = x.shape
    low = F.interpolate(F.interpolate(x, size=s // 2, mode="bilinear", antialias=True), size=s, mode="bilinear")
    pick = (torch.rand(b, 1, 1, 1, generator=generator) < 0.5).to(x.dtype)
    x = pick * low + (1 - pick) * x
    x = x + torch.randn(x.shape, generator=generator) * torch.rand(b, 1, 1, 1, generator=generator) * 0.05
    dx, dy = torch.randint(-3, 4, (2,), generator=generator).tolist()
    x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
    return x.clamp(0, 1)
