"""The training-side noise schedule matches diffusers; every named scheduler builds and samples."""

from __future__ import annotations

import pytest
import torch

from cdm3d.core.schedulers import (
    KARRAS_SAMPLER,
    NoiseSchedule,
    NoiseScheduleConfig,
    make_scheduler,
    scheduler_names,
)
from cdm3d.errors import ConfigError


@pytest.mark.parametrize("beta_schedule", ["squaredcos_cap_v2", "linear", "scaled_linear"])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_noise_schedule_matches_diffusers(beta_schedule, prediction_type) -> None:
    cfg = NoiseScheduleConfig(beta_schedule=beta_schedule, prediction_type=prediction_type)
    ours, ref = NoiseSchedule(cfg), make_scheduler("ddpm", cfg)
    torch.testing.assert_close(ours.alphas_cumprod, ref.alphas_cumprod.float(), rtol=1e-4, atol=1e-6)
    x0, noise, t = torch.randn(8, 5, 3), torch.randn(8, 5, 3), torch.randint(0, 1000, (8,))
    torch.testing.assert_close(ours.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), rtol=1e-4, atol=1e-5)
    if prediction_type == "v_prediction":
        torch.testing.assert_close(ours.target(x0, noise, t), ref.get_velocity(x0, noise, t), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", [n for n in scheduler_names() if n != KARRAS_SAMPLER])
def test_every_diffusers_scheduler_runs_on_point_shaped_tensors(name) -> None:
    from cdm3d.core.sampling import sample_loop

    sched = make_scheduler(name, NoiseScheduleConfig())
    sched.set_timesteps(6)
    x = sample_loop(lambda x, t: torch.zeros_like(x), torch.randn(2, 10, 6), sched, generator=torch.Generator())
    assert x.shape == (2, 10, 6) and torch.isfinite(x).all()


def test_unknown_scheduler() -> None:
    with pytest.raises(ConfigError, match="unknown scheduler 'rk4'"):
        make_scheduler("rk4", NoiseScheduleConfig())
