"""The cascade folder format: what ``cascade.yaml`` holds, and reading and writing a folder.

A trained cascade is a folder::

    cascade.yaml                 format, the CLIP to use (and the framing it wants images in), the stages in order
    <stage>.safetensors          weights + resolved config, one per stage
    <stage>.expert.safetensors   a stage's low-noise expert, when it has one (its entry names it)
    clip.safetensors             a custom CLIP, when the cascade ships one
    clip.text_prior.safetensors  its text prior, optional

This module knows the files; :class:`~cdm3d.core.cascade.Cascade` knows the stages.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import Field

from cdm3d.core.clip import ClipEncoder
from cdm3d.core.config import StrictConfig, load_yaml, validate
from cdm3d.core.stage import Stage
from cdm3d.core.stage_io import load_stage, save_stage
from cdm3d.errors import CheckpointError, ConfigError, InputError, StorageError

CASCADE_FILE = "cascade.yaml"
CASCADE_FORMAT = "cdm3d-cascade/1"
STAGE_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"


class ClipRef(StrictConfig):
    """Which CLIP a cascade conditions on: a file in the folder, or an open_clip name."""

    weights: str | None = None
    model: str | None = None
    pretrained: str | None = None
    # A local open_clip checkpoint file of ``model`` (absolute, or relative to the folder), instead of a tag.
    checkpoint: str | None = None
    # Conditioning images are reframed so their object spans this fraction of the frame: the framing of the
    # CLIP's training images (ClipEncoder.image_fill; benchmarks/framing.py measures it).
    image_fill: float | None = Field(None, ge=0.05, le=1.0)
    # A file in the folder: the CLIP's text prior (ClipEncoder.text_prior), filling the text slot from images.
    text_prior: str | None = None


class StageEntry(StrictConfig):
    name: str = Field(pattern=STAGE_NAME_PATTERN)
    weights: str
    # A low-noise expert of the same stage type (DiffusionStage.set_expert).
    expert: str | None = None


class CascadeFile(StrictConfig):
    format: str = CASCADE_FORMAT
    clip: ClipRef | None = None
    stages: list[StageEntry]


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


def inside(directory: Path, relative: str) -> Path:
    """``directory / relative``, refusing paths that leave the folder."""
    path = (directory / relative).resolve()
    if directory.resolve() not in path.parents:
        raise CheckpointError(f"{directory}/{CASCADE_FILE} points outside its folder: {relative!r}")
    return path


def load_clip(directory: Path, ref: ClipRef) -> ClipEncoder:
    """The CLIP ``ref`` names, relative to ``directory``, with its image framing and text prior."""
    if ref.weights is not None:
        clip = ClipEncoder.load(inside(directory, ref.weights))
    elif ref.model is not None and ref.checkpoint is not None:
        path = Path(ref.checkpoint)
        clip = ClipEncoder.from_checkpoint(path if path.is_absolute() else inside(directory, ref.checkpoint), ref.model)
    elif ref.model is not None and ref.pretrained is not None:
        clip = ClipEncoder.from_pretrained(ref.model, ref.pretrained)
    else:
        raise CheckpointError("clip entry needs 'weights', or 'model' with 'pretrained' or 'checkpoint'")
    clip.image_fill = ref.image_fill
    if ref.text_prior is not None:
        clip.load_text_prior(inside(directory, ref.text_prior))
    return clip


def load_cascade_clip(directory: str | Path | None = None) -> ClipEncoder:
    """The CLIP a cascade folder names, as the cascade loads it (its image framing and text prior included);
    without a folder, the small CLIP of cdm3d's shipped default cascade."""
    if directory is None:
        from cdm3d.paths import DEFAULT_MODEL

        directory = DEFAULT_MODEL
    directory = Path(directory)
    doc = read_cascade_file(directory)
    if doc.clip is None:
        raise CheckpointError(f"{directory}/{CASCADE_FILE} names no CLIP")
    return load_clip(directory, doc.clip)


def load_stages(directory: Path, doc: CascadeFile) -> list[tuple[str, Stage]]:
    """The folder's stages in order, each with its low-noise expert set when it has one."""
    stages = []
    for entry in doc.stages:
        stage = load_stage(inside(directory, entry.weights))
        if entry.expert is not None:
            if not hasattr(stage, "set_expert"):
                raise CheckpointError(f"{directory}: stage '{entry.name}' ({stage.config.type}) takes no expert")
            expert = load_stage(inside(directory, entry.expert), expected_type=stage.config.type)
            try:
                stage.set_expert(expert)
            except InputError as err:
                raise CheckpointError(f"{directory}: {err}") from None
        stages.append((entry.name, stage))
    return stages


def write_folder(
    directory: Path,
    stages: dict[str, Stage],
    clip: ClipEncoder | None,
    clip_ref: ClipRef | None,
    *,
    overwrite: bool = False,
    stage_dtype: torch.dtype | None = None,
) -> Path:
    """Write a cascade folder; a crash leaves any previous folder intact (see ``Cascade.save_pretrained``)."""
    if directory.exists() and not overwrite:
        raise InputError(f"{directory} exists; pass overwrite=True to replace it")

    def fill(tmp: Path) -> None:
        entries = [_write_stage(tmp, name, stage, stage_dtype) for name, stage in stages.items()]
        doc = {"format": CASCADE_FORMAT, "clip": _write_clip(tmp, clip, clip_ref), "stages": entries}
        (tmp / CASCADE_FILE).write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")

    return replace_folder(directory, fill)


def _write_stage(tmp: Path, name: str, stage: Stage, dtype: torch.dtype | None) -> dict[str, str]:
    save_stage(stage, tmp / f"{name}.safetensors", dtype)
    entry = {"name": name, "weights": f"{name}.safetensors"}
    expert = getattr(stage, "expert", None)
    if expert is not None:
        save_stage(expert, tmp / f"{name}.expert.safetensors", dtype)
        entry["expert"] = f"{name}.expert.safetensors"
    return entry


def _write_clip(tmp: Path, clip: ClipEncoder | None, ref: ClipRef | None) -> dict[str, Any] | None:
    """Write a custom CLIP (and its text prior) into the folder; the ``clip`` entry of ``cascade.yaml``."""
    entry: dict[str, Any] | None = None
    if clip is not None and clip.custom_config is not None:
        # The frozen CLIP ships in half precision: half the size, embeddings equal to ~1e-3.
        clip.save(tmp / "clip.safetensors", dtype=torch.float16)
        entry = {"weights": "clip.safetensors"}
    elif ref is not None:
        entry = ref.model_dump(exclude_none=True)
    if entry is not None and clip is not None and clip.image_fill is not None:
        entry["image_fill"] = clip.image_fill
    if entry is not None and clip is not None and clip.text_prior is not None:
        clip.save_text_prior(tmp / "clip.text_prior.safetensors", dtype=torch.float16)
        entry["text_prior"] = "clip.text_prior.safetensors"
    return entry


def replace_folder(directory: Path, fill: Callable[[Path], None]) -> Path:
    """Make ``directory`` by ``fill``-ing a temporary folder beside it and renaming it into place; a previous
    folder of that name is replaced only once the new one is complete (and put back if the rename fails)."""
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    except OSError as err:
        raise StorageError(f"cannot write the cascade folder {directory}: {err.strerror or err}") from None
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; a cascade folder is an ordinary folder
    try:
        fill(tmp)
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
