"""Signed-distance training data for ``mesh.sdf`` from the procedural world.

Per object: its surface cloud (the same geometry cache the point stages use)
and ``queries`` query points with signed distances (most near the surface,
the rest uniform in ``[-1, 1]^3``; see ``WorldObject.sdf_samples``), cached as
``{cache_dir}/world-sdf-{split}-{M}x{queries}.npy`` (float16 ``[M, Q, 4]``).
A batch pairs a random subset of an object's surface points (the stage's
input) with a random subset of its queries (the targets), conditioned on a
caption's or a view's CLIP embedding as the point stages are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from cdm3d.core import Conditioning, TrainableStage
from cdm3d.core.config import StrictConfig
from cdm3d.errors import InputError
from cdm3d.training.data.cache import build_cache, cached_objects
from cdm3d.training.data.registry import DATASETS
from cdm3d.training.data.world import CaptionedData, load_embeddings, load_geometry


class WorldSDFConfig(StrictConfig):
    type: Literal["world.sdf"] = "world.sdf"
    split: Literal["train", "val", "test"] = "train"
    objects: int = Field(4000, ge=1)
    points: int = Field(4096, ge=16)  # surface points cached per object
    queries: int = Field(8192, ge=16)  # SDF samples cached per object
    queries_per_example: int = Field(1024, ge=1)  # drawn from those for each example of a batch
    embeddings: str
    image_prob: float = Field(0.5, ge=0.0, le=1.0)
    cache_dir: str = "runs/cache"
    workers: int = Field(2, ge=1)


def _object_sdf(job: tuple[str, int, int]) -> np.ndarray:
    from cdm3d.data.world import World

    split, index, queries = job
    q, d = World(split)[index].sdf_samples(queries)
    return np.concatenate([q, d[:, None]], axis=1).astype(np.float16)


def build_sdf(split: str, objects: int, queries: int, path: Path, workers: int = 2) -> torch.Tensor:
    jobs = [(split, i, queries) for i in range(objects)]
    return build_cache(_object_sdf, jobs, (queries, 4), np.float16, path, workers, "sdf")


class WorldSDFData(CaptionedData):
    """Batches ``(x0 [B, Q, 4] queries + distances, cond, cond_input [B, N, 6] surface points)``."""

    def __init__(self, config: WorldSDFConfig, stage: TrainableStage) -> None:
        self.config, self.stage, self.image_prob = config, stage, config.image_prob
        n = getattr(stage.config, "input_points", None)
        if n is None:
            raise InputError(f"world.sdf data trains mesh.sdf stages, not {stage.config.type!r}")
        if n > config.points:
            raise InputError(f"the stage reads {n} input points per object; the data holds {config.points}")
        if config.queries_per_example > config.queries:
            raise InputError(f"queries_per_example {config.queries_per_example} exceeds the {config.queries} cached")
        self.text, self.image, self.null_text = load_embeddings(config.embeddings, config.split, config.objects)
        self.points = load_geometry(config.split, config.objects, config.points, config.cache_dir, config.workers)
        sdf = cached_objects(config.cache_dir, f"world-sdf-{config.split}", config.objects, (config.queries, 4))
        if sdf is None:
            path = Path(config.cache_dir) / f"world-sdf-{config.split}-{config.objects}x{config.queries}.npy"
            sdf = build_sdf(config.split, config.objects, config.queries, path, config.workers)
        self.sdf = sdf

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, Conditioning, torch.Tensor]:
        idx = torch.randint(0, len(self.points), (size,), generator=generator)
        n, q = self.stage.config.input_points, self.config.queries_per_example
        pick = torch.rand(size, self.points.shape[1], generator=generator).argsort(1)[:, :n]
        points = torch.gather(self.points[idx].float(), 1, pick[..., None].expand(-1, -1, 6))
        pick = torch.rand(size, self.sdf.shape[1], generator=generator).argsort(1)[:, :q]
        x0 = torch.gather(self.sdf[idx].float(), 1, pick[..., None].expand(-1, -1, 4))
        return x0, self.conditioning(idx, generator), points


DATASETS.register("world.sdf")((WorldSDFConfig, WorldSDFData))
