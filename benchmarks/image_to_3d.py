"""Image -> 3D fidelity on renders of the world's objects, with the ablations of the CLIP's options; JSON.

    bash tools/env.sh python benchmarks/image_to_3d.py --out benchmarks/results/image_to_3d.json

Conditions the default cascade's point stages on default-camera renders of the test prompts' own objects
(the renders of ``cdm3d eval --images``) and reports the point classifier's category and colour fidelity of
the final clouds as ``ImageTo3D`` makes them, and without the CLIP's text prior and without reframing.
``--split val`` for choices made off the test prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdm3d.core.checkpoint import check_parent, write_text
from cdm3d.errors import ArgumentParser, Cdm3dError, InputError, one_line
from cdm3d.paths import DEFAULT_MODEL, POINT_CLASSIFIER


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the 3D cascade folder")
    parser.add_argument("--classifier", type=Path, default=POINT_CLASSIFIER)
    parser.add_argument("--per-category", type=int, default=8)
    parser.add_argument("--batch", type=int, default=52)
    parser.add_argument("--split", choices=["val", "test"], default="test")
    parser.add_argument("--no-speed", action="store_true", help="skip the batch-1 timing")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/image_to_3d.json"))
    args = parser.parse_args(argv)
    try:
        if args.per_category < 1 or args.batch < 1:
            raise InputError("--per-category and --batch must be at least 1")
        check_parent(args.out)
        from cdm3d.eval.images_eval import evaluate_image_to_3d
        from cdm3d.stages import load_builtin

        load_builtin()
        report = evaluate_image_to_3d(
            args.model, args.classifier, args.per_category, args.batch, args.split, speed=not args.no_speed
        )
        write_text(args.out, json.dumps(report, indent=2))
    except Cdm3dError as err:
        print(one_line("image_to_3d", err), file=sys.stderr)
        return 2
    rows = {k: v["category_fidelity"] for k, v in report.items() if isinstance(v, dict) and "category_fidelity" in v}
    print(json.dumps({"category_fidelity": rows, "seconds_per_image_batch1": report.get("seconds_per_image_batch1")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
