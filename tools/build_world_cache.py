"""Build the geometry caches of world point clouds that training reads (runs/cache/world-SPLIT-NxP.npy).

bash tools/env.sh python tools/build_world_cache.py --split train --objects 16000 --points 4096 --workers 14
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--objects", type=int, default=16000)
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    from cdm3d.errors import Cdm3dError, StorageError, one_line
    from cdm3d.training.data.world import build_geometry

    try:
        if args.objects < 1 or args.points < 2 or args.workers < 1:
            raise Cdm3dError("--objects, --workers must be positive and --points at least 2")
        path = args.cache_dir / f"world-{args.split}-{args.objects}x{args.points}.npy"
        if not path.exists():
            try:
                args.cache_dir.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StorageError(f"cannot create {args.cache_dir}: {err.strerror or err}") from None
            build_geometry(args.split, args.objects, args.points, path, args.workers)
    except Cdm3dError as err:
        if args.debug:
            raise
        print(one_line("build_world_cache", err), file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
