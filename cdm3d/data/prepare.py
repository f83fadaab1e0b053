"""Turn a folder of meshes with a captions CSV (or the procedural world) into point-cloud shards.

Bad files are skipped and listed in ``report.json``, never dropped silently.
"""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cdm3d.core.checkpoint import write_text
from cdm3d.data.meshes import MESH_SUFFIXES, load_mesh, normalise, sample_colored_points
from cdm3d.data.shards import Record, write_shard
from cdm3d.errors import InputError, StorageError


@dataclass(frozen=True)
class PrepareOptions:
    points: int = 4096
    sdf_samples: int = 0
    seed: int = 0


@dataclass
class Report:
    written: int = 0
    shards: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    captions_without_mesh: int = 0

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=2)


def read_captions(path: str | Path) -> dict[str, str]:
    """``uid,caption`` rows (Cap3D's format; a header row is optional)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"captions file not found: {path}")
    captions: dict[str, str] = {}
    try:
        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.reader(f):
                if len(row) < 2 or row[:2] == ["uid", "caption"]:
                    continue
                captions[row[0].strip()] = row[1].strip()
    except (UnicodeDecodeError, csv.Error) as err:
        raise InputError(f"captions file {path} is not a UTF-8 CSV of uid,caption rows ({err})") from None
    if not captions:
        raise InputError(f"captions file {path} holds no uid,caption rows")
    return captions


def find_meshes(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"mesh folder not found: {root}")
    return sorted(p for p in root.rglob("*") if p.is_file())


def _process(job: tuple[Path, str, PrepareOptions]) -> tuple[str, Record | None, str]:
    path, caption, opts = job
    try:
        mesh = normalise(load_mesh(path))
        xyz, rgb = sample_colored_points(mesh, opts.points, opts.seed)
        sdf_q = sdf = None
        if opts.sdf_samples:
            if not mesh.is_watertight:
                raise InputError(f"{path.name}: not watertight, so its SDF is undefined (use --sdf 0)")
            from cdm3d.data.world import signed_distance

            rng = np.random.default_rng(opts.seed)
            near, _ = sample_colored_points(mesh, opts.sdf_samples // 2, opts.seed + 1)
            sdf_q = np.concatenate(
                [near + rng.normal(scale=0.02, size=near.shape), rng.uniform(-1, 1, (opts.sdf_samples - len(near), 3))]
            ).astype(np.float32)
            sdf = signed_distance(mesh.vertices, mesh.faces, sdf_q)
        return path.stem, Record(path.stem, caption, xyz, rgb, sdf_q, sdf), ""
    except InputError as err:
        return path.stem, None, str(err)
    except Exception as err:  # a library crash on one file must not stop the run
        return path.stem, None, f"{path.name}: {type(err).__name__}: {err}"


def prepare_folder(
    meshes: str | Path,
    captions: str | Path,
    out: str | Path,
    options: PrepareOptions = PrepareOptions(),
    workers: int = 2,
    shard_size: int = 256,
    progress: bool = True,
) -> Report:
    from tqdm.auto import tqdm

    caption_of = read_captions(captions)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    report = Report()
    jobs = []
    for path in find_meshes(meshes):
        if path.suffix.lower() not in MESH_SUFFIXES:
            report.skipped.append({"uid": path.stem, "file": path.name, "reason": f"not a mesh file ({path.suffix})"})
        elif path.stem not in caption_of:
            report.skipped.append({"uid": path.stem, "file": path.name, "reason": "no caption for this uid"})
        else:
            jobs.append((path, caption_of[path.stem], options))
    report.captions_without_mesh = len(set(caption_of) - {p.stem for p, _, _ in jobs})
    writer = _ShardWriter(out, report, shard_size)

    ctx = mp.get_context("spawn")
    with ctx.Pool(max(1, workers)) if workers > 1 else _Serial() as pool:
        results = pool.imap(_process, jobs, chunksize=4)
        for uid, record, error in tqdm(results, total=len(jobs), desc="prepare", disable=not progress):
            if record is None:
                report.skipped.append({"uid": uid, "reason": error})
                continue
            writer.add(record)
    writer.flush()
    write_text(out / "report.json", report.to_json())
    return report


class _ShardWriter:
    """Collects records and writes them ``shard_size`` at a time as shard-00000.npz, ... (counted in ``report``)."""

    def __init__(self, out: Path, report: Report, shard_size: int) -> None:
        self.out, self.report, self.shard_size = out, report, shard_size
        self.buffer: list[Record] = []

    def add(self, record: Record) -> None:
        self.buffer.append(record)
        if len(self.buffer) >= self.shard_size:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            name = f"shard-{len(self.report.shards):05d}.npz"
            write_shard(self.out / name, self.buffer)
            self.report.shards.append(name)
            self.report.written += len(self.buffer)
            self.buffer = []


class _Serial:
    """A stand-in for a process pool that runs in this process."""

    def __enter__(self) -> _Serial:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def imap(self, fn, jobs, chunksize: int = 1):
        return map(fn, jobs)


def prepare_world(
    split: str,
    count: int,
    out: str | Path,
    options: PrepareOptions = PrepareOptions(),
    shard_size: int = 256,
    progress: bool = True,
) -> Report:
    """Shards of the first ``count`` objects of a world split (labels kept in ``meta``)."""
    from tqdm.auto import tqdm

    from cdm3d.data.world import World

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create the output folder {out}: {err.strerror or err}") from None
    world, report = World(split), Report()
    writer = _ShardWriter(out, report, shard_size)
    for i in tqdm(range(count), desc=f"world {split}", disable=not progress):
        obj = world[i]
        xyz, rgb = obj.points(options.points)
        sdf_q = sdf = None
        if options.sdf_samples:
            sdf_q, sdf = obj.sdf_samples(options.sdf_samples)
        meta = {"category": obj.labels.category, "colors": list(obj.labels.colors), **obj.labels.attributes}
        writer.add(Record(f"{split}-{i:07d}", obj.caption, xyz, rgb, sdf_q, sdf, meta))
    writer.flush()
    write_text(out / "report.json", report.to_json())
    return report
