"""Gaussian conditioning augmentation (Ho et al. 2021, "Cascaded Diffusion Models").

A stage conditioned on a previous stage's output is trained on a noised copy
of it, the noise level ``s`` in [0, 1] given to the network. At sampling time
``s`` is a knob: a little noise hides the previous stage's artefacts. The
noising is variance preserving: ``c_s = cos(pi s / 2) c + sin(pi s / 2) eps``.
This is the non-truncated variant (the level is drawn freshly, not tied to a
diffusion step of the previous stage).
"""

from __future__ import annotations

import math

import torch
from pydantic import model_validator

from cdm3d.core.config import StrictConfig


class AugmentationConfig(StrictConfig):
    """Conditioning augmentation during training.

    Attributes:
        max_level: levels are drawn uniformly from [0, max_level]; 0 disables it.
        prob: probability that an example is augmented at all (else level 0).
    """

    max_level: float = 0.0
    prob: float = 1.0

    @model_validator(mode="after")
    def _check(self) -> AugmentationConfig:
        if not 0.0 <= self.max_level <= 1.0:
            raise ValueError(f"max_level must lie in [0, 1], got {self.max_level}")
        if not 0.0 <= self.prob <= 1.0:
            raise ValueError(f"prob must lie in [0, 1], got {self.prob}")
        return self


def noise_condition(c: torch.Tensor, level: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Noise ``c [B, ...]`` to per-example ``level [B]`` (0 leaves it unchanged)."""
    eps = torch.randn(c.shape, generator=generator, device="cpu", dtype=torch.float32)
    eps = eps.to(device=c.device, dtype=c.dtype)
    angle = (level * (math.pi / 2)).to(c.dtype).view(-1, *([1] * (c.ndim - 1)))
    return torch.cos(angle) * c + torch.sin(angle) * eps


def draw_levels(config: AugmentationConfig, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Training levels ``[B]`` drawn as ``config`` says."""
    level = torch.rand(batch, generator=generator) * config.max_level
    if config.prob < 1.0:
        level = level * (torch.rand(batch, generator=generator) < config.prob)
    return level
