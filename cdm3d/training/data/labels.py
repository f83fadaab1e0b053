"""Labelled world objects for the evaluation's classifiers: clouds (``world.labelled_points``) or renders
(``world.labelled_renders``) with their category and primary colour, augmented as generated outputs look.
They share the point stages' geometry cache and the image stages' render cache."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from cdm3d.core.config import StrictConfig
from cdm3d.errors import InputError
from cdm3d.training.data.registry import DATASETS
from cdm3d.training.data.world import load_geometry, load_renders


class LabelledPointsConfig(StrictConfig):
    type: Literal["world.labelled_points"] = "world.labelled_points"
    split: Literal["train", "val", "test"] = "train"
    objects: int = Field(8000, ge=1)
    points: int = Field(4096, ge=16)  # points cached per object
    read: int = Field(1024, ge=16)  # random points of an object per example
    jitter: float = Field(0.03, ge=0.0)  # per-example Gaussian jitter drawn in [0, jitter]
    cache_dir: str = "runs/cache"
    workers: int = Field(2, ge=1)


class LabelledRendersConfig(StrictConfig):
    type: Literal["world.labelled_renders"] = "world.labelled_renders"
    split: Literal["train", "val", "test"] = "train"
    objects: int = Field(8000, ge=1)
    size: int = Field(64, ge=8)
    cache_dir: str = "runs/cache"
    workers: int = Field(2, ge=1)


def _check_kind(trainee: object, kind: str, source: str) -> None:
    config = getattr(trainee, "config", None)
    if getattr(config, "kind", None) != kind:
        raise InputError(f"{source} data trains a classifier of kind {kind!r} (a recipe's 'classifier' section)")


class LabelledPointsData:
    """Batches ``(clouds [B, read, 6], categories [B], colours [B])``, each cloud a jittered random subset."""

    def __init__(self, config: LabelledPointsConfig, trainee: object) -> None:
        from cdm3d.eval.classifier import world_labels

        _check_kind(trainee, "points", config.type)
        if config.read > config.points:
            raise InputError(f"data.read {config.read} exceeds the {config.points} points cached per object")
        self.config = config
        self.points = load_geometry(config.split, config.objects, config.points, config.cache_dir, config.workers)
        self.categories, self.colors = world_labels(config.split, config.objects)

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        cfg = self.config
        idx = torch.randint(0, cfg.objects, (size,), generator=generator)
        sub = torch.rand(size, cfg.points, generator=generator).argsort(1)[:, : cfg.read]
        x = torch.gather(self.points[idx].float(), 1, sub[..., None].expand(-1, -1, 6))
        scale = torch.rand(size, 1, 1, generator=generator) * cfg.jitter
        x = x + torch.randn(x.shape, generator=generator) * scale
        return x, self.categories[idx], self.colors[idx]


class LabelledRendersData:
    """Batches ``(pixels [B, 3, S, S] in [0, 1], categories [B], colours [B])``, degraded as generated images
    are (:func:`cdm3d.data.augment.augment_images`)."""

    def __init__(self, config: LabelledRendersConfig, trainee: object) -> None:
        from cdm3d.eval.classifier import world_labels

        _check_kind(trainee, "images", config.type)
        self.config = config
        self.renders = load_renders(config.split, config.objects, config.size, config.cache_dir, config.workers)
        self.categories, self.colors = world_labels(config.split, config.objects)

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from cdm3d.data.augment import augment_images

        idx = torch.randint(0, self.config.objects, (size,), generator=generator)
        return augment_images(self.renders[idx].float() / 255, generator), self.categories[idx], self.colors[idx]


DATASETS.register("world.labelled_points")((LabelledPointsConfig, LabelledPointsData))
DATASETS.register("world.labelled_renders")((LabelledRendersConfig, LabelledRendersData))
