"""Classifiers of the world's category and (primary) colour, to measure prompt fidelity.

* ``PointClassifier``: a PointNet (shared per-point MLP, max and mean pooling, two
  heads) trained on world clouds of 1024 points with jitter, so it also reads
  generated clouds.
* ``ImageClassifier``: a small CNN trained on the world's default-camera renders
  (the images the image stages learn), with blur, noise and shift augmentation, so
  it reads 32 px and generated images too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from cdm3d.core.checkpoint import load_state_into, load_tensors, save_tensors
from cdm3d.data.vocab import CATEGORIES, COLORS
from cdm3d.errors import CheckpointError
from cdm3d.models.point_critic import point_mlp, pool

CLASSIFIER_POINTS = 1024
T = TypeVar("T", bound="_Classifier")


class _Classifier(nn.Module):
    """Saving and loading, shared by the classifiers: weights + (vocabulary, width) in safetensors."""

    kind: str
    what: str
    width: int

    def save(self, path: str | Path) -> None:
        meta = {"categories": list(CATEGORIES), "colors": list(COLORS), "width": self.width}
        save_tensors(path, self.state_dict(), {"cdm3d.kind": self.kind, "cdm3d.config": json.dumps(meta)})

    @classmethod
    def load(cls: type[T], path: str | Path) -> T:
        tensors, meta = load_tensors(path)
        if meta.get("cdm3d.kind") != cls.kind:
            raise CheckpointError(f"{path} is not a cdm3d {cls.what}")
        cfg = json.loads(meta["cdm3d.config"])
        if cfg["categories"] != list(CATEGORIES) or cfg["colors"] != list(COLORS):
            raise CheckpointError(f"{path} was trained on another world vocabulary")
        model = cls(cfg["width"])
        load_state_into(model, tensors, path)
        return model.eval()


class PointClassifier(_Classifier):
    """``x [B, N, 6]`` (xyz, rgb in [-1, 1]) -> (category logits ``[B, C]``, colour logits ``[B, K]``)."""

    kind = "classifier"
    what = "point classifier"

    def __init__(self, width: int = 128, categories: int = len(CATEGORIES), colors: int = len(COLORS)) -> None:
        super().__init__()
        self.width = width
        self.point_mlp = point_mlp(6, width)
        self.head = nn.Sequential(nn.LayerNorm(8 * width), nn.Linear(8 * width, 2 * width), nn.GELU())
        self.category = nn.Linear(2 * width, categories)
        self.color = nn.Linear(2 * width, colors)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.head(pool(self.point_mlp(x)))
        return self.category(h), self.color(h)

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, points: int = CLASSIFIER_POINTS, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Category and colour indices of clouds ``x [B, N, 6]`` (random subsets of ``points``)."""
        self.eval()
        if x.shape[1] > points:
            g = torch.Generator().manual_seed(seed)
            idx = torch.rand(x.shape[0], x.shape[1], generator=g).argsort(1)[:, :points].to(x.device)
            x = torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))
        cat, col = self(x.float())
        return cat.argmax(-1), col.argmax(-1)


IMAGE_CLASSIFIER_SIZE = 64


class ImageClassifier(_Classifier):
    """``pixels [B, 3, H, W]`` in [0, 1] (any size; resized to 64) -> (category, colour) logits."""

    kind = "image_classifier"
    what = "image classifier"

    def __init__(self, width: int = 16, categories: int = len(CATEGORIES), colors: int = len(COLORS)) -> None:
        super().__init__()
        self.width = width
        layers: list[nn.Module] = []
        c_in = 3
        for mult in (1, 2, 4, 8):  # 64 -> 32 -> 16 -> 8 -> 4
            c = width * mult
            layers += [
                nn.Conv2d(c_in, c, 3, padding=1),
                nn.GroupNorm(8, c),
                nn.GELU(),
                nn.Conv2d(c, c, 3, stride=2, padding=1),
                nn.GroupNorm(8, c),
                nn.GELU(),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.LayerNorm(2 * c_in), nn.Linear(2 * c_in, 4 * width), nn.GELU())
        self.category = nn.Linear(4 * width, categories)
        self.color = nn.Linear(4 * width, colors)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.interpolate(pixels.float(), size=IMAGE_CLASSIFIER_SIZE, mode="bilinear", antialias=True)
        h = self.features(x * 2 - 1)
        h = self.head(torch.cat([h.amax((2, 3)), h.mean((2, 3))], -1))
        return self.category(h), self.color(h)

    @torch.no_grad()
    def predict(self, pixels: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
        """Category and colour indices of images ``pixels [B, 3, H, W]`` in [0, 1]."""
        self.eval()
        cats, cols = [], []
        for i in range(0, len(pixels), batch):
            cat, col = self(pixels[i : i + batch])
            cats.append(cat.argmax(-1))
            cols.append(col.argmax(-1))
        return torch.cat(cats), torch.cat(cols)


def world_labels(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Category and primary-colour indices of the first ``count`` objects of a split."""
    from cdm3d.data.world import World

    world = World(split)
    cats, cols = list(CATEGORIES), list(COLORS)
    labels = [world.labels(i) for i in range(count)]
    return (
        torch.tensor([cats.index(x.category) for x in labels]),
        torch.tensor([cols.index(x.colors[0]) for x in labels]),
    )
