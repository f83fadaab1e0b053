"""Fidelity and speed of sampling solvers and guidance scales on the world's test prompts; JSON.

    bash tools/env.sh python benchmarks/solver_sweep.py --model cdm3d/weights/default \
        --out benchmarks/results/solver_sweep.json

Every setting runs the cascade's diffusion point stages (one sample per prompt: a
selector stage is left out) with the same solver and step count for both stages
(the coarse guidance scale optionally swept too), on the same prompts and seeds.
The baseline is Point-E's sampler, 64 Karras-Heun steps per stage. The report
names the fastest setting whose category fidelity (on the final cloud) stays
within ``--tolerance`` (2 points) of the baseline, and its speed-up in denoiser
evaluations and in measured seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from cdm3d.core import Cascade
from cdm3d.eval.classifier import PointClassifier
from cdm3d.eval.points_eval import fidelity, generate, prompts_per_category
from cdm3d.paths import POINT_CLASSIFIER

DEFAULT_SETTINGS = [
    ("karras-heun", 64),
    ("ddim", 50),
    ("dpm++", 30),
    ("dpm++", 20),
    ("dpm++", 12),
    ("dpm++", 8),
    ("unipc", 20),
    ("unipc", 12),
    ("unipc", 8),
    ("euler", 30),
    ("karras-heun", 16),
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("cdm3d/weights/default"))
    parser.add_argument("--classifier", type=Path, default=POINT_CLASSIFIER)
    parser.add_argument("--per-category", type=int, default=4)
    parser.add_argument("--batch", type=int, default=52)
    parser.add_argument("--settings", nargs="*", default=None, help="solver:steps pairs (default: a standard sweep)")
    parser.add_argument("--guidance", type=float, nargs="*", default=None, help="coarse guidance scales to sweep")
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument(
        "--split", default="test", choices=["test", "val"], help="whose prompts (val: choose settings off the test set)"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/solver_sweep.json"))
    args = parser.parse_args(argv)

    from cdm3d.stages import load_builtin

    load_builtin()
    cascade = Cascade.from_pretrained(args.model).producing("PointClouds", selectors=False)
    names = cascade.names
    classifier = PointClassifier.load(args.classifier)
    prompts = prompts_per_category(args.per_category, args.split)
    cond = cascade.encode([p[1] for p in prompts])
    categories, colors = [p[2] for p in prompts], [p[3] for p in prompts]
    settings = [(s.split(":")[0], int(s.split(":")[1])) for s in args.settings] if args.settings else DEFAULT_SETTINGS
    guidances = args.guidance or [cascade.stages[names[0]].config.sampling.guidance_scale]
    rows = []
    for scheduler, steps in settings:
        for guidance in guidances:
            sampling = {n: {"scheduler": scheduler, "steps": steps} for n in names}
            sampling[names[0]]["guidance_scale"] = guidance
            nfe = sum(cascade.stages[n].num_steps(sampling[n]) for n in names)
            start = time.perf_counter()
            outs = generate(cascade, cond, args.batch, seed=0, sampling=sampling)
            seconds = time.perf_counter() - start
            final = fidelity(classifier, outs[names[-1]], categories, colors)
            coarse = fidelity(classifier, outs[names[0]], categories, colors)
            row = {
                "scheduler": scheduler,
                "steps": steps,
                "coarse_guidance": guidance,
                "model_evaluations": nfe,
                "seconds_per_sample": round(seconds / len(prompts), 4),
                "category_fidelity": final["category_fidelity"],
                "color_fidelity": final["color_fidelity"],
                "coarse_category_fidelity": coarse["category_fidelity"],
                "coarse_color_fidelity": coarse["color_fidelity"],
            }
            print(json.dumps(row), flush=True)
            rows.append(row)
    base = rows[0]
    ok = [r for r in rows if r["category_fidelity"] >= base["category_fidelity"] - args.tolerance]
    fastest = min(ok, key=lambda r: r["seconds_per_sample"])
    report = {
        "model": str(args.model),
        "prompts": len(prompts),
        "split": args.split,
        "threads": torch.get_num_threads(),
        "baseline": base,
        "tolerance": args.tolerance,
        "fastest_within_tolerance": fastest,
        "speedup_seconds": round(base["seconds_per_sample"] / fastest["seconds_per_sample"], 2),
        "speedup_model_evaluations": round(base["model_evaluations"] / fastest["model_evaluations"], 2),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("baseline", "fastest_within_tolerance", "speedup_seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
