"""Noise schedulers, chosen by name, from diffusers.

diffusers is imported lazily: it pulls in PIL, which the core must not load at
import time.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

from cdm3d.core.config import StrictConfig
from cdm3d.errors import ConfigError

SchedulerName = Literal["ddpm", "ddim", "dpm++", "dpm++sde", "euler", "euler_a", "heun", "karras-heun", "unipc"]

# name -> (diffusers class, extra constructor arguments)
_SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddpm": ("DDPMScheduler", {"clip_sample": False}),
    "ddim": ("DDIMScheduler", {"clip_sample": False, "set_alpha_to_one": False, "timestep_spacing": "trailing"}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "euler": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {"timestep_spacing": "trailing"}),
    "heun": ("HeunDiscreteScheduler", {}),
    # Point-E samples with Karras sigmas and Heun's method.
    "karras-heun": ("HeunDiscreteScheduler", {"use_karras_sigmas": True}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


class NoiseScheduleConfig(StrictConfig):
    """The forward process a stage is trained with; every sampler reuses it."""

    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "squaredcos_cap_v2"
    prediction_type: Literal["epsilon", "v_prediction", "sample"] = "v_prediction"


def scheduler_names() -> list[str]:
    return sorted(_SCHEDULERS)


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
        **extra,
    )


def step_accepts_generator(scheduler: Any) -> bool:
    return "generator" in inspect.signature(scheduler.step).parameters
