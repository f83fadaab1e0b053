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
    low_noise: tuple[float, ModelFn] | None = None,
    init: torch.Tensor | None = None,
    start: int = 0,
) -> torch.Tensor:
    """Run ``scheduler``'s timesteps from ``noise`` (unit variance) to a sample.

    Args:
        model_fn: ``(x_t, t) -> prediction`` of the scheduler's prediction type.
        noise: ``[B, ...]`` standard normal noise.
        scheduler: a diffusers scheduler with ``set_timesteps`` already called.
        generator: for stochastic schedulers (DDPM, ancestral, SDE).
        callback: called as ``callback(step, total)`` after each step.
        check_finite: raise :class:`SamplingError` naming the step of the first
            non-finite value (on the CPU at once; on a GPU after the loop, without a
            host sync per step).
        what: the name used in errors ("stage 'coarse'").
        low_noise: ``(switch, fn)``: ``fn`` replaces ``model_fn`` at timesteps below ``switch``
            (a low-noise expert denoiser, as in eDiff-I). Decided on the CPU copy of the
            timesteps, so no host synchronisation.
        init, start: SDEdit: start at step ``start`` from ``init`` noised to that step's level.
    """
    step_kwargs = {"generator": generator} if step_accepts_generator(scheduler) else {}
    x, timesteps = _starting_point(noise, scheduler, init, start, what)
    total = len(timesteps)
    # On the CPU the check stops at the first bad step. On an accelerator it keeps the first bad
    # step on the device and reads it once after the loop: no host synchronisation per step.
    eager = x.device.type == "cpu"
    first_bad = torch.zeros((), dtype=torch.long, device=x.device)
    t_device = timesteps.to(x.device, torch.float32)  # one copy, not a blocking copy per step
    for i, t in enumerate(timesteps):
        x_in = scheduler.scale_model_input(x, t)
        t_batch = t_device[i].expand(x.shape[0])
        fn = low_noise[1] if low_noise is not None and float(t) < low_noise[0] else model_fn
        pred = fn(x_in, t_batch).to(x.dtype)  # a bf16 (autocast) prediction meets an fp32 solver
        x = scheduler.step(pred, t, x, return_dict=False, **step_kwargs)[0]
        if check_finite:
            if eager:
                if not torch.isfinite(x).all():
                    raise _non_finite(what, i + 1, timesteps)
            else:
                bad = ~torch.isfinite(x).all()
                first_bad = torch.where(bad & (first_bad == 0), i + 1, first_bad)
        if callback is not None:
            callback(i + 1, total)
    if check_finite and not eager and int(first_bad):
        raise _non_finite(what, int(first_bad), timesteps)
    return x


def _starting_point(
    noise: torch.Tensor, scheduler: Any, init: torch.Tensor | None, start: int, what: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first sample and the timesteps left to run: pure noise at the first step, or (SDEdit) ``init``
    noised to the level of step ``start``."""
    timesteps = scheduler.timesteps
    if init is None:
        if start:
            raise SamplingError(f"{what}: starting at step {start} needs an initial sample")
        return noise * scheduler.init_noise_sigma, timesteps
    if not 0 <= start < len(timesteps):
        raise SamplingError(f"{what}: start step {start} is outside the {len(timesteps)} steps")
    if init.shape != noise.shape:
        raise SamplingError(f"{what}: initial sample of shape {tuple(init.shape)}, noise {tuple(noise.shape)}")
    timesteps = timesteps[start:]
    if hasattr(scheduler, "set_begin_index"):  # multistep and sigma-indexed solvers count from here
        scheduler.set_begin_index(start)
    return scheduler.add_noise(init.to(noise), noise, timesteps[:1].expand(noise.shape[0])), timesteps


def _non_finite(what: str, step: int, timesteps: torch.Tensor) -> SamplingError:
    return SamplingError(
        f"{what}: non-finite values at step {step}/{len(timesteps)} (timestep {float(timesteps[step - 1]):.1f}); "
        "lower the guidance scale, try another scheduler, or check the weights"
    )
