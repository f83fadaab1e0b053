"""Saving and loading single stages (weights + embedded config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cdm3d.core.checkpoint import config_from_metadata, load_state_into, load_tensors, save_tensors
from cdm3d.core.config import to_json, validate
from cdm3d.core.registry import STAGES
from cdm3d.core.stage import Stage
from cdm3d.errors import CheckpointError, ConfigError


def stage_config(config: dict, what: str | None = None) -> tuple[type[Stage], Any]:
    """The stage class a config mapping's ``type`` names and the validated config, without building it."""
    if not isinstance(config, dict) or "type" not in config:
        raise ConfigError(f"{what or 'stage config'} needs a 'type' field naming the stage")
    stage_type = config["type"]
    if not isinstance(stage_type, str):
        raise ConfigError(f"{what or 'stage config'}: field 'type' must be a string")
    cls = STAGES.get(stage_type)
    return cls, validate(cls.Config, config, what or f"config of stage '{stage_type}'")


def build_stage(config: dict, what: str | None = None) -> Stage:
    """A fresh (untrained) stage from a config mapping with a ``type`` field."""
    cls, validated = stage_config(config, what)
    return cls(validated)


def save_stage(stage: Stage, path: str | Path, dtype: torch.dtype | None = None) -> None:
    """The stage's weights and config; ``dtype`` (float16, say) stores floating tensors in that precision
    (loading casts them back to the stage's own)."""
    tensors = stage.state_dict()
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    save_tensors(
        path,
        tensors,
        {"cdm3d.kind": "stage", "cdm3d.type": stage.config.type, "cdm3d.config": to_json(stage.config)},
    )


def load_stage(path: str | Path, expected_type: str | None = None, as_type: str | None = None) -> Stage:
    """A stage rebuilt from its weights file; ``expected_type`` guards against a wrong file.

    ``as_type`` builds a stage of another registered type from the file's config and weights, for a type
    that shares the file's config fields and network (``mesh.select`` from a ``points.select`` critic); a
    type they do not fit is a :class:`~cdm3d.errors.CheckpointError`."""
    tensors, meta = load_tensors(path)
    config = config_from_metadata(path, meta, "stage")
    if expected_type is not None and config.get("type") != expected_type:
        raise CheckpointError(
            f"{path} holds weights of stage type {config.get('type')!r}, expected {expected_type!r}; check the path"
        )
    what = f"config embedded in {path}"
    if as_type is not None:
        what = f"{what}, read as stage type {as_type!r}"
        config = {**config, "type": as_type}
    try:
        stage = build_stage(config, what)
    except ConfigError as err:
        raise CheckpointError(str(err)) from None
    load_state_into(stage, tensors, path)
    stage.eval()
    return stage
