"""Per-object caches of the world (clouds, signed distances, renders): ``[M, *shape]`` arrays in ``.npy`` files,
built once in a process pool and written atomically; any cache covering at least the objects asked for is
reused."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cdm3d.core.checkpoint import atomic_path


def _quiet_worker() -> None:
    # One thread per worker process: the pool already uses every core.
    torch.set_num_threads(1)


def build_cache(
    job: Callable[[tuple], np.ndarray],
    jobs: list[tuple],
    shape: tuple[int, ...],
    dtype: type,
    path: Path,
    workers: int = 2,
    desc: str = "cache",
    chunksize: int = 32,
) -> torch.Tensor:
    """``[len(jobs), *shape]`` rows ``job(j)``, computed in a process pool and saved atomically to ``path``."""
    from tqdm.auto import tqdm

    out = np.empty((len(jobs), *shape), dtype)
    if workers > 1:
        with mp.get_context("spawn").Pool(workers, initializer=_quiet_worker) as pool:
            rows = pool.imap(job, jobs, chunksize=chunksize)
            for i, arr in enumerate(tqdm(rows, total=len(jobs), desc=desc)):
                out[i] = arr
    else:
        for i, j in enumerate(tqdm(jobs, desc=desc)):
            out[i] = job(j)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, out)
    return torch.from_numpy(out)


def _read_cache(path: Path, objects: int, tail: tuple[int, ...]) -> torch.Tensor | None:
    """The first ``objects`` rows of a ``[M, *tail]`` cache file, or None if it is damaged or does not fit."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except (OSError, ValueError) as err:  # a damaged cache is rebuilt, never half-read
        import warnings

        warnings.warn(f"cache {path} is unreadable ({err}); rebuilding it", stacklevel=3)
        return None
    if arr.shape[1:] != tail or len(arr) < objects:
        return None
    return torch.from_numpy(np.ascontiguousarray(arr[:objects]))


def cached_objects(
    cache_dir: str, name: str, objects: int, tail: tuple[int, ...], tag: int | str | None = None
) -> torch.Tensor | None:
    """Rows of a cache ``{name}-{M}x{tag}.npy`` (``tag``: default ``tail[0]``) with ``M >= objects`` (the
    smallest that reads), or None."""
    found = []
    for path in Path(cache_dir).glob(f"{name}-*x{tail[0] if tag is None else tag}.npy"):
        count = path.name[len(name) + 1 :].split("x", 1)[0]
        if count.isdigit() and int(count) >= objects:
            found.append((int(count), path))
    for _, path in sorted(found):
        got = _read_cache(path, objects, tail)
        if got is not None:
            return got
    return None
