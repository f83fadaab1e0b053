"""Karras et al. (2022) sampling with Heun's method and stochastic churn, as Point-E samples its released models.

A pure function of a denoiser ``D(x, sigma) -> x0``: it knows nothing of stages or modalities. The adapter
:class:`EpsToX0` turns an epsilon-prediction network trained on a discrete schedule into that denoiser the way
Point-E does (each sigma read as the integer timestep whose cumulative alpha is nearest below, the input scaled
by ``1 / sqrt(sigma^2 + 1)``, the prediction of ``x0`` clamped to [-1, 1]), so converted Point-E models sample
exactly as with Point-E's own code; diffusers' solvers stay the fast, approximate alternatives.

Based on k-diffusion (https://github.com/crowsonkb/k-diffusion), as adapted in Point-E:

    Copyright (c) 2022 Katherine Crowson

    Permission is hereby granted, free of charge, to any person obtaining a copy of this software and
    associated documentation files (the "Software"), to deal in the Software without restriction, including
    without limitation the rights to use, copy, modify, merge, publish, distribute, sublicense, and/or sell
    copies of the Software, and to permit persons to whom the Software is furnished to do so, subject to the
    following conditions:

    The above copyright notice and this permission notice shall be included in all copies or substantial
    portions of the Software.

    THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED, INCLUDING BUT NOT
    LIMITED TO THE WARRANTIES OF MERCHANTABILITY, FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO
    EVENT SHALL THE AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER LIABILITY, WHETHER
    IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM, OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE
    USE OR OTHER DEALINGS IN THE SOFTWARE.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from pydantic import Field

from cdm3d.core.config import StrictConfig

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x [B, ...], sigma [B]) -> x0 [B, ...]
NoiseFn = Callable[[], torch.Tensor]  # a standard normal draw shaped like the sample


class KarrasConfig(StrictConfig):
    """Settings of the Karras-Heun sampler (scheduler ``pointe-heun``); Point-E's base model: sigma_max 120,
    churn 3; its upsampler: sigma_max 160, churn 0."""

    sigma_min: float = Field(1e-3, gt=0)
    sigma_max: float = Field(120.0, gt=0)
    rho: float = Field(7.0, gt=0)
    s_churn: float = Field(0.0, ge=0)
    clip_denoised: bool = True  # clamp each prediction of x0 to [-1, 1]


def karras_sigmas(steps: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> torch.Tensor:
    """``[steps + 1]`` noise levels from ``sigma_max`` down to ``sigma_min``, then 0 (float32, Karras et al.'s
    schedule)."""
    ramp = torch.linspace(0, 1, steps)
    min_inv_rho, max_inv_rho = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros([1])])


def _d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The ODE's derivative ``dx / dsigma`` from a denoised estimate."""
    return (x - denoised) / sigma


@torch.no_grad()
def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise: NoiseFn,
    s_churn: float = 0.0,
    s_tmin: float = 0.0,
    s_tmax: float = float("inf"),
    s_noise: float = 1.0,
    callback: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Algorithm 2 of Karras et al. (2022): Heun steps with churn; returns the last step's denoised estimate
    (as Point-E does). ``x`` is the initial sample (noise times ``sigmas[0]``); ``noise()`` is drawn at every
    step, whether churn uses it or not, so the random stream is Point-E's."""
    s_in = x.new_ones([x.shape[0]])
    total = len(sigmas) - 1
    denoised = x
    for i in range(total):
        sigma = float(sigmas[i])
        gamma = min(s_churn / total, 2**0.5 - 1) if s_tmin <= sigma <= s_tmax else 0.0
        eps = noise() * s_noise
        sigma_hat = sigmas[i] * (gamma + 1)
        if gamma > 0:
            x = x + eps * (sigma_hat**2 - sigmas[i] ** 2) ** 0.5
        denoised = denoiser(x, sigma_hat * s_in)
        d = _d(x, sigma_hat, denoised)
        dt = sigmas[i + 1] - sigma_hat
        if sigmas[i + 1] == 0:
            x = x + d * dt  # Euler's method for the last step
        else:
            x_2 = x + d * dt
            d_2 = _d(x_2, sigmas[i + 1], denoiser(x_2, sigmas[i + 1] * s_in))
            x = x + (d + d_2) / 2 * dt
        if callback is not None:
            callback(i + 1, total)
    return denoised


class EpsToX0:
    """Reads an epsilon-prediction network trained on a discrete schedule as a Karras denoiser (Point-E's
    ``GaussianToKarrasDenoiser``).

    Args:
        alphas_cumprod: ``[T]`` float64 cumulative alphas of the training schedule.
        clip_denoised: clamp the prediction of ``x0`` to [-1, 1].
    """

    def __init__(self, alphas_cumprod: torch.Tensor, clip_denoised: bool = True) -> None:
        self.alphas_cumprod = alphas_cumprod.double().cpu().numpy()
        self.clip_denoised = clip_denoised

    def timesteps(self, sigmas: torch.Tensor) -> torch.Tensor:
        """The integer timestep of each sigma: linear interpolation of the cumulative alphas, rounded down."""
        ac = self.alphas_cumprod
        t = []
        for sigma in sigmas.detach().float().cpu().numpy():
            alpha = 1.0 / (sigma**2 + 1)  # float32, as Point-E computes it
            if alpha > ac[0]:
                t.append(0)
            elif alpha <= ac[-1]:
                t.append(len(ac) - 1)
            else:
                t.append(int(np.interp(alpha, ac[::-1], np.arange(len(ac))[::-1])))
        return torch.tensor(t, dtype=torch.long, device=sigmas.device)

    def __call__(self, eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Denoiser:
        """A denoiser ``D(x, sigma)`` from ``eps_fn(x_in, t) -> eps`` (the network at integer timesteps)."""
        ac = torch.from_numpy(self.alphas_cumprod)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            t = self.timesteps(sigma)
            shape = (-1,) + (1,) * (x.ndim - 1)
            x_in = x * (1.0 / (sigma**2 + 1) ** 0.5).view(shape)
            eps = eps_fn(x_in, t).to(x.dtype)
            a = ac[t.cpu()]
            recip = torch.sqrt(1.0 / a).float().to(x.device).view(shape)
            recipm1 = torch.sqrt(1.0 / a - 1).float().to(x.device).view(shape)
            x0 = recip * x_in - recipm1 * eps
            return x0.clamp(-1, 1) if self.clip_denoised else x0

        return denoise
