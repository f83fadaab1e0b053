"""The cascade driver: runs any slice of an ordered list of stages.

A trained cascade is a folder (:mod:`cdm3d.core.folder`): ``cascade.yaml`` naming the stages in order and
the CLIP to use, and one ``<stage>.safetensors`` per stage with its resolved config in the metadata.
"""

from __future__ import annotations

import contextlib
import itertools
import re
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from cdm3d.core.clip import ClipEncoder
from cdm3d.core.conditioning import Conditioning
from cdm3d.core.config import StrictConfig, load_yaml, validate
from cdm3d.core.folder import STAGE_NAME_PATTERN, ClipRef, load_stages, read_cascade_file, write_folder
from cdm3d.core.folder import load_clip as load_folder_clip
from cdm3d.core.selection import Candidates, SelectorStage
from cdm3d.core.stage import Stage
from cdm3d.core.stage_io import build_stage
from cdm3d.errors import ConfigError, InputError

STAGE_NAME = re.compile(STAGE_NAME_PATTERN)
RESERVED_NAMES = {"clip", "cascade", "clip.text_prior"}  # names of the CLIP's files in a folder
StageCallback = Callable[[str, int, int], None]


class StageSpec(StrictConfig):
    """A stage in a cascade *recipe* (a YAML for :meth:`Cascade.from_config`): a name and a config."""

    name: str = Field(pattern=STAGE_NAME_PATTERN)
    config: str | dict[str, Any]


class CascadeRecipe(StrictConfig):
    clip: ClipRef | None = None
    stages: list[StageSpec]


@dataclass
class CascadeOutput:
    """Every stage's output of one run, in cascade order."""

    outputs: dict[str, Any]
    cond: Conditioning
    timings: dict[str, float] = field(default_factory=dict)
    # A selector stage's choice, when the run had several candidates per example: its name ->
    # {"scores": [B, K] scores of the K candidates it saw per example, "chosen": [B] index of its best,
    #  "kept": [B, M] indices of the M it passed on, best first (M = its ``keep``, at most K)}.
    selection: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Any:
        if name not in self.outputs:
            raise KeyError(f"no output of stage {name!r}; this run produced {list(self.outputs)}")
        return self.outputs[name]

    @property
    def final(self) -> Any:
        return next(reversed(self.outputs.values()))


def stage_seed(seed: int, name: str) -> int:
    """Each stage's generator seed: depends on the run's seed and the stage's name only,
    so a slice of the cascade reproduces the same stage outputs as the full run."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63 - 1)


class Cascade:
    """An ordered list of named stages plus the CLIP encoder that conditions them."""

    def __init__(
        self, stages: Iterable[tuple[str, Stage]], clip: ClipEncoder | None = None, clip_ref: ClipRef | None = None
    ) -> None:
        self.stages: dict[str, Stage] = {}
        for name, stage in stages:
            if not isinstance(name, str) or not STAGE_NAME.match(name) or name in RESERVED_NAMES:
                raise ConfigError(
                    f"invalid stage name {name!r}: use letters, digits, '_', '.', '-' (not starting with a digit "
                    f"or a dot), and not {sorted(RESERVED_NAMES)}"
                )
            if name in self.stages:
                raise ConfigError(f"stage name {name!r} is used twice in the cascade")
            if not isinstance(stage, Stage):
                raise ConfigError(f"stage {name!r} is a {type(stage).__name__}, not a cdm3d Stage")
            stage.name = name
            self.stages[name] = stage
        if not self.stages:
            raise ConfigError("a cascade needs at least one stage")
        self.clip = clip
        self.clip_ref = clip_ref
        self._check_chain()

    def _check_chain(self) -> None:
        stages = list(self.stages.values())
        for prev, stage in itertools.pairwise(stages):
            if stage.consumes != prev.produces:
                raise ConfigError(
                    f"stage '{stage.name}' consumes {stage.consumes} but '{prev.name}' produces {prev.produces}"
                )

    @property
    def names(self) -> list[str]:
        return list(self.stages)

    # -- running ------------------------------------------------------------------------
    def encode(
        self, prompts: Any = None, images: torch.Tensor | None = None, reframe: bool = True, text_prior: bool = True
    ) -> Conditioning:
        """The conditioning of a batch (:meth:`ClipEncoder.encode <cdm3d.core.ClipEncoder.encode>`)."""
        if self.clip is None:
            raise ConfigError("this cascade has no CLIP encoder; pass a Conditioning to run() instead")
        return self.clip.encode(prompts, images, reframe=reframe, text_prior=text_prior)

    def _slice(self, start_at: str | None, stop_at: str | None) -> list[str]:
        names = self.names
        for label, value in (("start_at", start_at), ("stop_at", stop_at)):
            if value is not None and value not in self.stages:
                raise InputError(f"{label}={value!r} is not a stage of this cascade; stages: {names}")
        i = names.index(start_at) if start_at else 0
        j = names.index(stop_at) + 1 if stop_at else len(names)
        if i >= j:
            raise InputError(f"start_at={start_at!r} comes after stop_at={stop_at!r}")
        return names[i:j]

    def run(
        self,
        cond: Conditioning,
        *,
        seed: int = 0,
        start_at: str | None = None,
        stop_at: str | None = None,
        init: Any = None,
        sampling: dict[str, dict[str, Any]] | None = None,
        device: torch.device | str | None = None,
        offload: bool = False,
        progress: bool = True,
        callback: StageCallback | None = None,
    ) -> CascadeOutput:
        """Run stages ``start_at``..``stop_at`` (inclusive) and return every output.

        Args:
            cond: the batch's conditioning, computed once for all stages.
            seed: the run's seed; each stage draws from its own generator.
            init: the output the first run stage consumes (needed when ``start_at``
                is not the first stage).
            sampling: per-stage overrides, ``{"upsample": {"steps": 16}}``.
            device: where stages run (default: where they are).
            offload: keep only the running stage on ``device``; the others go to the CPU.
            progress: show a progress bar per stage.
            callback: called as ``callback(stage_name, step, total)``.

        A selector stage (:class:`~cdm3d.core.selection.SelectorStage`) that asks for ``K > 1`` candidates
        has the stages before it (in this run) produce ``K`` per example, keeps the best-scored one of each
        example and gathers the earlier outputs to it; its scores and choice are in ``output.selection``.
        With ``keep = M > 1`` it passes on its M best per example and a later selector of the run chooses
        among them (a run that ends first keeps the best of each example's M). The outputs of the stages
        before a selector must support indexing by a tensor of rows.
        """
        names = self._slice(start_at, stop_at)
        sampling = self._check_run(names, sampling, init)
        if offload and device is not None:
            for stage in self.stages.values():
                stage.to("cpu")
        pool = Candidates.for_run(self.stages, names, sampling, cond)
        prev = pool.spread(init, f"init (the input of '{names[0]}')")
        outputs: dict[str, Any] = {}
        timings: dict[str, float] = {}
        selection: dict[str, dict[str, torch.Tensor]] = {}
        for k, name in enumerate(names):
            stage, settings = self.stages[name], sampling.get(name)
            generator = torch.Generator().manual_seed(stage_seed(seed, name))
            steps = _steps(name, stage.num_steps(settings), f"[{k + 1}/{len(names)}] {name}", progress, callback)
            with _placed(stage, device, offload), steps as step:
                start = time.perf_counter()
                if pool.chooses(name, stage):
                    what = f"the output of '{names[k - 1]}'"
                    prev, outputs, selection[name] = pool.choose(stage, prev, outputs, generator, settings, what)
                    prev = stage.sample(prev, pool.run_cond, sampling=settings, callback=step)
                else:
                    prev = stage.sample(prev, pool.run_cond, generator=generator, sampling=settings, callback=step)
                timings[name] = time.perf_counter() - start
            outputs[name] = prev
        return CascadeOutput(pool.finish(outputs), cond, timings, selection)

    def _check_run(self, names: list[str], sampling: dict[str, Any] | None, init: Any) -> dict[str, Any]:
        """The run's per-stage settings, checked to name stages, and ``init`` checked to be there when needed."""
        sampling = dict(sampling or {})
        unknown = set(sampling) - set(self.stages)
        if unknown:
            raise InputError(f"sampling settings for unknown stages {sorted(unknown)}; stages: {self.names}")
        if names[0] != self.names[0] and init is None:
            raise InputError(f"starting at '{names[0]}' needs init=<output of the stage before it>")
        return sampling

    # -- slicing --------------------------------------------------------------------------
    def subset(self, names: Iterable[str]) -> Cascade:
        """A cascade of the stages ``names`` (in this cascade's order; the same stage objects) and this CLIP."""
        wanted = set(names)
        unknown = wanted - set(self.stages)
        if unknown:
            raise InputError(f"no stages {sorted(unknown)} in this cascade; stages: {self.names}")
        kept = [(n, s) for n, s in self.stages.items() if n in wanted]
        return Cascade(kept, clip=self.clip, clip_ref=self.clip_ref)

    def producing(self, kind: str, selectors: bool = True) -> Cascade:
        """The stages that produce ``kind`` (an output type's name, such as ``"PointClouds"``), in order:
        the point stages of a text-to-3D cascade, say. ``selectors=False`` leaves selector stages out (one
        sample per prompt, the diffusion stages alone)."""
        return self.subset(
            n for n, s in self.stages.items() if s.produces == kind and (selectors or not isinstance(s, SelectorStage))
        )

    def last_producer(self, kind: str) -> tuple[str | None, str | None]:
        """The name of the last (non-selector) stage producing ``kind`` and of the selector stage after it
        that chooses among its outputs (each ``None`` where there is none)."""
        names = self.names
        makers = [n for n in names if self.stages[n].produces == kind and not isinstance(self.stages[n], SelectorStage)]
        if not makers:
            return None, None
        after = names[names.index(makers[-1]) + 1 :]
        return makers[-1], next((n for n in after if isinstance(self.stages[n], SelectorStage)), None)

    def __call__(self, prompts: Any = None, images: torch.Tensor | None = None, **kwargs: Any) -> CascadeOutput:
        return self.run(self.encode(prompts, images), **kwargs)

    def to(self, device: torch.device | str) -> Cascade:
        for stage in self.stages.values():
            stage.to(device)
        if self.clip is not None:
            self.clip.to(device)
        return self

    # -- persistence ----------------------------------------------------------------------
    def save_pretrained(
        self, directory: str | Path, *, overwrite: bool = False, stage_dtype: torch.dtype | None = None
    ) -> Path:
        """Write the cascade folder; a crash leaves any previous folder intact. ``stage_dtype`` (float16, say)
        stores the stages' weights in that precision: half the size, cast back to float32 on loading."""
        return write_folder(
            Path(directory), self.stages, self.clip, self.clip_ref, overwrite=overwrite, stage_dtype=stage_dtype
        )

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, load_clip: bool = True) -> Cascade:
        directory = Path(directory)
        doc = read_cascade_file(directory)
        clip = load_folder_clip(directory, doc.clip) if load_clip and doc.clip is not None else None
        return cls(load_stages(directory, doc), clip=clip, clip_ref=doc.clip)

    @classmethod
    def from_config(cls, path: str | Path, *, clip: ClipEncoder | None = None) -> Cascade:
        """An untrained cascade from a recipe YAML whose stages name config files or inline configs."""
        path = Path(path)
        recipe = validate(CascadeRecipe, load_yaml(path), str(path))
        stages = []
        for spec in recipe.stages:
            data = spec.config
            if isinstance(data, str):
                data = load_yaml((path.parent / data).resolve())
            stages.append((spec.name, build_stage(data, f"config of stage '{spec.name}'")))
        if clip is None and recipe.clip is not None:
            clip = load_folder_clip(path.parent, recipe.clip)
        return cls(stages, clip=clip, clip_ref=recipe.clip)


@contextlib.contextmanager
def _placed(stage: Stage, device: torch.device | str | None, offload: bool) -> Iterator[None]:
    """``stage`` on ``device`` while it runs (and back on the CPU after it, with ``offload``)."""
    if device is not None:
        stage.to(device)
    try:
        yield
    finally:
        if offload and device is not None:
            stage.to("cpu")


@contextlib.contextmanager
def _steps(
    name: str, total: int, label: str, progress: bool, callback: StageCallback | None
) -> Iterator[Callable[[int, int], None]]:
    """A stage's step callback: a progress bar (``progress``) and the run's ``callback(name, step, total)``."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=label, disable=not progress, leave=False)

    def step(i: int, n: int) -> None:
        bar.update(1)
        if callback is not None:
            callback(name, i, n)

    try:
        yield step
    finally:
        bar.close()
