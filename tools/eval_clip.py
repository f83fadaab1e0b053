"""Evaluate a cdm3d CLIP (or its text prior) on the world's test split: zero-shot category and colour,
text-image retrieval; write JSON.

    bash tools/env.sh python tools/eval_clip.py --clip runs/clip/clip/clip.safetensors \
        --out benchmarks/results/clip_small.json
    bash tools/env.sh python tools/eval_clip.py --clip cdm3d/weights/default/clip.safetensors \
        --text-prior runs/clip/text_prior/text_prior.safetensors --out benchmarks/results/clip_text_prior.json
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
    parser.add_argument(
        "--text-prior", type=Path, default=None, help="evaluate this text prior of the CLIP (and its image tower)"
    )
    parser.add_argument("--objects", type=int, default=500)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from cdm3d.core import ClipEncoder
    from cdm3d.core.checkpoint import check_parent, write_text
    from cdm3d.errors import Cdm3dError, one_line
    from cdm3d.eval.clip_eval import evaluate_clip

    try:
        check_parent(args.out)
        encoder = ClipEncoder.load(args.clip)
        if args.text_prior is None:
            report = evaluate_clip(encoder, args.objects)
        else:
            encoder.load_text_prior(args.text_prior)
            report = evaluate_clip(encoder, args.objects, text_prior=True)
            tower = evaluate_clip(encoder, args.objects)
            report["image_tower"] = {k: v for k, v in tower.items() if k != "per_category"}
            report["text_prior"] = str(args.text_prior)
        report["weights"] = str(args.clip)
        command = " ".join(["python tools/eval_clip.py", *(sys.argv[1:] if argv is None else argv)])
        write_text(args.out, json.dumps({"command": command, **report}, indent=2))
    except Cdm3dError as err:
        print(one_line("eval_clip", err), file=sys.stderr)
        return 2
    print(json.dumps({k: v for k, v in report.items() if k != "per_category"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
