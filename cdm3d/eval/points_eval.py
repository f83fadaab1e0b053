"""Evaluation of the point stages on the world's test prompts.

* prompt fidelity: the point classifier's category / colour agree with the prompt's labels;
* distribution: 1-NNA, COV and MMD (Chamfer) between generated and ground-truth test
  clouds, per category, averaged over categories;
* the upsampler against nearest-neighbour upsampling, on ground-truth coarse clouds;
* speed: seconds per sample at batch 1.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch

from cdm3d.core import Cascade, Conditioning
from cdm3d.data.vocab import CATEGORIES, COLORS
from cdm3d.data.world import World
from cdm3d.eval.classifier import PointClassifier
from cdm3d.eval.point_metrics import chamfer, distribution_metrics
from cdm3d.types import PointClouds


def prompts_per_category(per_category: int) -> list[tuple[int, str, str, str]]:
    """``(index, caption, category, primary colour)`` of test objects, ``per_category`` of each category."""
    world, count, out, i = World("test"), defaultdict(int), [], 0
    while min(count[c] for c in CATEGORIES) < per_category:
        labels = world.labels(i)
        if count[labels.category] < per_category:
            count[labels.category] += 1
            out.append((i, world.caption(i), labels.category, labels.colors[0]))
        i += 1
    return out


def ground_truth(index: int, points: int) -> torch.Tensor:
    xyz, _ = World("test")[index].points(points, seed=12345)
    return torch.from_numpy(xyz)


def fidelity(classifier: PointClassifier, clouds: PointClouds, categories: list[str], colors: list[str]) -> dict:
    cat_pred, col_pred = classifier.predict(clouds.to_tensor())
    cats, cols = list(CATEGORIES), list(COLORS)
    cat_ok = (cat_pred == torch.tensor([cats.index(c) for c in categories])).float()
    col_ok = (col_pred == torch.tensor([cols.index(c) for c in colors])).float()
    per_category = {c: round(cat_ok[[i for i, x in enumerate(categories) if x == c]].mean().item(), 4) for c in cats}
    return {
        "category_fidelity": round(cat_ok.mean().item(), 4),
        "color_fidelity": round(col_ok.mean().item(), 4),
        "category_fidelity_per_category": per_category,
    }


def generate(
    cascade: Cascade, cond: Conditioning, batch: int, seed: int, init: PointClouds | None = None, **run_kwargs
) -> dict[str, PointClouds]:
    """Run ``cascade`` over ``cond`` in batches (``init``, if given, is sliced along)."""
    outs: dict[str, list[PointClouds]] = defaultdict(list)
    for start in range(0, cond.batch_size, batch):
        sl = slice(start, start + batch)
        sub_init = None if init is None else init[sl]
        out = cascade.run(cond.select(sl), seed=seed + start, progress=False, init=sub_init, **run_kwargs)
        for name, value in out.outputs.items():
            outs[name].append(value)
    return {
        name: PointClouds(torch.cat([v.coords for v in vs]), torch.cat([v.colors for v in vs]))
        for name, vs in outs.items()
    }


def per_category_distribution(gen: torch.Tensor, ref: torch.Tensor, categories: list[str]) -> dict:
    rows = {}
    for c in CATEGORIES:
        idx = [i for i, x in enumerate(categories) if x == c]
        rows[c] = distribution_metrics(gen[idx], ref[idx], "cd")
    mean = {k: round(statistics.mean(r[k] for r in rows.values()), 5) for k in next(iter(rows.values()))}
    return {
        "mean_over_categories": mean,
        "per_category": {c: {k: round(v, 5) for k, v in r.items()} for c, r in rows.items()},
    }


def nearest_neighbour_upsample(coarse: torch.Tensor, total: int) -> torch.Tensor:
    """Each coarse point repeated until there are ``total`` points (the baseline)."""
    reps = -(-total // coarse.shape[1])
    return coarse.repeat_interleave(reps, dim=1)[:, :total]


def upsampler_vs_nearest(cascade: Cascade, prompts, batch: int, seed: int, sampling: dict | None = None) -> dict:
    """CD to the ground-truth dense cloud: the upsampler on ground-truth coarse clouds vs NN upsampling."""
    up = cascade.stages[cascade.names[1]]
    coarse_n, total = up.config.coarse_points, up.config.coarse_points + up.config.num_points
    world = World("test")
    dense, coarse = [], []
    for index, *_ in prompts:
        xyz, rgb = world[index].points(total, seed=777)
        dense.append(torch.from_numpy(xyz))
        coarse.append(PointClouds(torch.from_numpy(xyz[:coarse_n])[None], torch.from_numpy(rgb[:coarse_n])[None]))
    cond = cascade.encode([p[1] for p in prompts])
    init = PointClouds(torch.cat([c.coords for c in coarse]), torch.cat([c.colors for c in coarse]))
    ups = []
    for start in range(0, len(prompts), batch):
        sl = slice(start, start + batch)
        out = cascade.run(
            cond.select(sl),
            seed=seed + start,
            start_at=cascade.names[1],
            init=init[sl],
            sampling={cascade.names[1]: sampling or {}},
            progress=False,
        )
        ups.append(out.final.coords)
    gt = torch.stack(dense)
    cd_up = chamfer(torch.cat(ups), gt)
    cd_nn = chamfer(nearest_neighbour_upsample(init.coords, total), gt)
    return {
        "cd_upsampler": round(cd_up.mean().item(), 6),
        "cd_nearest_neighbour": round(cd_nn.mean().item(), 6),
        "upsampler_wins_fraction": round((cd_up < cd_nn).float().mean().item(), 4),
    }


def seconds_per_sample(cascade: Cascade, prompt: str, repeats: int = 5) -> dict:
    cond = cascade.encode([prompt])
    cascade.run(cond, seed=0, progress=False)  # warm-up
    totals, per_stage = [], defaultdict(list)
    for r in range(repeats):
        start = time.perf_counter()
        out = cascade.run(cond, seed=r, progress=False)
        totals.append(time.perf_counter() - start)
        for name, t in out.timings.items():
            per_stage[name].append(t)
    return {
        "median_s": round(statistics.median(totals), 3),
        "per_stage_median_s": {k: round(statistics.median(v), 3) for k, v in per_stage.items()},
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }
