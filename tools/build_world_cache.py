"""Build the geometry caches of world point clouds that training reads (runs/cache/world-SPLIT-NxP.npy).

bash tools/env.sh python tools/build_world_cache.py --split train --objects 16000 --points 4096 --workers 14
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--objects", type=int, default=16000)
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    args = parser.parse_args()
    from cdm3d.training.data.points import build_geometry

    path = args.cache_dir / f"world-{args.split}-{args.objects}x{args.points}.npy"
    if not path.exists():
        build_geometry(args.split, args.objects, args.points, path, args.workers)
    print(path)


if __name__ == "__main__":
    main()
