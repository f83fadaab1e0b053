"""Classifier-free guidance as a wrapper around the denoiser call.

Samplers never see guidance: they get a ``model_fn(x, t)`` and the wrapper
runs the conditional and unconditional passes in one batch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# net(x_t, t, emb, cond_input, cond_level) -> prediction, the denoiser contract.
NetFn = Callable[..., torch.Tensor]
ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def guided(
    net: NetFn,
    emb: torch.Tensor,
    null_emb: torch.Tensor,
    scale: float,
    extras: tuple[torch.Tensor | None, ...] = (),
    interval: tuple[int, int] | None = None,
    null_extras: tuple[torch.Tensor | None, ...] | None = None,
    combine: bool = True,
) -> ModelFn:
    """``model_fn(x, t)`` that applies guidance ``scale`` to ``net``.

    Args:
        net: the denoiser, called as ``net(x, t, emb, *extras)``.
        emb: ``[B, K, D]`` conditional embedding tokens.
        null_emb: ``[B, K, D]`` their null (unconditional) counterpart.
        scale: 1 disables guidance (one pass); 0 is fully unconditional.
        extras: further per-example inputs (conditioning input, augmentation level),
            batched along dim 0 or ``None``.
        interval: ``(lo, hi)``: guide only at timesteps ``lo <= t < hi`` and elsewhere take the
            conditional prediction alone (one pass instead of two), as Kynkäänniemi et al. 2024
            ("Applying guidance in a limited interval improves sample and distribution quality");
            ``None`` guides at every timestep.
        null_extras: the unconditional pass's own ``extras`` (default: the same as the conditional pass's).
        combine: ``False`` returns the two passes' predictions ``[cond; uncond]`` (batch ``2B``) of an input
            ``x`` that already holds both halves, for samplers that guide something else than the raw prediction
            (Point-E guides the clamped ``x0``).
    """
    uncond_extras = extras if null_extras is None else null_extras

    def both(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        doubled = [None if a is None else torch.cat([a, b]) for a, b in zip(extras, uncond_extras)]
        return net(x, t, torch.cat([emb, null_emb]), *doubled)

    if not combine:
        return both

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        if interval is not None and not interval[0] <= int(t[0]) < interval[1]:
            return net(x, t, emb, *extras)
        if scale == 1.0:
            return net(x, t, emb, *extras)
        if scale == 0.0:
            return net(x, t, null_emb, *uncond_extras)
        cond, uncond = both(torch.cat([x, x]), torch.cat([t, t])).chunk(2)
        return uncond + scale * (cond - uncond)

    return model_fn


def drop_embeddings(
    emb: torch.Tensor, null_emb: torch.Tensor, drop_prob: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Training side of guidance: replace each example's tokens by the null ones with ``drop_prob``.

    Args:
        emb, null_emb: ``[B, K, D]``.
    """
    if drop_prob <= 0:
        return emb
    keep = torch.rand(emb.shape[0], generator=generator, device="cpu") >= drop_prob
    keep = keep.to(emb.device).view(-1, *([1] * (emb.ndim - 1)))
    return torch.where(keep, emb, null_emb)
