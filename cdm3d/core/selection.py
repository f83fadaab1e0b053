"""Selector stages: several candidates per example, scored against the conditioning, the best one kept.

A cascade run whose selector stage asks for ``candidates = K > 1`` (its sampling setting) runs the stages
before the selector on every example K times: K independent samples, as rows ``i * K .. i * K + K - 1`` of a
batch ``K`` times larger. The selector scores each candidate against its example's CLIP embedding and
:meth:`Cascade.run <cdm3d.core.Cascade.run>` keeps, per example, the candidate with the highest score (the
earlier stages' outputs too), so every output of the run has the batch of the conditioning again.

A selector may pass on its ``keep > 1`` best candidates per example instead of one: the stages after it
run on those, and a later selector stage chooses among them by its own reading of its own input (a funnel:
cheap candidates scored early, the few best carried through a costly stage and scored again on its output).
A run that ends before a later selector keeps each example's best of the last selector that ran.

The score is the cosine between the selector network's embedding of a candidate and the example's CLIP
embedding (the mean of the slots it has: text, image or both). The network is trained through the generic
trainer with CLIP's contrastive loss (InfoNCE, both directions, a learned temperature) between the
embeddings of training outputs and their conditioning: a small CLIP of the stage's own modality, as DALL-E
re-ranks samples with CLIP. The plugin supplies the network and how it reads an output (:meth:`read`,
:meth:`train_input`).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import nn
from torch.nn import functional as F

from cdm3d.core.conditioning import Conditioning
from cdm3d.core.config import StrictConfig
from cdm3d.core.stage import StepCallback, TrainableStage, TrainableStageConfig, split_part
from cdm3d.errors import InputError


class SelectionConfig(StrictConfig):
    """Sampling-time settings of a selector stage (each can be overridden per call)."""

    # Candidates per example the stages before the selector produce; 1 turns selection off.
    candidates: int = Field(4, ge=1, le=64)
    # Random reads of each candidate (a plugin may read a random subset of a large output) averaged per score.
    reads: int = Field(4, ge=1, le=64)
    # Candidates per example this selector passes on, best first; with more than 1 a later selector stage of
    # the run chooses among them (a run that ends first keeps each example's best of this selector).
    keep: int = Field(1, ge=1, le=64)


class SelectorStageConfig(TrainableStageConfig):
    """Config of a selector stage; plugins add ``network`` and input fields."""

    sampling: SelectionConfig = SelectionConfig()
    # Initial temperature of the contrastive loss (learned, as CLIP's).
    temperature: float = Field(0.07, gt=0.0, le=1.0)


class SelectorStage(TrainableStage):
    """A stage that keeps one of several candidates per example (see the module docstring).

    ``consumes`` and ``produces`` are the same kind. Alone (one candidate per example) :meth:`sample`
    returns its input unchanged. ``net(x) -> [B, D]`` embeds what :meth:`read` / :meth:`train_input`
    make of an output and has a ``logit_scale`` parameter (log of the inverse temperature). An ensemble of
    M networks returns ``[B, M, D]`` and has ``logit_scale`` ``[M]``: the score is the mean of the members'
    cosines, the loss the mean of their contrastive losses.
    """

    Config: ClassVar[type[SelectorStageConfig]] = SelectorStageConfig
    config: SelectorStageConfig

    @abstractmethod
    def read(self, prev: Any, generator: torch.Generator | None) -> torch.Tensor:
        """The network's input ``[B, ...]`` for a batch of candidates (one random read)."""

    @abstractmethod
    def train_input(self, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """The network's input for training examples ``x0`` as the data source gives them (augmented)."""

    # -- sampling ---------------------------------------------------------------------
    def resolve_sampling(self, sampling: SelectionConfig | dict[str, Any] | None) -> SelectionConfig:
        return self._settings(sampling, self.config.sampling)

    def candidates(self, sampling: Any = None) -> int:
        """How many candidates per example this stage chooses among."""
        return self.resolve_sampling(sampling).candidates

    def sample(
        self,
        prev: Any,
        cond: Conditioning,
        *,
        generator: torch.Generator | None = None,
        sampling: Any = None,
        callback: StepCallback | None = None,
    ) -> Any:
        """One candidate per example: ``prev`` itself (the cascade does the choosing, see :meth:`score`)."""
        self.check_prev(prev)
        self.resolve_sampling(sampling)
        self._embeddings(cond)  # the same checks of the conditioning as when it scores
        if callback is not None:
            callback(0, 1)
        return prev

    def targets(self, cond: Conditioning) -> torch.Tensor:
        """``[B, D]`` unit targets: the mean of each example's non-null slots of ``config.cond_keys``."""
        emb, null = self._embeddings(cond)
        present = (emb != null).any(-1, keepdim=True).float()  # [B, K, 1]
        if (present.sum(1) == 0).any():
            raise InputError(f"stage '{self.name}': an example has none of the slots {self.config.cond_keys}")
        return F.normalize((emb * present).sum(1), dim=-1)

    @torch.no_grad()
    def score(
        self, prev: Any, cond: Conditioning, generator: torch.Generator | None = None, sampling: Any = None
    ) -> torch.Tensor:
        """``[B]`` cosine between each candidate's embedding (mean over ``reads`` random reads) and its
        example's CLIP embedding; higher is better."""
        self.check_prev(prev)
        s = self.resolve_sampling(sampling)
        target = self.targets(cond)
        was_training = self.training
        self.eval()
        try:
            z = sum(self.net(self.read(prev, generator).to(self.device)) for _ in range(s.reads))
        finally:
            self.train(was_training)
        if z.shape[0] != target.shape[0]:
            raise InputError(f"stage '{self.name}': {z.shape[0]} candidates for {target.shape[0]} conditionings")
        z = members(z)  # [B, M, D]
        return (F.normalize(z, dim=-1) * target[:, None]).sum(-1).mean(1).cpu()

    # -- training ---------------------------------------------------------------------
    def loss(
        self,
        x0: torch.Tensor,
        cond: Conditioning,
        cond_input: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        part: tuple[int, int] | None = None,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """CLIP's symmetric InfoNCE between the embeddings of ``x0`` and of its conditioning. Under data
        parallelism (``part``) each process contrasts its own share of the batch (fewer negatives than one
        process with the whole batch)."""
        x = self.train_input(x0, generator)
        target = self.targets(cond).to(x.device)
        if part is not None:
            sl = split_part(x.shape[0], part)
            x, target = x[sl], target[sl]
        net = net or self.net
        z = F.normalize(members(net(x).float()), dim=-1)  # [B, M, D]
        scale = self.net.logit_scale.exp().clamp(max=100.0).reshape(-1).expand(z.shape[1])  # [M]
        labels = torch.arange(len(z), device=z.device)
        losses = []
        for m in range(z.shape[1]):
            logits = scale[m] * z[:, m] @ target.T
            losses.append((F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2)
        return torch.stack(losses).mean()


class Candidates:
    """The bookkeeping of a cascade run whose selector stage draws several candidates per example.

    Until the selector that asked for them, every stage runs on ``per`` rows per example (example ``i``'s
    candidates are rows ``i * per .. i * per + per - 1``); a selector keeps the rows of its best ``keep`` per
    example (the earlier stages' outputs too); after the last one each example's best is kept.
    """

    def __init__(self, cond: Conditioning, selector: str | None, per: int) -> None:
        self.cond, self.selector, self.per, self.batch = cond, selector, per, cond.batch_size
        self.run_cond = cond.repeat_interleave(per) if per > 1 else cond
        self.choosing = False  # from the selector that asked for the candidates on, selectors choose

    @classmethod
    def for_run(cls, stages: dict[str, Any], names: list[str], sampling: dict[str, Any], cond: Conditioning):
        """The run's drawing selector and its candidate count (1: none). A selector that starts the run has no
        earlier stage to draw candidates from: it passes its input on."""
        wanted = {n: s.candidates(sampling.get(n)) for n in names[1:] if isinstance(s := stages[n], SelectorStage)}
        asking = [n for n, k in wanted.items() if k > 1]
        if len(asking) > 1:
            raise InputError(f"only one selector stage per run can draw several candidates; these do: {asking}")
        return cls(cond, *((asking[0], wanted[asking[0]]) if asking else (None, 1)))

    def spread(self, init: Any, what: str) -> Any:
        """The run's input, each example repeated for its candidates."""
        if self.per == 1 or init is None:
            return init
        return rows_of(init, torch.arange(self.batch).repeat_interleave(self.per), what)

    def chooses(self, name: str, stage: Any) -> bool:
        """Whether stage ``name`` (the next to run) chooses among candidates."""
        self.choosing = self.choosing or name == self.selector
        return self.choosing and self.per > 1 and isinstance(stage, SelectorStage)

    def choose(
        self, stage: SelectorStage, prev: Any, outputs: dict[str, Any], generator: Any, settings: Any, what: str
    ) -> tuple[Any, dict[str, Any], dict[str, torch.Tensor]]:
        """Score the candidates ``prev`` (``what``: the output they are), keep each example's best ``keep``;
        returns the kept ``prev``, the earlier ``outputs`` at the same rows, and the stage's selection record."""
        scores = stage.score(prev, self.run_cond, generator=generator, sampling=settings).view(self.batch, self.per)
        kept = scores.topk(min(stage.resolve_sampling(settings).keep, self.per), dim=1).indices
        rows = (torch.arange(self.batch)[:, None] * self.per + kept).flatten()
        outputs = {n: rows_of(v, rows, f"the output of '{n}'") for n, v in outputs.items()}
        prev = rows_of(prev, rows, what)
        self.per = kept.shape[1]
        self.run_cond = self.cond.repeat_interleave(self.per) if self.per > 1 else self.cond
        return prev, outputs, {"scores": scores, "chosen": kept[:, 0], "kept": kept}

    def finish(self, outputs: dict[str, Any]) -> dict[str, Any]:
        """The outputs with one row per example: where no later selector chose among the last one's kept
        candidates, each example's best."""
        if self.per == 1:
            return outputs
        rows = torch.arange(self.batch) * self.per
        return {n: rows_of(v, rows, f"the output of '{n}'") for n, v in outputs.items()}


def rows_of(output: Any, rows: torch.Tensor, what: str) -> Any:
    """``output[rows]``: the rows of a batched output (a selector keeps or repeats examples)."""
    try:
        return output[rows]
    except (TypeError, IndexError, KeyError) as err:
        raise InputError(
            f"a selector stage needs {what} ({type(output).__name__}) to be indexable by rows: {err}"
        ) from None


def members(z: torch.Tensor) -> torch.Tensor:
    """A selector network's output as ``[B, M, D]``: one network's ``[B, D]`` is an ensemble of one."""
    return z[:, None] if z.dim() == 2 else z
