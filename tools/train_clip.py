"""Train the small CLIP on the procedural world, then evaluate it.

bash tools/env.sh python tools/train_clip.py --config configs/clip/small.yaml --out runs/clip_small

A recipe with ``train.objective: text_prior`` trains the text prior of the CLIP it starts from instead
(configs/clip/small_text_prior.yaml; evaluation in benchmarks/results/clip_text_prior.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser, Cdm3dError, one_line


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/clip/small.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/clip_small"))
    parser.add_argument("--no-resume", action="store_true", help="start over even if a checkpoint exists")
    parser.add_argument(
        "--eval-json",
        type=Path,
        default=None,
        help="where the evaluation goes (default: benchmarks/results/clip_small.json, or clip_text_prior.json)",
    )
    args = parser.parse_args(argv)
    try:
        import torch

        from cdm3d.core.checkpoint import write_text
        from cdm3d.eval.clip_eval import evaluate_clip
        from cdm3d.training.clip_trainer import load_recipe, train_clip

        torch.set_num_threads(max(1, torch.get_num_threads()))
        recipe = load_recipe(args.config)
        encoder = train_clip(recipe, args.out, resume=not args.no_resume)
        prior = recipe.train.objective == "text_prior"
        report = evaluate_clip(encoder, recipe.eval.objects, text_prior=prior)
        if prior:
            report["image_tower"] = {
                k: v for k, v in evaluate_clip(encoder, recipe.eval.objects).items() if k != "per_category"
            }
        eval_json = args.eval_json or Path(f"benchmarks/results/clip_{'text_prior' if prior else 'small'}.json")
        train_time = json.loads((args.out / "train_time.json").read_text())
        report["training"] = {**train_time, "config": str(args.config), "device": "cpu (2 cores)"}
        eval_json.parent.mkdir(parents=True, exist_ok=True)
        write_text(eval_json, json.dumps(report, indent=2))
        print(json.dumps({k: v for k, v in report.items() if k != "per_category"}, indent=2))
    except Cdm3dError as err:
        print(one_line("train_clip", err), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
