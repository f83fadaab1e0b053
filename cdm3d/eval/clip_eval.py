"""Zero-shot category/colour accuracy and text-to-image retrieval of a CLIP on the world's test split."""

from __future__ import annotations

import random

import torch

from cdm3d.core import ClipEncoder
from cdm3d.data.vocab import CATEGORIES, COLORS, _article
from cdm3d.data.world import World
from cdm3d.render import Camera


def _class_embeddings(encoder: ClipEncoder, prompts_per_class: list[list[str]]) -> torch.Tensor:
    out = []
    for prompts in prompts_per_class:
        emb = encoder.encode_text([_article(p) for p in prompts]).mean(0)
        out.append(emb / emb.norm())
    return torch.stack(out)


def category_prompts() -> list[list[str]]:
    """Per category: its synonyms under every colour (prompt ensembling)."""
    return [[f"a {c} {n}" for c in COLORS for n in syns] for syns in CATEGORIES.values()]


def color_prompts() -> list[list[str]]:
    """Per colour: its synonyms on every category."""
    return [[f"a {c} {syns[0]}" for c in names for syns in CATEGORIES.values()] for _, names in COLORS.values()]


def test_views(count: int, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, list]:
    """One rendered view ``[count, 3, size, size]`` of each of the first ``count`` test objects."""
    world, rng = World("test"), random.Random(seed)
    images, objects = [], []
    for i in range(count):
        obj = world[i]
        cam = Camera(azimuth=rng.uniform(0, 360), elevation=rng.uniform(10, 40), distance=2.7)
        images.append(obj.render(cam, size=size).permute(2, 0, 1))
        objects.append(obj)
    return torch.stack(images), objects


@torch.no_grad()
def evaluate_clip(encoder: ClipEncoder, count: int = 500, group: int = 100) -> dict:
    images, objects = test_views(count, size=encoder.image_size)
    img = torch.cat([encoder.encode_image(images[i : i + 256]) for i in range(0, count, 256)])
    categories, colors = list(CATEGORIES), list(COLORS)
    cat_pred = (img @ _class_embeddings(encoder, category_prompts()).T).argmax(1)
    col_pred = (img @ _class_embeddings(encoder, color_prompts()).T).argmax(1)
    cat_true = torch.tensor([categories.index(o.labels.category) for o in objects])
    col_true = torch.tensor([colors.index(o.labels.colors[0]) for o in objects])
    top1 = top5 = 0
    groups = count // group
    for k in range(groups):
        sl = slice(k * group, (k + 1) * group)
        txt = encoder.encode_text([o.caption for o in objects[sl]])
        ranks = (txt @ img[sl].T).argsort(1, descending=True)
        correct = torch.arange(group)[:, None]
        top1 += (ranks[:, :1] == correct).any(1).sum().item()
        top5 += (ranks[:, :5] == correct).any(1).sum().item()
    per_category = {
        c: round((cat_pred[cat_true == i] == i).float().mean().item(), 4)
        for i, c in enumerate(categories)
        if (cat_true == i).any()
    }
    return {
        "test_objects": count,
        "category_accuracy": round((cat_pred == cat_true).float().mean().item(), 4),
        "color_accuracy": round((col_pred == col_true).float().mean().item(), 4),
        "retrieval_candidates": group,
        "retrieval_top1": round(top1 / (groups * group), 4),
        "retrieval_top5": round(top5 / (groups * group), 4),
        "per_category": per_category,
    }
