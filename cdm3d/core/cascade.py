"""The cascade driver: runs any slice of an ordered list of stages.

A trained cascade is a folder::

    cascade.yaml            names the stages in order and the CLIP to use
    <stage>.safetensors     one per stage, its resolved config in the metadata
    clip.safetensors        a custom CLIP, when the cascade ships one
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import Field

from cdm3d.core.clip import ClipEncoder
from cdm3d.core.conditioning import Conditioning
from cdm3d.core.config import StrictConfig, load_yaml, validate
from cdm3d.core.selection import SelectorStage
from cdm3d.core.stage import Stage
from cdm3d.core.stage_io import build_stage, load_stage, save_stage
from cdm3d.errors import CheckpointError, ConfigError, InputError, StorageError

CASCADE_FILE = "cascade.yaml"
STAGE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
RESERVED_NAMES = {"clip", "cascade", "clip.text_prior"}  # names of the CLIP's files in a folder
CASCADE_FORMAT = "cdm3d-cascade/1"
StageCallback = Callable[[str, int, int], None]


class ClipRef(StrictConfig):
    """Which CLIP a cascade conditions on: a file in the folder, or an open_clip name."""

    weights: str | None = None
    model: str | None = None
    pretrained: str | None = None
    # Conditioning images are reframed so their object spans this fraction of the frame: the framing of the
    # CLIP's training images (ClipEncoder.image_fill; benchmarks/framing.py measures it).
    image_fill: float | None = Field(None, ge=0.05, le=1.0)
    # A file in the folder: the CLIP's text prior (ClipEncoder.text_prior), filling the text slot from images.
    text_prior: str | None = None


class StageEntry(StrictConfig):
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
    weights: str
    # A low-noise expert of the same stage type (DiffusionStage.set_expert).
    expert: str | None = None


class CascadeFile(StrictConfig):
    format: str = CASCADE_FORMAT
    clip: ClipRef | None = None
    stages: list[StageEntry]


class StageSpec(StrictConfig):
    """A stage in a cascade *recipe* (configs/cascades/*.yaml): a name and a config."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_.-]*$")
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
        import time

        from tqdm.auto import tqdm

        names = self._slice(start_at, stop_at)
        sampling = dict(sampling or {})
        unknown = set(sampling) - set(self.stages)
        if unknown:
            raise InputError(f"sampling settings for unknown stages {sorted(unknown)}; stages: {self.names}")
        if names[0] != self.names[0] and init is None:
            raise InputError(f"starting at '{names[0]}' needs init=<output of the stage before it>")
        if offload and device is not None:
            for stage in self.stages.values():
                stage.to("cpu")
        outputs: dict[str, Any] = {}
        timings: dict[str, float] = {}
        selection: dict[str, dict[str, torch.Tensor]] = {}
        batch = cond.batch_size
        selector, per = self._selector(names, sampling)
        run_cond = cond
        prev = init
        if per > 1:
            run_cond = cond.repeat_interleave(per)
            if prev is not None:
                prev = _rows(prev, torch.arange(batch).repeat_interleave(per), f"init (the input of '{names[0]}')")
        choosing = False  # from the selector that asked for the candidates on, selectors choose among them
        for k, name in enumerate(names):
            stage = self.stages[name]
            choosing = choosing or name == selector
            if device is not None:
                stage.to(device)
            settings = sampling.get(name)
            total = stage.num_steps(settings)
            bar = tqdm(total=total, desc=f"[{k + 1}/{len(names)}] {name}", disable=not progress, leave=False)

            def step(i: int, n: int, name: str = name, bar: Any = bar) -> None:
                bar.update(1)
                if callback is not None:
                    callback(name, i, n)

            generator = torch.Generator().manual_seed(stage_seed(seed, name))
            start = time.perf_counter()
            try:
                if choosing and per > 1 and isinstance(stage, SelectorStage):
                    scores = stage.score(prev, run_cond, generator=generator, sampling=settings).view(batch, per)
                    kept = scores.topk(min(stage.resolve_sampling(settings).keep, per), dim=1).indices
                    rows = (torch.arange(batch)[:, None] * per + kept).flatten()
                    outputs = {n: _rows(v, rows, f"the output of '{n}'") for n, v in outputs.items()}
                    prev = _rows(prev, rows, f"the output of '{names[k - 1]}'")
                    per = kept.shape[1]
                    run_cond = cond.repeat_interleave(per) if per > 1 else cond
                    prev = stage.sample(prev, run_cond, sampling=settings, callback=step)
                    selection[name] = {"scores": scores, "chosen": kept[:, 0], "kept": kept}
                else:
                    prev = stage.sample(prev, run_cond, generator=generator, sampling=settings, callback=step)
            finally:
                bar.close()
                if offload and device is not None:
                    stage.to("cpu")
            timings[name] = time.perf_counter() - start
            outputs[name] = prev
        if per > 1:  # no later selector chose among the last one's kept candidates: keep each example's best
            rows = torch.arange(batch) * per
            outputs = {n: _rows(v, rows, f"the output of '{n}'") for n, v in outputs.items()}
        return CascadeOutput(outputs, cond, timings, selection)

    def _selector(self, names: list[str], sampling: dict[str, dict[str, Any]]) -> tuple[str | None, int]:
        """The selector stage of this run that asks for several candidates, and how many (1: none). A
        selector that starts the run has no earlier stage to draw candidates from: it passes its input on."""
        wanted = {n: s.candidates(sampling.get(n)) for n in names[1:] if isinstance(s := self.stages[n], SelectorStage)}
        asking = [n for n, k in wanted.items() if k > 1]
        if len(asking) > 1:
            raise InputError(f"only one selector stage per run can draw several candidates; these do: {asking}")
        return (asking[0], wanted[asking[0]]) if asking else (None, 1)

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
        directory = Path(directory)
        if directory.exists() and not overwrite:
            raise InputError(f"{directory} exists; pass overwrite=True to replace it")
        try:
            directory.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
        except OSError as err:
            raise StorageError(f"cannot write the cascade folder {directory}: {err.strerror or err}") from None
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a cascade folder is an ordinary folder
        try:
            entries = []
            for name, stage in self.stages.items():
                save_stage(stage, tmp / f"{name}.safetensors", stage_dtype)
                entry = {"name": name, "weights": f"{name}.safetensors"}
                expert = getattr(stage, "expert", None)
                if expert is not None:
                    save_stage(expert, tmp / f"{name}.expert.safetensors", stage_dtype)
                    entry["expert"] = f"{name}.expert.safetensors"
                entries.append(entry)
            clip: dict[str, Any] | None = None
            if self.clip is not None and self.clip.custom_config is not None:
                # The frozen CLIP ships in half precision: half the size, embeddings equal to ~1e-3.
                self.clip.save(tmp / "clip.safetensors", dtype=torch.float16)
                clip = {"weights": "clip.safetensors"}
            elif self.clip_ref is not None:
                clip = self.clip_ref.model_dump(exclude_none=True)
            if clip is not None and self.clip is not None and self.clip.image_fill is not None:
                clip["image_fill"] = self.clip.image_fill
            if clip is not None and self.clip is not None and self.clip.text_prior is not None:
                self.clip.save_text_prior(tmp / "clip.text_prior.safetensors", dtype=torch.float16)
                clip["text_prior"] = "clip.text_prior.safetensors"
            doc = {"format": CASCADE_FORMAT, "clip": clip, "stages": entries}
            (tmp / CASCADE_FILE).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
            if directory.exists():
                backup = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old.", dir=directory.parent))
                backup.rmdir()
                directory.rename(backup)
                try:
                    tmp.rename(directory)
                except OSError:
                    backup.rename(directory)  # put the previous folder back
                    raise
                shutil.rmtree(backup)
            else:
                tmp.rename(directory)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, load_clip: bool = True) -> Cascade:
        directory = Path(directory)
        doc = read_cascade_file(directory)
        stages = []
        for entry in doc.stages:
            stage = load_stage(_inside(directory, entry.weights))
            if entry.expert is not None:
                if not hasattr(stage, "set_expert"):
                    raise CheckpointError(f"{directory}: stage '{entry.name}' ({stage.config.type}) takes no expert")
                expert = load_stage(_inside(directory, entry.expert), expected_type=stage.config.type)
                try:
                    stage.set_expert(expert)
                except InputError as err:
                    raise CheckpointError(f"{directory}: {err}") from None
            stages.append((entry.name, stage))
        clip = _load_clip(directory, doc.clip) if load_clip and doc.clip is not None else None
        return cls(stages, clip=clip, clip_ref=doc.clip)

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
            clip = _load_clip(path.parent, recipe.clip)
        return cls(stages, clip=clip, clip_ref=recipe.clip)


def _rows(output: Any, rows: torch.Tensor, what: str) -> Any:
    """``output[rows]``: the rows of a batched output (a selector keeps or repeats examples)."""
    try:
        return output[rows]
    except (TypeError, IndexError, KeyError) as err:
        raise InputError(
            f"a selector stage needs {what} ({type(output).__name__}) to be indexable by rows: {err}"
        ) from None


def read_cascade_file(directory: Path) -> CascadeFile:
    """The validated ``cascade.yaml`` of a cascade folder."""
    if not directory.is_dir():
        raise CheckpointError(
            f"cascade folder not found: {directory}; give a folder written by Cascade.save_pretrained "
            "or tools/assemble_cascade.py"
        )
    if not (directory / CASCADE_FILE).is_file():
        raise CheckpointError(
            f"{directory} is not a cdm3d cascade folder (no {CASCADE_FILE}); give a folder written by "
            "tools/assemble_cascade.py"
        )
    try:
        doc = validate(CascadeFile, load_yaml(directory / CASCADE_FILE), str(directory / CASCADE_FILE))
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    if doc.format != CASCADE_FORMAT:
        raise CheckpointError(f"{directory}: format {doc.format!r}; this cdm3d reads {CASCADE_FORMAT!r}")
    return doc


def load_cascade_clip(directory: Path) -> ClipEncoder:
    """The CLIP a cascade folder names, as the cascade loads it (its image framing included)."""
    doc = read_cascade_file(directory)
    if doc.clip is None:
        raise CheckpointError(f"{directory}/{CASCADE_FILE} names no CLIP")
    return _load_clip(directory, doc.clip)


def _inside(directory: Path, relative: str) -> Path:
    """``directory / relative``, refusing paths that leave the folder."""
    path = (directory / relative).resolve()
    if directory.resolve() not in path.parents:
        raise CheckpointError(f"{directory}/{CASCADE_FILE} points outside its folder: {relative!r}")
    return path


def _load_clip(directory: Path, ref: ClipRef) -> ClipEncoder:
    if ref.weights is not None:
        clip = ClipEncoder.load(_inside(directory, ref.weights))
    elif ref.model is not None and ref.pretrained is not None:
        clip = ClipEncoder.from_pretrained(ref.model, ref.pretrained)
    else:
        raise CheckpointError("clip entry needs 'weights', or both 'model' and 'pretrained'")
    clip.image_fill = ref.image_fill
    if ref.text_prior is not None:
        clip.load_text_prior(_inside(directory, ref.text_prior))
    return clip
