"""Noise schedulers, chosen by name, from diffusers.

diffusers is imported lazily: it pulls in PIL, which the core must not load at
import time.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Literal

import torch
from pydantic import Field

from cdm3d.core.config import StrictConfig
from cdm3d.errors import ConfigError

SchedulerName = Literal[
    "ddpm", "ddim", "dpm++", "dpm++sde", "euler", "euler_a", "heun", "karras-heun", "unipc", "pointe-heun"
]
# Not a diffusers scheduler: the core's port of Point-E's Karras-Heun sampler with churn (cdm3d/core/karras.py).
KARRAS_SAMPLER = "pointe-heun"

# name -> (diffusers class, extra constructor arguments)
_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "trailing"}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "heun": ("HeunDiscreteScheduler", {}),
    # Karras sigmas and Heun's method (diffusers' reading; "pointe-heun" is Point-E's exact sampler).
    "karras-heun": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


class NoiseScheduleConfig(StrictConfig):
    """The forward process a stage is trained with; every sampler reuses it."""

    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"
    # The end points of the linear schedules (Point-E's upsampler: Ho et al.'s, scaled by 1000 / its 1024 steps).
    beta_start: float = Field(1e-4, gt=0, lt=1)
    beta_end: float = Field(0.02, gt=0, lt=1)


class NoiseSchedule:
    """The training-side forward process, ``x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps``.

    Computed here (identically to diffusers' schedules, which a test checks) so
    that training needs nothing but torch.
    """

    def __init__(self, config: NoiseScheduleConfig) -> None:
        self.config = config
        self.alphas_cumprod_f64 = alphas_cumprod(config)
        self.alphas_cumprod = self.alphas_cumprod_f64.float()

    @property
    def num_train_timesteps(self) -> int:
        return self.config.num_train_timesteps

    def _coefs(self, t: torch.Tensor, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a = self.alphas_cumprod.to(like.device)[t.to(like.device)].to(like.dtype)
        shape = (-1,) + (1,) * (like.ndim - 1)
        return a.sqrt().view(shape), (1 - a).sqrt().view(shape)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x_t`` for integer timesteps ``t [B]``."""
        sa, s1a = self._coefs(t, x0)
        return sa * x0 + s1a * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to predict, by ``prediction_type``."""
        kind = self.config.prediction_type
        if kind == "epsilon":
            return noise
        if kind == "sample":
            return x0
        sa, s1a = self._coefs(t, x0)
        return sa * noise - s1a * x0  # v-prediction


def alphas_cumprod(config: NoiseScheduleConfig) -> torch.Tensor:
    """``[T]`` float64 cumulative alphas of a schedule."""
    schedule, steps = config.beta_schedule, config.num_train_timesteps
    if schedule == "squaredcos_cap_v2":  # GLIDE's cosine schedule, betas capped at 0.999

        def alpha_bar(t: float) -> float:
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - alpha_bar((i + 1) / steps) / alpha_bar(i / steps), 0.999) for i in range(steps)],
            dtype=torch.float64,
        )
    elif schedule == "linear":
        betas = torch.linspace(config.beta_start, config.beta_end, steps, dtype=torch.float64)
    else:  # scaled_linear
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, steps, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def scheduler_names() -> list[str]:
    return sorted([*_SCHEDULERS, KARRAS_SAMPLER])


def make_scheduler(name: str, schedule: NoiseScheduleConfig) -> Any:
    """A fresh diffusers scheduler ``name`` over the noise ``schedule``."""
    if name not in _SCHEDULERS:
        raise ConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(scheduler_names())}")
    import diffusers

    cls_name, extra = _SCHEDULERS[name]
    cls = getattr(diffusers, cls_name)
    return cls(
        num_train_timesteps=schedule.num_train_timesteps,
        beta_schedule=schedule.beta_schedule,
        prediction_type=schedule.prediction_type,
        beta_start=schedule.beta_start,
        beta_end=schedule.beta_end,
        **extra,
    )


def step_accepts_generator(scheduler: Any) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters
