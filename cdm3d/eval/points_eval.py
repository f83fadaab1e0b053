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
from pathlib import Path

import torch

from cdm3d.core import Cascade, Conditioning
from cdm3d.data.vocab import CATEGORIES, COLORS, SECONDARY_PART
from cdm3d.data.world import World
from cdm3d.eval.classifier import PointClassifier
from cdm3d.eval.point_metrics import chamfer, distribution_metrics
from cdm3d.types import PointClouds


def prompts_per_category(
    per_category: int, split: str = "test", two_colour: bool = False
) -> list[tuple[int, str, str, str]]:
    """``(index, caption, category, primary colour)`` of a split's objects (the test split unless told),
    ``per_category`` of each category; with ``two_colour``, of two-colour objects only, ``per_category`` of each
    category that has a part for a second colour."""
    world, count, out, i = World(split), defaultdict(int), [], 0
    categories = SECONDARY_PART if two_colour else CATEGORIES
    while min(count[c] for c in categories) < per_category:
        labels = world.labels(i)
        if count[labels.category] < per_category and (not two_colour or len(labels.colors) > 1):
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


def seconds_per_sample(cascade: Cascade, prompt: str, repeats: int = 5, sampling: dict | None = None) -> dict:
    cond = cascade.encode([prompt])
    cascade.run(cond, seed=0, progress=False, sampling=sampling)  # warm-up
    totals, per_stage = [], defaultdict(list)
    for r in range(repeats):
        start = time.perf_counter()
        out = cascade.run(cond, seed=r, progress=False, sampling=sampling)
        totals.append(time.perf_counter() - start)
        for name, t in out.timings.items():
            per_stage[name].append(t)
    return {
        "median_s": round(statistics.median(totals), 3),
        "per_stage_median_s": {k: round(statistics.median(v), 3) for k, v in per_stage.items()},
        "repeats": repeats,
        "threads": torch.get_num_threads(),
    }


def subsample(x: torch.Tensor, n: int = 2048) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    idx = torch.rand(x.shape[0], x.shape[1], generator=g).argsort(1)[:, :n]
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def evaluate_points(
    model: str | Path,
    classifier_path: str | Path,
    per_category: int = 16,
    batch: int = 16,
    upsampler_noaug: str | Path | None = None,
    speed: bool = True,
    overrides: dict | None = None,
    guidance: float | None = None,
) -> dict:
    """Every point-stage figure of a cascade folder on the world's test prompts, as a JSON-ready dict.

    Category and colour fidelity (the world classifier) of the coarse and final clouds,
    per category; 1-NNA, COV and MMD (CD) per category against test clouds of 2048
    points; the upsampler against nearest-neighbour upsampling of ground-truth coarse
    clouds; optionally the conditioning-augmentation ablation on generated coarse
    clouds; with a low-noise expert in the coarse stage, fidelity without it; with a selector
    stage, fidelity with one candidate per prompt; and the batch-1 seconds per sample.
    ``overrides`` (solver, steps) apply to every diffusion stage, ``guidance`` to the first.
    """
    from cdm3d.core import DiffusionStage, SelectorStage, load_stage

    torch.manual_seed(0)
    cascade = Cascade.from_pretrained(model).producing("PointClouds")
    names = cascade.names
    diffusion = [n for n in names if isinstance(cascade.stages[n], DiffusionStage)]
    selectors = [n for n in names if isinstance(cascade.stages[n], SelectorStage)]
    sampling: dict[str, dict] = {n: dict(overrides or {}) for n in diffusion}
    if guidance is not None:
        sampling[names[0]]["guidance_scale"] = guidance
    classifier = PointClassifier.load(classifier_path)
    prompts = prompts_per_category(per_category)
    captions = [p[1] for p in prompts]
    categories = [p[2] for p in prompts]
    colors = [p[3] for p in prompts]
    cond = cascade.encode(captions)
    start = time.time()
    outs = generate(cascade, cond, batch, seed=0, sampling=sampling)
    # The diffusion stages: the coarse one and the upsampler; the final clouds are the last stage's (a selector's
    # choice among candidates when the cascade has one).
    coarse_name, up_name, final_name = names[0], diffusion[-1], names[-1]
    report: dict = {
        "model": str(model),
        "prompts": len(prompts),
        "sampling": {n: cascade.stages[n].resolve_sampling(sampling.get(n)).model_dump() for n in names},
    }
    report["coarse"] = fidelity(classifier, outs[coarse_name], categories, colors)
    report["final"] = fidelity(classifier, outs[final_name], categories, colors)
    # PointFlow compares 2048-point clouds: subsample the generated ones, sample 2048 ground-truth points.
    ref = torch.stack([ground_truth(p[0], 2048) for p in prompts])
    report["final"]["distribution_cd"] = per_category_distribution(subsample(outs[final_name].coords), ref, categories)
    # The ablations below compare one sample per prompt (no selection), so their figures isolate what they test.
    single = {**sampling, **{n: {"candidates": 1} for n in selectors}}
    plain, one = outs, {k: report[k] for k in ("coarse", "final")}
    if selectors:
        plain = generate(cascade, cond, batch, seed=0, sampling=single)
        one = {
            k: fidelity(classifier, plain[n], categories, colors)
            for k, n in (("coarse", coarse_name), ("final", final_name))
        }
        one["final"]["distribution_cd"] = per_category_distribution(
            subsample(plain[final_name].coords), ref, categories
        )["mean_over_categories"]
        report["selection_ablation"] = {
            "stage": selectors[0],
            "candidates": cascade.stages[selectors[0]].candidates(),
            "with_selection": {k: report[k]["category_fidelity"] for k in ("coarse", "final")},
            "without_selection": one,
        }
    up_sampling = sampling[up_name]
    up_only = Cascade([(n, cascade.stages[n]) for n in (coarse_name, up_name)], clip=cascade.clip)
    report["upsampler_vs_nearest_neighbour"] = upsampler_vs_nearest(
        up_only, prompts[:: max(1, len(prompts) // 64)], batch, seed=1, sampling=up_sampling
    )
    if upsampler_noaug is not None and len(diffusion) > 1:
        noaug = load_stage(upsampler_noaug)
        ablation = {}
        for label, stage in (("with_augmentation", cascade.stages[up_name]), ("without_augmentation", noaug)):
            c2 = Cascade([(up_name, stage)], clip=cascade.clip)
            settings = dict(up_sampling)
            if label == "without_augmentation":
                settings["aug_level"] = 0.0
            dense = generate(c2, cond, batch, seed=0, init=plain[coarse_name], sampling={up_name: settings})[up_name]
            row = fidelity(classifier, dense, categories, colors)
            row.pop("category_fidelity_per_category")
            row.update(per_category_distribution(subsample(dense.coords), ref, categories)["mean_over_categories"])
            row["aug_level"] = stage.resolve_sampling(settings).aug_level
            ablation[label] = row
        report["augmentation_ablation_on_generated_coarse"] = ablation
    coarse_stage = cascade.stages[coarse_name]
    if getattr(coarse_stage, "expert", None) is not None:
        # The low-noise expert's ablation: the same prompts and seeds with the coarse stage's own network throughout
        # (impossible for a stage trained above the switch only); one sample per prompt on both sides.
        ablation = {
            "switch_timestep": coarse_stage.expert_switch,
            "with_expert": {k: one[k]["category_fidelity"] for k in ("coarse", "final")},
            "without_expert": None,
        }
        if coarse_stage.lowest_timestep > 0:
            ablation["why"] = "the coarse stage is trained above the switch only and cannot sample without its expert"
        else:
            no_expert = {**single, coarse_name: {**sampling[coarse_name], "expert": False}}
            no_expert_outs = generate(cascade, cond, batch, seed=0, sampling=no_expert)
            ablation["without_expert"] = {
                k: fidelity(classifier, no_expert_outs[n], categories, colors)["category_fidelity"]
                for k, n in (("coarse", coarse_name), ("final", final_name))
            }
        report["expert_ablation"] = ablation
    report["generation_seconds"] = round(time.time() - start, 1)
    if speed:
        report["speed_cpu_batch1"] = seconds_per_sample(cascade, captions[0], sampling=sampling)
    return report
