"""Fidelity of the upsampler's output per sampling-time conditioning-augmentation level; JSON.

    bash tools/env.sh python benchmarks/upsample_aug_sweep.py --model cdm3d/weights/default \
        --levels 0 0.05 0.1 0.2 --split val --out benchmarks/results/upsample_aug_sweep_val.json

The coarse clouds are generated once (the cascade's own settings) and every level
upsamples the same clouds with the same seeds, so the rows differ by the level
only. Use ``--split val`` to choose the default level off the test prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdm3d.core import Cascade
from cdm3d.core.checkpoint import atomic_path, check_parent
from cdm3d.eval.classifier import PointClassifier
from cdm3d.eval.points_eval import fidelity, generate, prompts_per_category
from cdm3d.paths import POINT_CLASSIFIER


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("cdm3d/weights/default"))
    parser.add_argument("--classifier", type=Path, default=POINT_CLASSIFIER)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2])
    parser.add_argument("--per-category", type=int, default=8)
    parser.add_argument("--batch", type=int, default=52)
    parser.add_argument("--split", default="val", choices=["test", "val"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/upsample_aug_sweep_val.json"))
    args = parser.parse_args(argv)
    check_parent(args.out)

    from cdm3d.stages import load_builtin

    load_builtin()
    cascade = Cascade.from_pretrained(args.model).producing("PointClouds", selectors=False)
    coarse_name, up_name = cascade.names[0], cascade.names[-1]
    classifier = PointClassifier.load(args.classifier)
    prompts = prompts_per_category(args.per_category, args.split)
    cond = cascade.encode([p[1] for p in prompts])
    categories, colors = [p[2] for p in prompts], [p[3] for p in prompts]
    first = Cascade([(coarse_name, cascade.stages[coarse_name])], clip=cascade.clip)
    coarse = generate(first, cond, args.batch, seed=0)[coarse_name]
    up = Cascade([(up_name, cascade.stages[up_name])], clip=cascade.clip)
    rows = []
    for level in args.levels:
        dense = generate(up, cond, args.batch, seed=0, init=coarse, sampling={up_name: {"aug_level": level}})[up_name]
        row = {"aug_level": level, **fidelity(classifier, dense, categories, colors)}
        row.pop("category_fidelity_per_category")
        print(json.dumps(row), flush=True)
        rows.append(row)
    coarse_row = fidelity(classifier, coarse, categories, colors)
    coarse_row.pop("category_fidelity_per_category")
    report = {
        "model": str(args.model),
        "split": args.split,
        "prompts": len(prompts),
        "coarse": coarse_row,
        "rows": rows,
    }
    with atomic_path(args.out) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
