"""Weights files: safetensors with the resolved config inside; never unpickled.

A stage file holds its tensors plus metadata::

    cdm3d.format = "1"
    cdm3d.kind   = "stage" | "clip"
    cdm3d.type   = the stage type ("points.coarse")
    cdm3d.config = the resolved config as JSON

Every write goes to a temporary file in the same folder and is renamed into
place, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from cdm3d.errors import CheckpointError, StorageError

FORMAT_VERSION = "1"
_PICKLE_MAGICS = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def check_parent(path: str | Path) -> Path:
    """Refuse, before any work, a file whose folder is missing or not writable (:class:`StorageError`)."""
    path = Path(path)
    if not path.parent.is_dir():
        raise StorageError(f"cannot write {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK):
        raise StorageError(f"cannot write {path}: folder {path.parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` on success only.

    A failure while writing (a full disk, a killed process) never leaves a partial
    file under ``path``: whatever was there before stays as it was. An ``OSError``
    becomes a :class:`StorageError` naming the file.
    """
    path = check_parent(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise StorageError(f"cannot write {path}: {err.strerror or err}") from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp (and some writers, safetensors among them) make files private (0600);
        # give the result the usual permissions under the umask.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb+") as f:  # on disk before it takes the final name
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except OSError as err:
        if isinstance(err, StorageError):
            raise
        raise StorageError(
            f"cannot write {path}: {err.strerror or err}; nothing was written (any previous file is intact)"
        ) from err
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (a crash leaves the old file or none, never half of one)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write ``tensors`` and string ``metadata`` to a safetensors file, atomically.

    The same tensors and metadata always give the same bytes (see :func:`_canonical_header`).
    """
    from safetensors.torch import save

    # safetensors refuses shared or non-contiguous storage: store plain copies.
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    blob = save(plain, metadata={"cdm3d.format": FORMAT_VERSION, **metadata})
    header, data_start = _canonical_header(blob)
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        f.write(header)
        f.write(memoryview(blob)[data_start:])  # the tensor data, not copied again


def _canonical_header(blob: bytes) -> tuple[bytes, int]:
    """The length prefix and JSON header of safetensors ``blob`` with the header's keys sorted, and where
    ``blob``'s tensor data starts.

    safetensors writes the header from a hash map, so its key order (and the file's bytes) changes from one
    save to the next; tensors' offsets are explicit in the header, so reordering it leaves the data as it is.
    Sorted, a re-saved unchanged file is byte-identical (reproducible shipped weights, no version-control churn).
    """
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads its header with spaces to 8 bytes
    return len(text).to_bytes(8, "little") + text, 8 + n


def _refuse_non_safetensors(path: Path) -> None:
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(_PICKLE_MAGICS):
        raise CheckpointError(
            f"{path} is a pickle/torch.save file; cdm3d loads weights only from safetensors files "
            "and never unpickles. Convert it where you trust it: "
            "safetensors.torch.save_file(torch.load(p, weights_only=True), 'x.safetensors')"
        )
    if len(head) < 8:
        raise CheckpointError(f"{path} is empty or truncated (not a safetensors file); download or copy it again")
    header_len = int.from_bytes(head[:8], "little")
    if header_len <= 0 or header_len > path.stat().st_size - 8 or head[8:9] != b"{":
        raise CheckpointError(f"{path} is not a safetensors file (bad header); is it truncated or of another format?")


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file, after checking it is one."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    _refuse_non_safetensors(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{path} is corrupt or truncated: {err}; download or copy it again") from None
    return meta


def load_tensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file (checked, on the CPU)."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except Exception as err:
        raise CheckpointError(f"{path} is corrupt or truncated: {err}; download or copy it again") from None
    return tensors, meta


def config_from_metadata(path: str | Path, meta: dict[str, str], kind: str) -> dict[str, Any]:
    if meta.get("cdm3d.kind") != kind or "cdm3d.config" not in meta:
        found = meta.get("cdm3d.kind", "no cdm3d metadata")
        raise CheckpointError(
            f"{path} is not a cdm3d {kind} weights file (found: {found}); give a file written by cdm3d"
        )
    if meta.get("cdm3d.format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has cdm3d format {meta.get('cdm3d.format')!r}; this cdm3d reads {FORMAT_VERSION!r}"
        )
    try:
        config = json.loads(meta["cdm3d.config"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: embedded config is not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: embedded config is not a mapping")
    return config


def load_state_into(
    module: torch.nn.Module, tensors: dict[str, torch.Tensor], path: str | Path, allow_missing: bool = False
) -> None:
    """Load ``tensors`` into ``module``, naming every missing, unexpected or misshapen key.

    ``allow_missing``: tensors the module has and the file lacks keep their values (a warm start of a
    network with added layers); unexpected or misshapen tensors are still refused.
    """
    own = module.state_dict()
    missing = [] if allow_missing else sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    misshapen = [
        f"{k} (file {tuple(tensors[k].shape)}, model {tuple(own[k].shape)})"
        for k in sorted(set(own) & set(tensors))
        if tensors[k].shape != own[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} tensors, e.g. {missing[:3]}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensors, e.g. {unexpected[:3]}")
    if misshapen:
        problems.append(f"mismatched shapes: {misshapen[:3]}")
    if problems:
        raise CheckpointError(
            f"{path} does not fit this model: " + "; ".join(problems) + "; use the weights trained with this config"
        )
    module.load_state_dict(tensors, strict=not allow_missing)
