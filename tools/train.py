"""Train a stage, or the CLIP, with cdm3d's trainer.

    bash tools/env.sh python tools/train.py --config configs/train/points/coarse.yaml --out runs/coarse
    bash tools/env.sh python tools/train.py --config ... --out runs/coarse --resume
    torchrun --nproc-per-node 8 tools/train.py --config ... --out runs/coarse --device cuda

Overrides: --set train.steps=200 --set train.batch_size=16 (YAML values).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from cdm3d.errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe field")
    parser.add_argument(
        "--dry-run", action="store_true", help="check the recipe (stage and data sections), print it resolved, and exit"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--time-limit", type=float, default=None, help="stop (with a checkpoint) after this many seconds"
    )
    parser.add_argument(
        "--fit-schedule",
        action="store_true",
        help="fit the learning-rate schedule to --time-limit: the cosine decay ends (and training stops) at the "
        "step the measured speed reaches in time; that step is printed, to set as train.steps when repeating",
    )
    parser.add_argument(
        "--stop-at-step",
        type=int,
        default=None,
        help="stop (with a checkpoint) after this step; the schedule still "
        "follows train.steps, so a later --resume continues the same run",
    )
    args = parser.parse_args(argv)

    from cdm3d.errors import Cdm3dError, one_line

    try:
        from cdm3d.stages import load_builtin

        load_builtin()
        from cdm3d.training.recipe import check_recipe
        from cdm3d.training.trainer import Trainer, init_distributed, load_recipe

        overrides = {}
        for item in args.set:
            key, sep, value = item.partition("=")
            if not sep:
                raise Cdm3dError(f"--set {item!r} must look like key=value")
            overrides[key] = yaml.safe_load(value)
        recipe = load_recipe(args.config, overrides)
        if args.dry_run:
            check_recipe(recipe)
            print(recipe.model_dump_json(indent=2))
            return 0
        device = init_distributed(args.device)
        trainer = Trainer(recipe, args.out, device)
        losses = trainer.fit(
            resume=args.resume,
            progress=not args.no_progress,
            time_limit=args.time_limit,
            until=args.stop_at_step,
            fit_schedule=args.fit_schedule,
        )
        if losses and trainer.rank == 0:
            print(f"step {trainer.step}: last loss {losses[-1]:.4f}; weights in {args.out / trainer.weights_file}")
            if args.fit_schedule:
                print(f"schedule fitted to the time limit: it ends at step {trainer.lr_horizon} (train.steps)")
    except Cdm3dError as err:
        print(one_line("train", err), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
