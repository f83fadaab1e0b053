"""Sample coloured point clouds (and SDF samples) from meshes into shards for training.

Real data (a folder of .obj/.ply/.glb/.off meshes and a Cap3D-style uid,caption CSV):
    bash tools/env.sh python tools/prepare_dataset.py --meshes DIR --captions captions.csv --out data/mine
The procedural world:
    bash tools/env.sh python tools/prepare_dataset.py --world train --count 20000 --out data/world_train

Unreadable, empty or non-mesh files are skipped and listed in OUT/report.json.
Exits non-zero only when nothing usable was found.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser, Cdm3dError, one_line


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--meshes", type=Path, help="folder of mesh files (searched recursively)")
    src.add_argument("--world", choices=["train", "val", "test"], help="a split of the procedural world")
    parser.add_argument("--captions", type=Path, help="uid,caption CSV (with --meshes)")
    parser.add_argument("--count", type=int, default=1000, help="objects (with --world)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--sdf", type=int, default=0, help="SDF samples per object (0: none)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shard-size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from cdm3d.data.prepare import PrepareOptions, prepare_folder, prepare_world

    options = PrepareOptions(points=args.points, sdf_samples=args.sdf, seed=args.seed)
    try:
        if args.points < 1 or args.sdf < 0 or args.shard_size < 1:
            raise Cdm3dError("--points and --shard-size must be positive, --sdf non-negative")
        if args.meshes is not None:
            if args.captions is None:
                raise Cdm3dError("--meshes needs --captions (a uid,caption CSV)")
            report = prepare_folder(args.meshes, args.captions, args.out, options, args.workers, args.shard_size)
        else:
            report = prepare_world(args.world, args.count, args.out, options, args.shard_size)
    except Cdm3dError as err:
        print(one_line("prepare_dataset", err), file=sys.stderr)
        return 2
    print(f"wrote {report.written} objects in {len(report.shards)} shards to {args.out}; skipped {len(report.skipped)}")
    for item in report.skipped[:20]:
        print(f"  skipped {item.get('file', item['uid'])}: {item['reason']}")
    if len(report.skipped) > 20:
        print(f"  ... and {len(report.skipped) - 20} more (see {args.out / 'report.json'})")
    if report.written == 0:
        print("prepare_dataset: error: nothing usable was found", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
