"""Train the classifiers used to measure category and colour fidelity.

    bash tools/env.sh python tools/train_classifier.py --out runs/classifier.safetensors [--device cuda]
    bash tools/env.sh python tools/train_classifier.py --images --objects 8000 --steps 1500 \
        --out benchmarks/assets/image_classifier.safetensors
The point classifier uses (and builds if needed) the same geometry cache as the point stages, the
image classifier (``--images``) the 64 px render cache of the image stages. Both report their accuracy
on held-out objects of the world's "val" split next to the weights (``.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--images", action="store_true", help="train the render classifier instead")
    parser.add_argument("--objects", type=int, default=16000)
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    parser.add_argument("--steps", type=int, default=None, help="default: 3000 (points), 1500 (images)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval-objects", type=int, default=1000)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    from cdm3d.errors import Cdm3dError, one_line

    try:
        return _run(args)
    except Cdm3dError as err:
        if args.debug:
            raise
        print(one_line("train_classifier", err), file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.images:
        return _run_images(args)
    import numpy as np
    import torch

    from cdm3d.core.checkpoint import check_parent, write_text
    from cdm3d.eval.classifier import train_classifier, world_labels
    from cdm3d.training.data.world import build_geometry

    cache = args.cache_dir / f"world-train-{args.objects}x{args.points}.npy"
    if cache.exists():
        points = torch.from_numpy(np.load(cache, allow_pickle=False))
    else:
        points = build_geometry("train", args.objects, args.points, cache, args.workers)
    cats, cols = world_labels("train", args.objects)
    model = train_classifier(points, cats, cols, steps=args.steps or 3000, device=args.device)
    check_parent(args.out)
    model.save(args.out)
    # Accuracy on held-out world objects (the "val" split).
    val_cache = args.cache_dir / f"world-val-{args.eval_objects}x{args.points}.npy"
    val = (
        torch.from_numpy(np.load(val_cache))
        if val_cache.exists()
        else build_geometry("val", args.eval_objects, args.points, val_cache, args.workers)
    )
    vc, vk = world_labels("val", args.eval_objects)
    pc, pk = model.predict(val.float())
    report = {
        "val_category_accuracy": (pc == vc).float().mean().item(),
        "val_color_accuracy": (pk == vk).float().mean().item(),
    }
    print(json.dumps(report))
    write_text(args.out.with_suffix(".json"), json.dumps(report, indent=2))
    return 0


def _run_images(args: argparse.Namespace) -> int:
    import torch

    from cdm3d.core.checkpoint import check_parent, write_text
    from cdm3d.eval.classifier import train_image_classifier, world_labels
    from cdm3d.training.data.world import load_renders

    check_parent(args.out)
    renders = load_renders("train", args.objects, 64, str(args.cache_dir), args.workers)
    cats, cols = world_labels("train", args.objects)
    model = train_image_classifier(renders, cats, cols, steps=args.steps or 1500, device=args.device)
    model.save(args.out)
    val = load_renders("val", args.eval_objects, 64, str(args.cache_dir), args.workers).float() / 255
    vc, vk = world_labels("val", args.eval_objects)
    report = {}
    for label, pixels in (
        ("64px", val),
        ("32px", torch.nn.functional.interpolate(val, size=32, antialias=True, mode="bilinear")),
    ):
        pc, pk = model.predict(pixels)
        report[f"val_category_accuracy_{label}"] = (pc == vc).float().mean().item()
        report[f"val_color_accuracy_{label}"] = (pk == vk).float().mean().item()
    report.update(objects=args.objects, steps=args.steps or 1500, val_objects=args.eval_objects)
    print(json.dumps(report))
    write_text(args.out.with_suffix(".json"), json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
