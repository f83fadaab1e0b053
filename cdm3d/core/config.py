"""Typed configs: strict pydantic models, YAML loading, errors that name the field."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from cdm3d.errors import ConfigError

M = TypeVar("M", bound="StrictConfig")


class StrictConfig(BaseModel):
    """Base of every cdm3d config: unknown fields and ill-typed values are errors.

    ``strict=True`` means "3" is not an int and 1 is not a bool; ints are
    accepted where a float is expected. Configs are frozen: derive a changed
    copy with :func:`updated`.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "<root>"


def format_validation_error(err: ValidationError, what: str) -> str:
    problems = []
    for e in err.errors():
        path = _field_path(e["loc"])
        if e["type"] == "extra_forbidden":
            problems.append(f"unknown field '{path}'")
        elif e["type"] == "missing":
            problems.append(f"missing required field '{path}'")
        else:
            got = e.get("input")
            shown = json.dumps(got, default=str) if not isinstance(got, dict) else "a mapping"
            problems.append(f"field '{path}': {e['msg']} (got {shown[:80]})")
    return f"invalid {what}: " + "; ".join(problems)


def validate(cls: type[M], data: Any, what: str | None = None) -> M:
    """Build config ``cls`` from plain data, raising :class:`ConfigError` naming each bad field."""
    if not isinstance(data, dict):
        raise ConfigError(f"invalid {what or cls.__name__}: expected a mapping, got {type(data).__name__}")
    try:
        return cls.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, what or cls.__name__)) from None


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def updated(config: M, changes: dict[str, Any], what: str | None = None) -> M:
    """A validated copy of ``config`` with nested ``changes`` merged in."""
    merged = _deep_merge(config.model_dump(mode="python"), changes)
    return validate(type(config), merged, what)


def to_json(config: StrictConfig) -> str:
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data
