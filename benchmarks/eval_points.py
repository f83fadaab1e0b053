"""Evaluate the point stages of a cascade on the world's test prompts; write JSON.

    bash tools/env.sh python benchmarks/eval_points.py --model cdm3d/weights/default \
        --classifier runs/classifier.safetensors --out benchmarks/results/points_eval.json

Add --upsampler-noaug PATH to report the conditioning-augmentation ablation (an upsampler
trained the same number of steps without augmentation, run on the same generated coarse clouds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from cdm3d.core import Cascade, load_stage
from cdm3d.eval.classifier import PointClassifier
from cdm3d.eval.points_eval import (
    fidelity,
    generate,
    ground_truth,
    per_category_distribution,
    prompts_per_category,
    seconds_per_sample,
    upsampler_vs_nearest,
)


def subsample(x: torch.Tensor, n: int = 2048) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    idx = torch.rand(x.shape[0], x.shape[1], generator=g).argsort(1)[:, :n]
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("cdm3d/weights/default"))
    parser.add_argument("--classifier", type=Path, required=True)
    parser.add_argument("--per-category", type=int, default=16)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--upsampler-noaug", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/points_eval.json"))
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    torch.manual_seed(0)
    full = Cascade.from_pretrained(args.model)
    names = [n for n, s in full.stages.items() if s.produces == "PointClouds"]
    cascade = Cascade([(n, full.stages[n]) for n in names], clip=full.clip)
    classifier = PointClassifier.load(args.classifier)
    prompts = prompts_per_category(args.per_category)
    captions = [p[1] for p in prompts]
    categories = [p[2] for p in prompts]
    colors = [p[3] for p in prompts]
    cond = cascade.encode(captions)
    start = time.time()
    outs = generate(cascade, cond, args.batch, seed=0)
    coarse_name, up_name = names[0], names[-1]
    report: dict = {
        "model": str(args.model),
        "prompts": len(prompts),
        "sampling": {n: cascade.stages[n].config.sampling.model_dump() for n in names},
    }
    report["coarse"] = fidelity(classifier, outs[coarse_name], categories, colors)
    report["final"] = fidelity(classifier, outs[up_name], categories, colors)
    # PointFlow compares 2048-point clouds: subsample the generated ones, sample 2048 ground-truth points.
    ref = torch.stack([ground_truth(p[0], 2048) for p in prompts])
    report["final"]["distribution_cd"] = per_category_distribution(subsample(outs[up_name].coords), ref, categories)
    report["upsampler_vs_nearest_neighbour"] = upsampler_vs_nearest(
        cascade, prompts[:: max(1, len(prompts) // 64)], args.batch, seed=1
    )
    if args.upsampler_noaug is not None and len(names) > 1:
        noaug = load_stage(args.upsampler_noaug)
        ablation = {}
        for label, stage in (("with_augmentation", cascade.stages[up_name]), ("without_augmentation", noaug)):
            c2 = Cascade([(up_name, stage)], clip=cascade.clip)
            level = 0.0 if label == "without_augmentation" else None
            sampling = {up_name: {"aug_level": level}} if level is not None else None
            dense = generate(c2, cond, args.batch, seed=0, init=outs[coarse_name], sampling=sampling)[up_name]
            row = fidelity(classifier, dense, categories, colors)
            row.pop("category_fidelity_per_category")
            row.update(per_category_distribution(subsample(dense.coords), ref, categories)["mean_over_categories"])
            ablation[label] = row
        report["augmentation_ablation_on_generated_coarse"] = ablation
    report["generation_seconds"] = round(time.time() - start, 1)
    if not args.skip_speed:
        report["speed_cpu_batch1"] = seconds_per_sample(cascade, captions[0])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("sampling",)}, indent=1)[:4000])


if __name__ == "__main__":
    main()
