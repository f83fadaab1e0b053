"""Point-cloud training data from the procedural world, with precomputed CLIP embeddings.

Two caches, built once:

* geometry: ``[M, P, 6]`` float16 points (xyz, rgb in [-1, 1]) of the first ``M``
  objects of a split; needs trimesh and manifold3d, not CLIP;
* embeddings (a safetensors file): ``text [M, V, D]`` CLIP embeddings of ``V``
  caption variants, ``image [M, R, D]`` of ``R`` rendered views, and
  ``null_text [D]``; needs the CLIP, not the geometry.

Each example of a batch is conditioned on text or on an image (chosen at random,
``image_prob``), the other slot holding its null embedding. ``points.coarse`` and
``points.select`` learn from whole clouds, ``points.upsample`` from (coarse, more
points) pairs of the same cloud.
"""

from __future__ import annotations

import multiprocessing as mp
import random
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from cdm3d.core import Conditioning, DiffusionStage, SelectorStage
from cdm3d.core.checkpoint import atomic_path, load_tensors, save_tensors
from cdm3d.core.config import StrictConfig
from cdm3d.errors import InputError
from cdm3d.training.data import DATASETS


class WorldPointsConfig(StrictConfig):
    type: Literal["world.points"] = "world.points"
    split: Literal["train", "val", "test"] = "train"
    objects: int = Field(16000, ge=1)
    points: int = Field(4096, ge=2)  # points cached per object; stages draw random subsets
    embeddings: str  # path of the embeddings file (see build_world_embeddings)
    image_prob: float = Field(0.5, ge=0.0, le=1.0)
    cache_dir: str = "runs/cache"
    workers: int = Field(2, ge=1)


def _quiet_worker() -> None:
    # One thread per worker process: the pool already uses every core.
    torch.set_num_threads(1)


def _object_points(job: tuple[str, int, int]) -> np.ndarray:
    from cdm3d.data.world import World

    split, index, points = job
    xyz, rgb = World(split)[index].points(points)
    return np.concatenate([xyz, rgb * 2 - 1], axis=1).astype(np.float16)


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


def build_geometry(split: str, objects: int, points: int, path: Path, workers: int = 2) -> torch.Tensor:
    jobs = [(split, i, points) for i in range(objects)]
    return build_cache(_object_points, jobs, (points, 6), np.float16, path, workers, "geometry", 64)


@torch.no_grad()
def build_world_embeddings(
    clip, split: str, objects: int, path: str | Path, text_variants: int = 8, image_views: int = 4, seed: int = 0
) -> None:
    """CLIP embeddings of caption variants and rendered views of the first ``objects`` objects."""
    from tqdm.auto import tqdm

    from cdm3d.data.world import World
    from cdm3d.training.clip_trainer import random_camera

    world, rng = World(split), random.Random(seed)
    text = torch.empty(objects, text_variants, clip.embed_dim, dtype=torch.float16)
    image = torch.empty(objects, image_views, clip.embed_dim, dtype=torch.float16)
    chunk = 64
    for start in tqdm(range(0, objects, chunk), desc="embeddings"):
        ids = range(start, min(objects, start + chunk))
        captions = [world.caption(i, v) for i in ids for v in range(text_variants)]
        text[ids.start : ids.stop] = clip.encode_text(captions).view(len(ids), text_variants, -1).half()
        if image_views:
            views = []
            for i in ids:
                obj = world[i]
                views += [
                    obj.render(random_camera(rng), size=clip.image_size).permute(2, 0, 1) for _ in range(image_views)
                ]
            image[ids.start : ids.stop] = clip.encode_image(torch.stack(views)).view(len(ids), image_views, -1).half()
    tensors = {"text": text, "null_text": clip.null_text().half()}
    if image_views:
        tensors["image"] = image
    save_tensors(path, tensors, {"cdm3d.kind": "embeddings", "split": split, "clip": clip.name})


class PointCloudData:
    """Batches for ``points.coarse`` and ``points.upsample`` from clouds and embeddings in memory.

    Subclasses set ``points [M, P, 6]``, ``text [M, V, D]``, ``image [M, R, D] | None``,
    ``null_text [D]`` and ``image_prob``.
    """

    stage: DiffusionStage
    points: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor | None
    null_text: torch.Tensor
    image_prob: float

    def _check_sizes(self) -> None:
        cfg = self.stage.config
        need = cfg.num_points + getattr(cfg, "coarse_points", 0) if self._pairs() else cfg.num_points
        if need > self.points.shape[1]:
            raise InputError(f"the stage needs {need} points per object; the data holds {self.points.shape[1]}")

    def _pairs(self) -> bool:
        """Whether the stage learns (coarse cloud -> more points) pairs: an upsampler. A first stage and
        a selector (``points.select``, which reads whole clouds) take clouds alone."""
        return self.stage.consumes is not None and not isinstance(self.stage, SelectorStage)

    def to(self, device: torch.device | str) -> PointCloudData:
        """Keep the clouds on ``device`` (a GPU): batches are then gathered and shuffled there (8 against 12 ms
        per batch of 256 on an H200 machine, tools/gpu/check_batches.py). The random keys still come from the
        CPU generator and the shuffle is a stable sort, so a run draws the same batches wherever the clouds
        are (an unstable sort broke ties between equal keys differently on the GPU)."""
        self.points = self.points.to(device)
        return self

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, Conditioning, torch.Tensor | None]:
        """``(x0, cond, cond_input)`` for a batch of ``size`` examples (on the clouds' device, see :meth:`to`;
        the conditioning on the CPU)."""
        device = self.points.device
        idx = torch.randint(0, len(self.points), (size,), generator=generator)
        pts = self.points[idx.to(device)].float()
        order = torch.rand(size, pts.shape[1], generator=generator).to(device).argsort(dim=1, stable=True)
        pts = torch.gather(pts, 1, order[..., None].expand(-1, -1, 6))
        cfg = self.stage.config
        cond_input = None
        if not self._pairs():
            x0 = pts[:, : cfg.num_points]
        elif getattr(cfg, "anchored", False):
            cond_input = pts[:, : cfg.coarse_points]
            x0 = anchored_children(cond_input, pts[:, cfg.coarse_points :], cfg.num_points, generator)
        else:
            cond_input = pts[:, : cfg.coarse_points]
            x0 = pts[:, cfg.coarse_points : cfg.coarse_points + cfg.num_points]
        return x0, self.conditioning(idx, generator), cond_input

    def conditioning(self, idx: torch.Tensor, generator: torch.Generator) -> Conditioning:
        """The conditioning of examples ``idx``: a random caption variant, or (``image_prob``) a random view."""
        size, cfg = len(idx), self.stage.config
        text = self.text[idx, torch.randint(0, self.text.shape[1], (size,), generator=generator)].float()
        use_image = torch.rand(size, generator=generator) < self.image_prob
        embeddings = {"text": text}
        null = {"text": self.null_text, "image": torch.zeros_like(self.null_text)}
        if self.image is not None and "image" in cfg.cond_keys:
            image = self.image[idx, torch.randint(0, self.image.shape[1], (size,), generator=generator)].float()
            embeddings["text"] = torch.where(use_image[:, None], self.null_text.expand(size, -1), text)
            embeddings["image"] = torch.where(use_image[:, None], image, torch.zeros_like(image))
        return Conditioning(embeddings, null)


def anchored_children(anchors: torch.Tensor, pool: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``[B, n, C]`` new points for an anchored upsampler: point ``j`` lies in the Voronoi cell of anchor
    ``j mod M`` within ``pool`` (a denser sample of the same surface), drawn at random without repeats where
    the cell holds enough points (an empty cell lends the anchor its nearest pool point).

    Args:
        anchors: ``[B, M, C]`` coarse points; pool: ``[B, P, C]`` other surface points.
    """
    b, m, c = anchors.shape
    p = pool.shape[1]
    per = -(-n // m)
    dist = torch.cdist(pool[..., :3], anchors[..., :3])  # [B, P, M]
    cell = dist.argmin(-1)  # the anchor of each pool point
    # Sort pool points by (cell, random key): each cell's points become a contiguous, shuffled run.
    key = cell.double() + torch.rand(b, p, generator=generator, dtype=torch.float64).to(pool.device)
    order = key.argsort(dim=-1, stable=True)
    sorted_cell = torch.gather(cell, 1, order)
    ids = torch.arange(m, device=pool.device).expand(b, m).contiguous()
    start = torch.searchsorted(sorted_cell.contiguous(), ids)
    count = torch.searchsorted(sorted_cell.contiguous(), ids, right=True) - start
    r = torch.arange(per, device=pool.device).view(1, per, 1)
    pos = start[:, None] + r % count.clamp(min=1)[:, None]  # [B, per, M]
    chosen = torch.gather(order, 1, pos.reshape(b, -1).clamp(max=p - 1))
    nearest = dist.argmin(1)  # [B, M]: each anchor's nearest pool point, for empty cells
    empty = (count == 0)[:, None].expand(b, per, m).reshape(b, -1)
    chosen = torch.where(empty, nearest.repeat(1, per), chosen)
    children = torch.gather(pool, 1, chosen[..., None].expand(-1, -1, c))
    return children[:, :n]


class WorldPointsData(PointCloudData):
    """World clouds (cached geometry) with precomputed text and image embeddings."""

    def __init__(self, config: WorldPointsConfig, stage: DiffusionStage) -> None:
        self.config = config
        self.stage = stage
        self.image_prob = config.image_prob
        self.text, self.image, self.null_text = load_embeddings(config.embeddings, config.split, config.objects)
        self.points = load_geometry(config.split, config.objects, config.points, config.cache_dir, config.workers)
        self._check_sizes()


def load_embeddings(path: str, split: str, objects: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(text [M, V, D], image [M, R, D] | None, null_text [D])`` of the first ``objects`` objects of a split."""
    tensors, meta = load_tensors(path)
    if meta.get("cdm3d.kind") != "embeddings" or "text" not in tensors or "null_text" not in tensors:
        raise InputError(f"{path} is not a cdm3d embeddings file (make one with tools/embed_world.py)")
    if meta.get("split") != split:
        raise InputError(f"embeddings {path} are of split {meta.get('split')!r}, not {split!r}")
    text, image = tensors["text"], tensors.get("image")
    if len(text) < objects:
        raise InputError(f"embeddings {path} cover {len(text)} objects, fewer than {objects}")
    return text[:objects], None if image is None else image[:objects], tensors["null_text"].float()


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
    cache_dir: str, name: str, objects: int, tail: tuple[int, ...], tag: int | None = None
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


def load_geometry(split: str, objects: int, points: int, cache_dir: str, workers: int) -> torch.Tensor:
    """``[objects, points, 6]`` float16 surface clouds, from a cache (any covering one) or built and cached."""
    found = cached_objects(cache_dir, f"world-{split}", objects, (points, 6))
    if found is not None:
        return found
    return build_geometry(split, objects, points, Path(cache_dir) / f"world-{split}-{objects}x{points}.npy", workers)


DATASETS.register("world.points")((WorldPointsConfig, WorldPointsData))


class ShardPointsConfig(StrictConfig):
    """Real data: shards from tools/prepare_dataset.py, conditioned on their captions' CLIP embeddings."""

    type: Literal["shards.points"] = "shards.points"
    path: str  # folder of shard-*.npz files
    clip: str  # the cdm3d CLIP file whose embeddings the stage is trained on
    # Read one shard per batch instead of every shard at the start (data larger than memory).
    stream: bool = False


class ShardPointsData(PointCloudData):
    """Shard clouds with text embeddings of their captions (no image slot).

    Unreadable shards (at the start, or mid-epoch when streaming) and records
    with non-finite points are skipped and counted; :meth:`report` lists them and
    the trainer writes that list to ``data_report.json`` at the end of the run.
    Training stops with a clear error only when no shard is left.
    """

    def __init__(self, config: ShardPointsConfig, stage: DiffusionStage) -> None:
        from cdm3d.core import ClipEncoder
        from cdm3d.data.shards import shard_paths

        self.config, self.stage, self.image_prob, self.image = config, stage, 0.0, None
        self.paths = shard_paths(config.path)
        self.clip = ClipEncoder.load(config.clip)
        self.null_text = self.clip.null_text().float()
        self.skipped: dict[str, str] = {}
        self.records_skipped = 0
        self._text_cache: dict[Path, torch.Tensor] = {}
        if config.stream:
            first = torch.Generator().manual_seed(0)
            while not self._load(self._pick(first)):
                pass
            return
        loaded = [got for got in map(self._read, self.paths) if got is not None]
        if not loaded:
            raise InputError(f"no shard in {config.path} is readable: {self._skipped_summary()}")
        sizes = {pts.shape[1] for pts, _ in loaded}
        if len(sizes) != 1:
            raise InputError(
                f"shards in {config.path} mix point counts {sorted(sizes)}; prepare them with one --points"
            )
        self.points = torch.cat([pts for pts, _ in loaded])
        self.text = torch.cat([text for _, text in loaded])
        self._check_sizes()

    def _skip(self, path: Path, reason: str) -> None:
        import warnings

        if str(path) not in self.skipped:
            self.skipped[str(path)] = reason
            warnings.warn(f"skipping unreadable shard {path}: {reason}", stacklevel=3)

    def _skipped_summary(self) -> str:
        return "; ".join(f"{p}: {r}" for p, r in self.skipped.items())

    def _read(self, path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(points [S, N, 6] float16, text [S, 1, D] float16)`` of one shard, or None when unreadable."""
        from cdm3d.data.shards import read_shard

        try:
            data = read_shard(path)
            xyz, rgb = np.asarray(data["xyz"], np.float32), np.asarray(data["rgb"], np.float32) / 255
            if xyz.ndim != 3 or xyz.shape[-1] != 3 or rgb.shape != xyz.shape or len(data["caption"]) != len(xyz):
                raise InputError(f"arrays of inconsistent shapes (xyz {xyz.shape}, rgb {rgb.shape})")
        except (InputError, ValueError, KeyError) as err:
            self._skip(path, str(err))
            return None
        good = np.isfinite(xyz).all(axis=(1, 2))
        self.records_skipped += int((~good).sum()) if path not in self._text_cache else 0
        if not good.any():
            self._skip(path, "no record with finite points")
            return None
        points = torch.from_numpy(np.concatenate([xyz[good], rgb[good] * 2 - 1], 2).astype(np.float16))
        if path not in self._text_cache:
            captions = [str(c) for c, ok in zip(data["caption"], good) if ok]
            with torch.no_grad():
                text = torch.cat([self.clip.encode_text(captions[i : i + 256]) for i in range(0, len(captions), 256)])
            self._text_cache[path] = text[:, None].half()
        return points, self._text_cache[path]

    def _pick(self, generator: torch.Generator) -> Path:
        alive = [p for p in self.paths if str(p) not in self.skipped]
        if not alive:
            from cdm3d.errors import TrainingError

            raise TrainingError(f"every shard in {self.config.path} is unreadable: {self._skipped_summary()}")
        return alive[int(torch.randint(0, len(alive), (1,), generator=generator))]

    def _load(self, path: Path) -> bool:
        got = self._read(path)
        if got is None:
            return False
        self.points, self.text = got
        try:
            self._check_sizes()
        except InputError as err:
            self._skip(path, str(err))
            return False
        return True

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, Conditioning, torch.Tensor | None]:
        if self.config.stream:  # one shard per batch, read now: a file that broke mid-epoch is skipped
            while not self._load(self._pick(generator)):
                pass
        return super().batch(size, generator)

    def report(self) -> dict[str, object]:
        """What was skipped so far: unreadable shard files (with reasons) and non-finite records."""
        return {
            "shards": len(self.paths),
            "shards_skipped": len(self.skipped),
            "skipped": dict(self.skipped),
            "records_skipped": self.records_skipped,
        }


DATASETS.register("shards.points")((ShardPointsConfig, ShardPointsData))
