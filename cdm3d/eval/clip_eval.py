"""Zero-shot category/colour accuracy and text-to-image retrieval of a CLIP on the world's test split."""

from __future__ import annotations

import itertools
import random

import torch

from cdm3d.core import ClipEncoder
from cdm3d.data.vocab import ATTRIBUTES, CATEGORIES, COLORS, _article
from cdm3d.data.world import World
from cdm3d.render import Camera


def _class_embeddings(encoder: ClipEncoder, prompts_per_class: list[list[str]]) -> torch.Tensor:
    out = []
    for prompts in prompts_per_class:
        emb = encoder.encode_text([_article(p) for p in prompts]).mean(0)
        out.append(emb / emb.norm())
    return torch.stack(out)


def attribute_phrases() -> list[str]:
    """Every attribute combination the world can caption ("", "tall ", "small thin ", ...): 27."""
    phrases = []
    for values in itertools.product(*[list(a) for a in ATTRIBUTES.values()]):
        words = [ATTRIBUTES[k][v][1][0] for k, v in zip(ATTRIBUTES, values) if v != "normal"]
        phrases.append("".join(w + " " for w in words))
    return phrases


def _variant_embeddings(encoder: ClipEncoder, classes: list[str], prompts) -> torch.Tensor:
    """``[C, V, D]``: per class and attribute variant, the mean embedding of ``prompts(class, variant)``."""
    out = []
    for cls in classes:
        row = []
        for phrase in attribute_phrases():
            emb = encoder.encode_text([_article(p) for p in prompts(cls, phrase)]).mean(0)
            row.append(emb / emb.norm())
        out.append(torch.stack(row))
    return torch.stack(out)


def variant_tables(encoder: ClipEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """The class tables of :func:`attribute_aware_predict`: ``[13, 27, D]`` categories, ``[12, 27, D]`` colours."""
    cats = _variant_embeddings(encoder, list(CATEGORIES), lambda n, a: [f"a {a}{c} {n}" for c in COLORS])
    cols = _variant_embeddings(encoder, list(COLORS), lambda c, a: [f"a {a}{c} {n}" for n in CATEGORIES])
    return cats, cols


def attribute_aware_predict(
    encoder: ClipEncoder, img: torch.Tensor, tables: tuple[torch.Tensor, torch.Tensor] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot category and colour: each class scores its best-matching attribute variant.

    A class's prompts are every caption shape the world gives it ("a small tall red mug"):
    for a category, each of the 27 attribute variants is ensembled over colours; for a
    colour, over categories; the class score is the maximum over its variants. Pass
    ``tables`` (:func:`variant_tables`) to reuse them across calls.
    """
    cats, cols = tables or variant_tables(encoder)
    cat = torch.einsum("bd,cvd->bcv", img, cats).amax(2).argmax(1)
    col = torch.einsum("bd,cvd->bcv", img, cols).amax(2).argmax(1)
    return cat, col


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
def evaluate_clip(encoder: ClipEncoder, count: int = 500, group: int = 100, text_prior: bool = False) -> dict:
    """Zero-shot accuracy and retrieval of ``encoder``'s image embeddings of test views, or with
    ``text_prior`` of its text prior's predictions (:meth:`ClipEncoder.encode_image_as_text`)."""
    images, objects = test_views(count, size=encoder.image_size)
    embed = encoder.encode_image_as_text if text_prior else encoder.encode_image
    img = torch.cat([embed(images[i : i + 256]) for i in range(0, count, 256)])
    categories, colors = list(CATEGORIES), list(COLORS)
    cat_pred, col_pred = attribute_aware_predict(encoder, img)
    blind_cat = (img @ _class_embeddings(encoder, category_prompts()).T).argmax(1)
    blind_col = (img @ _class_embeddings(encoder, color_prompts()).T).argmax(1)
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
        "embeddings": "text prior" if text_prior else "image tower",
        "test_objects": count,
        "zero_shot_protocol": "attribute-aware: max over 27 attribute variants, each ensembled over colours "
        "(categories) or categories (colours)",
        "category_accuracy": round((cat_pred == cat_true).float().mean().item(), 4),
        "color_accuracy": round((col_pred == col_true).float().mean().item(), 4),
        "category_accuracy_attribute_blind": round((blind_cat == cat_true).float().mean().item(), 4),
        "color_accuracy_attribute_blind": round((blind_col == col_true).float().mean().item(), 4),
        "retrieval_candidates": group,
        "retrieval_top1": round(top1 / (groups * group), 4),
        "retrieval_top5": round(top5 / (groups * group), 4),
        "per_category": per_category,
    }
