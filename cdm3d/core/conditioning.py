"""The conditioning every stage receives: CLIP embeddings computed once."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from cdm3d.errors import InputError


@dataclass
class Conditioning:
    """CLIP embeddings for a batch, shared by every stage of a cascade.

    Attributes:
        embeddings: slot name ("text", "image") -> ``[B, D]`` unit-norm embeddings, or a grid of tokens
            ``[B, L, D]`` ("image_grid": a CLIP image tower's patch tokens). A slot that is absent for the
            whole batch is simply missing.
        null: slot name -> ``[D]`` (or ``[L, D]``) null embedding, used for a missing slot and for
            the unconditional pass of classifier-free guidance. For "text" it is
            CLIP's embedding of the empty prompt; for "image" and "image_grid" it is zeros.
        prompts: the prompts behind the text slot, if any (for logging and file names).
    """

    embeddings: dict[str, torch.Tensor]
    null: dict[str, torch.Tensor]
    prompts: list[str] | None = None
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.embeddings:
            raise InputError("conditioning holds no embedding: give a prompt or an image")
        sizes = {k: v.shape[0] for k, v in self.embeddings.items()}
        if len(set(sizes.values())) != 1:
            raise InputError(f"conditioning slots disagree on batch size: {sizes}")
        for key, emb in self.embeddings.items():
            if emb.ndim not in (2, 3):
                raise InputError(f"embedding '{key}' must be [B, D] or a token grid [B, L, D], got {tuple(emb.shape)}")
            if key not in self.null:
                raise InputError(f"embedding '{key}' has no null embedding for guidance")
            if tuple(self.null[key].shape) != tuple(emb.shape[1:]):
                raise InputError(
                    f"embedding '{key}' is {tuple(emb.shape[1:])} per example, its null {tuple(self.null[key].shape)}"
                )
            if not torch.isfinite(emb).all():
                raise InputError(f"embedding '{key}' holds NaN or Inf values")

    @property
    def batch_size(self) -> int:
        return next(iter(self.embeddings.values())).shape[0]

    def width(self, key: str) -> int:
        """The width ``D`` of slot ``key``'s embedding (present or null)."""
        return self._null(key).shape[-1]

    @property
    def dim(self) -> int:
        """The width of the first slot (the common width of cdm3d's own CLIPs' slots)."""
        return next(iter(self.embeddings.values())).shape[-1]

    def stack(self, keys: Sequence[str]) -> torch.Tensor:
        """``[B, L, D]``: the tokens of the slots ``keys`` in order (one per vector slot, ``L`` per grid slot),
        a missing slot as its null embedding."""
        return torch.cat([_tokens(self._slot(k)) for k in keys], dim=1)

    def null_stack(self, keys: Sequence[str]) -> torch.Tensor:
        """``[B, L, D]``: every slot null (the unconditional input of guidance)."""
        return torch.cat([_tokens(self._null(k).expand(self.batch_size, *self._null(k).shape)) for k in keys], dim=1)

    def _null(self, key: str) -> torch.Tensor:
        if key not in self.null:
            raise InputError(
                f"a stage needs the '{key}' embedding slot, which this conditioning lacks (it has {sorted(self.null)})"
            )
        return self.null[key]

    def _slot(self, key: str) -> torch.Tensor:
        if key in self.embeddings:
            return self.embeddings[key]
        null = self._null(key)
        return null.expand(self.batch_size, *null.shape)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> Conditioning:
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype or t.dtype)

        return Conditioning(
            {k: move(v) for k, v in self.embeddings.items()},
            {k: move(v) for k, v in self.null.items()},
            self.prompts,
            dict(self.meta),
        )

    def repeat_interleave(self, n: int) -> Conditioning:
        """Each example ``n`` times in a row (several samples per prompt)."""
        prompts = None if self.prompts is None else [p for p in self.prompts for _ in range(n)]
        return Conditioning(
            {k: v.repeat_interleave(n, dim=0) for k, v in self.embeddings.items()},
            dict(self.null),
            prompts,
            dict(self.meta),
        )

    def select(self, index: torch.Tensor | slice | list[int]) -> Conditioning:
        """A sub-batch."""
        prompts = None
        if self.prompts is not None:
            # Normalise slices, index lists and boolean masks alike to positions.
            positions = torch.arange(self.batch_size)[index]
            prompts = [self.prompts[int(i)] for i in positions.reshape(-1).tolist()]
        return Conditioning(
            {k: v[index] for k, v in self.embeddings.items()}, dict(self.null), prompts, dict(self.meta)
        )

    def with_slot(self, key: str, emb: torch.Tensor, null: torch.Tensor | None = None) -> Conditioning:
        """A copy with slot ``key`` set (text -> image -> 3D adds the image slot)."""
        nulls = dict(self.null)
        if null is not None:
            nulls[key] = null
        elif key not in nulls:
            nulls[key] = torch.zeros_like(emb[0])
        return Conditioning({**self.embeddings, key: emb}, nulls, self.prompts, dict(self.meta))


def _tokens(emb: torch.Tensor) -> torch.Tensor:
    """A slot's embedding as tokens: ``[B, D]`` -> ``[B, 1, D]``; a grid ``[B, L, D]`` as it is."""
    return emb[:, None] if emb.ndim == 2 else emb
