"""Evaluate a cdm3d CLIP on the world's test split (zero-shot category and colour, retrieval); write JSON.

    bash tools/env.sh python tools/eval_clip.py --clip cdm3d/weights/default/clip.safetensors \
        --out benchmarks/results/clip_small_eval.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, default=Path("cdm3d/weights/default/clip.safetensors"))
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from cdm3d.core import ClipEncoder
    from cdm3d.core.checkpoint import check_parent, write_text
    from cdm3d.errors import Cdm3dError, one_line
    from cdm3d.eval.clip_eval import evaluate_clip

    try:
        check_parent(args.out)
        report = evaluate_clip(ClipEncoder.load(args.clip), args.objects)
        report["weights"] = str(args.clip)
        write_text(args.out, json.dumps(report, indent=2))
    except Cdm3dError as err:
        print(one_line("eval_clip", err), file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in report.items() if k != "per_category"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
