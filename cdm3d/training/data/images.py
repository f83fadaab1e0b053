"""Image training data for ``images.base`` and ``images.sr``: renders of world objects with their captions.

Each object is rendered once from the default camera (the objects carry their
own random yaw, so views vary) at ``size`` pixels and cached as
``{cache_dir}/world-renders-{split}-{M}x{size}.npy`` (uint8 ``[M, 3, S, S]``).
A base stage is trained on the renders resized to its size; a
super-resolution stage on renders at its size, conditioned on the same render
shrunk to its ``low_size`` and resized back up (what it sees at sampling
time). Captions come from the embeddings file the point stages use (a random
caption variant per example).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from cdm3d.core import Conditioning, DiffusionStage
from cdm3d.core.config import StrictConfig
from cdm3d.errors import InputError
from cdm3d.training.data import DATASETS
from cdm3d.training.data.points import PointCloudData, build_cache, cached_objects, load_embeddings


class WorldImagesConfig(StrictConfig):
    type: Literal["world.images"] = "world.images"
    split: Literal["train", "val", "test"] = "train"
    objects: int = Field(8000, ge=1)
    size: int = Field(64, ge=8)  # render size cached; stages resize from it
    embeddings: str
    cache_dir: str = "runs/cache"
    workers: int = Field(2, ge=1)


def _render(job: tuple[str, int, int]) -> np.ndarray:
    from cdm3d.data.world import World

    split, index, size = job
    img = World(split)[index].render(size=size)
    return (img.permute(2, 0, 1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def build_renders(split: str, objects: int, size: int, path: Path, workers: int = 2) -> torch.Tensor:
    jobs = [(split, i, size) for i in range(objects)]
    return build_cache(_render, jobs, (3, size, size), np.uint8, path, workers, "renders")


def load_renders(split: str, objects: int, size: int, cache_dir: str, workers: int) -> torch.Tensor:
    """``[objects, 3, size, size]`` uint8 renders, from a cache (any covering one) or rendered and cached."""
    found = cached_objects(cache_dir, f"world-renders-{split}", objects, (3, size, size), tag=size)
    if found is not None:
        return found
    path = Path(cache_dir) / f"world-renders-{split}-{objects}x{size}.npy"
    return build_renders(split, objects, size, path, workers)


class WorldImagesData(PointCloudData):
    """Batches ``(x0 [B, 3, S, S], cond, cond_input [B, 3, S, S] | None)`` in [-1, 1]."""

    def __init__(self, config: WorldImagesConfig, stage: DiffusionStage) -> None:
        self.config, self.stage, self.image_prob = config, stage, 0.0
        size = getattr(stage.config, "size", None)
        if stage.produces != "Images" or size is None:
            raise InputError(f"world.images data trains image stages, not {stage.config.type!r}")
        if size > config.size:
            raise InputError(f"the stage makes {size}-pixel images; the data renders {config.size} (raise data.size)")
        self.text, _, self.null_text = load_embeddings(config.embeddings, config.split, config.objects)
        self.image = None
        self.renders = load_renders(config.split, config.objects, config.size, config.cache_dir, config.workers)

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, Conditioning, torch.Tensor | None]:
        from cdm3d.stages.images.sr import resize_images

        idx = torch.randint(0, len(self.renders), (size,), generator=generator)
        images = self.renders[idx].float() / 127.5 - 1
        cfg = self.stage.config
        x0 = resize_images(images, cfg.size)
        cond_input = None
        if self.stage.consumes is not None:
            cond_input = resize_images(resize_images(images, cfg.low_size), cfg.size)
        return x0, self.conditioning(idx, generator), cond_input


DATASETS.register("world.images")((WorldImagesConfig, WorldImagesData))
