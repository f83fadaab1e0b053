"""Point-cloud shards: the one on-disk format training reads, for the world and real data alike.

A shard is an ``.npz`` file with, for ``S`` objects and ``N`` points each:

    uid      [S]        str
    caption  [S]        str
    xyz      [S, N, 3]  float32, normalised to [-0.9, 0.9]
    rgb      [S, N, 3]  uint8
    sdf_q    [S, M, 3]  float16   (optional) SDF queries
    sdf      [S, M]     float16   (optional) signed distances, negative inside
    meta     [S]        str       (optional) JSON labels (category, colours, ...)
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cdm3d.core.checkpoint import atomic_path
from cdm3d.errors import InputError


@dataclass
class Record:
    uid: str
    caption: str
    xyz: np.ndarray
    rgb: np.ndarray
    sdf_q: np.ndarray | None = None
    sdf: np.ndarray | None = None
    meta: dict | None = None


def write_shard(path: str | Path, records: list[Record]) -> Path:
    """Write ``records`` (same point counts) to ``path`` atomically."""
    if not records:
        raise InputError("a shard needs at least one record")
    arrays = {
        "uid": np.array([r.uid for r in records]),
        "caption": np.array([r.caption for r in records]),
        "xyz": np.stack([r.xyz for r in records]).astype(np.float32),
        "rgb": np.stack([(np.clip(r.rgb, 0, 1) * 255).round() for r in records]).astype(np.uint8),
        "meta": np.array([json.dumps(r.meta or {}) for r in records]),
    }
    if all(r.sdf is not None for r in records):
        arrays["sdf_q"] = np.stack([r.sdf_q for r in records]).astype(np.float16)
        arrays["sdf"] = np.stack([r.sdf for r in records]).astype(np.float16)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    return path


def read_shard(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {k: data[k] for k in data.files}
    except Exception as err:
        raise InputError(f"shard {path} is unreadable ({type(err).__name__}: {err})") from None
    for key in ("uid", "caption", "xyz", "rgb"):
        if key not in out:
            raise InputError(f"shard {path} lacks the array {key!r}")
    return out


def shard_paths(directory: str | Path) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"dataset folder not found: {directory}")
    paths = sorted(directory.glob("shard-*.npz"))
    if not paths:
        raise InputError(f"{directory} holds no shard-*.npz files; make them with tools/prepare_dataset.py")
    return paths


def iter_records(directory: str | Path) -> Iterator[Record]:
    for path in shard_paths(directory):
        data = read_shard(path)
        for i in range(len(data["uid"])):
            yield Record(
                str(data["uid"][i]),
                str(data["caption"][i]),
                data["xyz"][i],
                data["rgb"][i].astype(np.float32) / 255,
                data["sdf_q"][i] if "sdf_q" in data else None,
                data["sdf"][i] if "sdf" in data else None,
                json.loads(str(data["meta"][i])) if "meta" in data else None,
            )
