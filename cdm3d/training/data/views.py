"""CLIP training data: rendered views of world objects with their captions (``world.views``).

Each object is rendered ``views`` times from random cameras (:func:`cdm3d.render.random_camera`; with
``default_view`` the first view from the default camera, the view the image stages learn), optionally
reframed so the object spans ``image_fill`` of the frame, and cached as
``{cache_dir}/world-views-{split}-s{seed}-v{views}-{M}x{size}[-d][-f0.75].npy`` (uint8 ``[M, views, S, S, 3]``).
A batch holds one view of distinct objects (so no caption matches two images), preprocessed as the CLIP
preprocesses images in use, and one of ``caption_variants`` captions of each.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from cdm3d.core.config import StrictConfig
from cdm3d.errors import InputError
from cdm3d.training.data.cache import build_cache, cached_objects
from cdm3d.training.data.registry import DATASETS


class WorldViewsConfig(StrictConfig):
    type: Literal["world.views"] = "world.views"
    split: Literal["train", "val", "test"] = "train"
    objects: int = Field(8000, ge=2)
    views: int = Field(4, ge=1)
    size: int = Field(64, ge=16)
    caption_variants: int = Field(64, ge=1)
    # Reframe the views so their object spans this fraction of the frame (a text prior learns on images framed
    # as a cascade with this clip.image_fill shows them); None: as rendered.
    image_fill: float | None = Field(None, ge=0.05, le=1.0)
    # Degrade views as generated images are (half through half resolution, pixel noise, a small shift).
    augment: bool = False
    # Each object's first view from the default camera (the view the image stages learn and generate).
    default_view: bool = False
    seed: int = 0  # of the random cameras
    cache_dir: str = "runs/cache"
    workers: int = Field(2, ge=1)


def _object_views(job: tuple[str, int, int, int, bool, float | None, int]) -> np.ndarray:
    """uint8 ``[views, size, size, 3]`` views of one object."""
    from cdm3d.core.framing import reframe
    from cdm3d.data.world import World
    from cdm3d.render.camera import Camera, random_camera

    split, index, views, size, default_view, fill, seed = job
    obj, rng = World(split)[index], random.Random(seed * 1_000_003 + index)
    cameras = [Camera() if default_view and v == 0 else random_camera(rng) for v in range(views)]
    images = torch.stack([obj.render(camera, size=size) for camera in cameras])  # [V, S, S, 3] in [0, 1]
    if fill is not None:
        images = reframe(images.permute(0, 3, 1, 2), fill).permute(0, 2, 3, 1)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def load_views(cfg: WorldViewsConfig) -> torch.Tensor:
    """``[objects, views, size, size, 3]`` uint8 views, from a cache (any covering one) or rendered and cached."""
    tag = f"{cfg.size}{'-d' if cfg.default_view else ''}{'' if cfg.image_fill is None else f'-f{cfg.image_fill}'}"
    name = f"world-views-{cfg.split}-s{cfg.seed}-v{cfg.views}"
    found = cached_objects(cfg.cache_dir, name, cfg.objects, (cfg.views, cfg.size, cfg.size, 3), tag=tag)
    if found is not None:
        return found
    jobs = [(cfg.split, i, cfg.views, cfg.size, cfg.default_view, cfg.image_fill, cfg.seed) for i in range(cfg.objects)]
    path = Path(cfg.cache_dir) / f"{name}-{cfg.objects}x{tag}.npy"
    return build_cache(_object_views, jobs, (cfg.views, cfg.size, cfg.size, 3), np.uint8, path, cfg.workers, "views")


class WorldViewsData:
    """Batches ``(pixels [B, 3, H, W] as the CLIP's input, tokens [B, L])`` for a :class:`ClipTrainee`."""

    def __init__(self, config: WorldViewsConfig, trainee: object) -> None:
        from cdm3d.data.world import World

        encoder = getattr(trainee, "encoder", None)
        if encoder is None or not hasattr(encoder, "preprocess"):
            raise InputError("world.views data trains a CLIP (a recipe with a 'clip' section), not a stage")
        self.config, self.encoder = config, encoder
        self.views = load_views(config)
        world = World(config.split)
        self.captions = [
            (world.seed(i), world.labels(i)) for i in range(config.objects)
        ]  # what caption_of needs per object

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        from cdm3d.data.augment import augment_images
        from cdm3d.data.world import caption_of

        cfg = self.config
        if size > cfg.objects:
            raise InputError(f"a batch of {size} needs as many distinct objects; data.objects is {cfg.objects}")
        objs = torch.randperm(cfg.objects, generator=generator)[:size]
        views = torch.randint(0, cfg.views, (size,), generator=generator)
        pixels = self.views[objs, views].permute(0, 3, 1, 2).float() / 255
        if cfg.augment:
            pixels = augment_images(pixels, generator)
        variants = torch.randint(0, cfg.caption_variants, (size,), generator=generator).tolist()
        texts = [caption_of(*self.captions[i], v) for i, v in zip(objs.tolist(), variants)]
        return self.encoder.preprocess(pixels), self.encoder.tokenizer(texts)


DATASETS.register("world.views")((WorldViewsConfig, WorldViewsData))
