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
from dataclasses import dataclass
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


@dataclass
class _Run:
    """What every figure of one point-stage evaluation shares: the point stages, their sampling settings, the
    test prompts with their labels and conditioning, and the ground-truth clouds."""

    cascade: Cascade
    sampling: dict[str, dict]
    classifier: PointClassifier
    prompts: list[tuple[int, str, str, str]]
    cond: Conditioning
    batch: int
    ref: torch.Tensor  # [P, 2048, 3] ground-truth test clouds

    @property
    def names(self) -> list[str]:
        return self.cascade.names

    def stages_of(self, kind: type) -> list[str]:
        return [n for n in self.names if isinstance(self.cascade.stages[n], kind)]

    def fidelity(self, clouds: PointClouds) -> dict:
        return fidelity(self.classifier, clouds, [p[2] for p in self.prompts], [p[3] for p in self.prompts])

    def distribution(self, clouds: PointClouds) -> dict:
        return per_category_distribution(subsample(clouds.coords), self.ref, [p[2] for p in self.prompts])

    def generate(self, sampling: dict, cascade: Cascade | None = None, init: PointClouds | None = None) -> dict:
        return generate(cascade or self.cascade, self.cond, self.batch, seed=0, init=init, sampling=sampling)


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
    from cdm3d.core import DiffusionStage, SelectorStage

    torch.manual_seed(0)
    cascade = Cascade.from_pretrained(model).producing("PointClouds")
    names = cascade.names
    diffusion = [n for n in names if isinstance(cascade.stages[n], DiffusionStage)]
    sampling: dict[str, dict] = {n: dict(overrides or {}) for n in diffusion}
    if guidance is not None:
        sampling[names[0]]["guidance_scale"] = guidance
    prompts = prompts_per_category(per_category)
    cond = cascade.encode([p[1] for p in prompts])
    start = time.time()
    # PointFlow compares 2048-point clouds: generated ones are subsampled, 2048 ground-truth points sampled.
    ref = torch.stack([ground_truth(p[0], 2048) for p in prompts])
    run = _Run(cascade, sampling, PointClassifier.load(classifier_path), prompts, cond, batch, ref)
    outs = run.generate(sampling)
    # The final clouds are the last stage's (a selector's choice among candidates when the cascade has one).
    report: dict = {
        "model": str(model),
        "prompts": len(prompts),
        "sampling": {n: cascade.stages[n].resolve_sampling(sampling.get(n)).model_dump() for n in names},
        "coarse": run.fidelity(outs[names[0]]),
        "final": run.fidelity(outs[names[-1]]),
    }
    report["final"]["distribution_cd"] = run.distribution(outs[names[-1]])
    # The ablations below compare one sample per prompt (no selection), so their figures isolate what they test.
    plain, one = outs, {k: report[k] for k in ("coarse", "final")}
    if run.stages_of(SelectorStage):
        plain, report["selection_ablation"] = _selection_ablation(run, report)
        one = report["selection_ablation"]["without_selection"]
    up_name = run.stages_of(DiffusionStage)[-1]
    up_only = Cascade([(n, cascade.stages[n]) for n in (names[0], up_name)], clip=cascade.clip)
    report["upsampler_vs_nearest_neighbour"] = upsampler_vs_nearest(
        up_only, prompts[:: max(1, len(prompts) // 64)], batch, seed=1, sampling=sampling[up_name]
    )
    if upsampler_noaug is not None and up_name != names[0]:
        report["augmentation_ablation_on_generated_coarse"] = _augmentation_ablation(run, upsampler_noaug, plain)
    if getattr(cascade.stages[names[0]], "expert", None) is not None:
        report["expert_ablation"] = _expert_ablation(run, one)
    report["generation_seconds"] = round(time.time() - start, 1)
    if speed:
        report["speed_cpu_batch1"] = seconds_per_sample(cascade, prompts[0][1], sampling=sampling)
    return report


def _single(run: _Run) -> dict[str, dict]:
    """The run's sampling settings with one candidate per prompt at every selector."""
    from cdm3d.core import SelectorStage

    return {**run.sampling, **{n: {"candidates": 1} for n in run.stages_of(SelectorStage)}}


def _selection_ablation(run: _Run, report: dict) -> tuple[dict, dict]:
    """The outputs with one sample per prompt, and the fidelity with and without the selector's choice."""
    from cdm3d.core import SelectorStage

    plain = run.generate(_single(run))
    coarse, final = run.names[0], run.names[-1]
    one = {k: run.fidelity(plain[n]) for k, n in (("coarse", coarse), ("final", final))}
    one["final"]["distribution_cd"] = run.distribution(plain[final])["mean_over_categories"]
    selector = run.stages_of(SelectorStage)[0]
    return plain, {
        "stage": selector,
        "candidates": run.cascade.stages[selector].candidates(),
        "with_selection": {k: report[k]["category_fidelity"] for k in ("coarse", "final")},
        "without_selection": one,
    }


def _augmentation_ablation(run: _Run, upsampler_noaug: str | Path, plain: dict) -> dict:
    """The upsampler and its no-augmentation twin on the same generated coarse clouds (one per prompt)."""
    from cdm3d.core import DiffusionStage, load_stage

    up_name = run.stages_of(DiffusionStage)[-1]
    ablation = {}
    stages = (("with_augmentation", run.cascade.stages[up_name]), ("without_augmentation", load_stage(upsampler_noaug)))
    for label, stage in stages:
        settings = dict(run.sampling[up_name])
        if label == "without_augmentation":
            settings["aug_level"] = 0.0
        one_stage = Cascade([(up_name, stage)], clip=run.cascade.clip)
        dense = run.generate({up_name: settings}, one_stage, init=plain[run.names[0]])[up_name]
        row = run.fidelity(dense)
        row.pop("category_fidelity_per_category")
        row.update(run.distribution(dense)["mean_over_categories"])
        row["aug_level"] = stage.resolve_sampling(settings).aug_level
        ablation[label] = row
    return ablation


def _expert_ablation(run: _Run, one: dict) -> dict:
    """The low-noise expert's ablation: the same prompts and seeds with the coarse stage's own network throughout
    (impossible for a stage trained above the switch only); one sample per prompt on both sides."""
    coarse_name, final_name = run.names[0], run.names[-1]
    coarse = run.cascade.stages[coarse_name]
    ablation = {
        "switch_timestep": coarse.expert_switch,
        "with_expert": {k: one[k]["category_fidelity"] for k in ("coarse", "final")},
        "without_expert": None,
    }
    if coarse.lowest_timestep > 0:
        ablation["why"] = "the coarse stage is trained above the switch only and cannot sample without its expert"
        return ablation
    outs = run.generate({**_single(run), coarse_name: {**run.sampling[coarse_name], "expert": False}})
    ablation["without_expert"] = {
        k: run.fidelity(outs[n])["category_fidelity"] for k, n in (("coarse", coarse_name), ("final", final_name))
    }
    return ablation
