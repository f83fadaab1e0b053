"""Measure a fidelity classifier of the evaluation on held-out world objects (the "val" split); write JSON.

    bash tools/env.sh python tools/eval_classifier.py --kind points --out benchmarks/results/point_classifier.json
    bash tools/env.sh python tools/eval_classifier.py --kind images --out benchmarks/results/image_classifier.json

Train one with tools/train.py and configs/train/eval/{point,image}_classifier.yaml; ``--weights`` measures it.
The render classifier is read at 64 px and at 32 px (the image base stage's size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["points", "images"], required=True)
    parser.add_argument("--weights", type=Path, default=None, help="default: the shipped classifier of that kind")
    parser.add_argument("--objects", type=int, default=1000, help="held-out objects to read")
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from cdm3d.core.checkpoint import check_parent, write_text
    from cdm3d.errors import Cdm3dError, one_line

    try:
        check_parent(args.out)
        report = _points(args) if args.kind == "points" else _images(args)
        command = " ".join(["python tools/eval_classifier.py", *(sys.argv[1:] if argv is None else argv)])
        write_text(args.out, json.dumps({"command": command, **report}, indent=2))
    except Cdm3dError as err:
        print(one_line("eval_classifier", err), file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


def _accuracy(predicted: tuple, truth: tuple) -> dict[str, float]:
    (pc, pk), (tc, tk) = predicted, truth
    return {"category_accuracy": (pc == tc).float().mean().item(), "color_accuracy": (pk == tk).float().mean().item()}


def _points(args: argparse.Namespace) -> dict:
    from cdm3d.eval.classifier import PointClassifier, world_labels
    from cdm3d.paths import POINT_CLASSIFIER
    from cdm3d.training.data.world import load_geometry

    weights = args.weights or POINT_CLASSIFIER
    model = PointClassifier.load(weights)
    clouds = load_geometry("val", args.objects, 4096, args.cache_dir, 2).float()
    report = _accuracy(model.predict(clouds), world_labels("val", args.objects))
    return {"weights": str(weights), "split": "val", "objects": args.objects, "points": 1024, **report}


def _images(args: argparse.Namespace) -> dict:
    import torch

    from cdm3d.eval.classifier import ImageClassifier, world_labels
    from cdm3d.paths import IMAGE_CLASSIFIER
    from cdm3d.training.data.world import load_renders

    weights = args.weights or IMAGE_CLASSIFIER
    model = ImageClassifier.load(weights)
    pixels = load_renders("val", args.objects, 64, args.cache_dir, 2).float() / 255
    truth = world_labels("val", args.objects)
    report = {"weights": str(weights), "split": "val", "objects": args.objects}
    for size in (64, 32):
        x = (
            pixels
            if size == 64
            else torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", antialias=True)
        )
        report[f"{size}px"] = _accuracy(model.predict(x), truth)
    return report


if __name__ == "__main__":
    sys.exit(main())
