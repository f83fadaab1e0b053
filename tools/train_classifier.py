"""Train the point-cloud classifier used to measure category and colour fidelity.

    bash tools/env.sh python tools/train_classifier.py --out runs/classifier.safetensors [--device cuda]
Uses (and builds if needed) the same geometry cache as the point stages.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--objects", type=int, default=16000)
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--eval-objects", type=int, default=1000)
    args = parser.parse_args(argv)
    import numpy as np
    import torch

    from cdm3d.eval.classifier import train_classifier, world_labels
    from cdm3d.training.data.points import build_geometry

    cache = args.cache_dir / f"world-train-{args.objects}x{args.points}.npy"
    if cache.exists():
        points = torch.from_numpy(np.load(cache))
    else:
        points = build_geometry("train", args.objects, args.points, cache, args.workers)
    cats, cols = world_labels("train", args.objects)
    model = train_classifier(points, cats, cols, steps=args.steps, device=args.device)
    args.out.parent.mkdir(parents=True, exist_ok=True)
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
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
