"""The sampling loop: a pure function of a model function, noise and a scheduler.

It knows nothing of stages, guidance or modalities; it works on ``[B, ...]``
tensors of any shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cdm3d.core.guidance import ModelFn
from cdm3d.core.schedulers import step_accepts_generator
from cdm3d.errors import SamplingError

StepCallback = Callable[[int, int], None]


def sample_loop(
    model_fn: ModelFn,
    noise: torch.Tensor,
    scheduler: Any,
    *,
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
    check_finite: bool = True,
    what: str = "sampling",
) -> torch.Tensor:
    """Run ``scheduler``'s timesteps from ``noise`` (unit variance) to a sample.

    Args:
        model_fn: ``(x_t, t) -> prediction`` of the scheduler's prediction type.
        noise: ``[B, ...]`` standard normal noise.
        scheduler: a diffusers scheduler with ``set_timesteps`` already called.
        generator: for stochastic schedulers (DDPM, ancestral, SDE).
        callback: called as ``callback(step, total)`` after each step.
        check_finite: raise :class:`SamplingError` naming the step at the first
            non-finite value (one host sync per step).
        what: the name used in errors ("stage 'coarse'").
    """
    step_kwargs = {"generator": generator} if step_accepts_generator(scheduler) else {}
    x = noise * scheduler.init_noise_sigma
    timesteps = scheduler.timesteps
    total = len(timesteps)
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t)
        t_batch = t.to(x.device, torch.float32).expand(x.shape[0])
        pred = model_fn(x_in, t_batch)
        x = scheduler.step(pred, t, x, return_dict=False, **step_kwargs)[0]
        if check_finite and not torch.isfinite(x).all():
            raise SamplingError(
                f"{what}: non-finite values at step {i + 1}/{total} (timestep {float(t):.1f}); "
                "lower the guidance scale, try another scheduler, or check the weights"
            )
        if callback is not None:
            callback(i + 1, total)
    return x
