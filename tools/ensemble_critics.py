"""Join separately trained point-cloud critics (``points.select`` stage files of one recipe, different seeds)
into one selector stage file whose score averages their cosines.

    bash tools/env.sh python tools/ensemble_critics.py runs/select_cpu/stage.safetensors \\
        runs/select_cpu_seed1/stage.safetensors --out runs/select_ensemble/stage.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("critics", type=Path, nargs="+", help="points.select stage files (.safetensors)")
    parser.add_argument("--out", type=Path, required=True, help="the ensemble's stage file (.safetensors)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)

    from cdm3d.core import load_stage, save_stage
    from cdm3d.errors import Cdm3dError, InputError, one_line
    from cdm3d.stages import load_builtin
    from cdm3d.stages.points.select import ensemble_critics

    try:
        if args.out.suffix != ".safetensors":
            raise InputError(f"--out {args.out}: name a .safetensors file")
        if args.out.exists() and not args.overwrite:
            raise InputError(f"--out {args.out} exists; pass --overwrite to replace it")
        load_builtin()
        ensemble = ensemble_critics([load_stage(p, expected_type="points.select") for p in args.critics])
        save_stage(ensemble, args.out)
    except Cdm3dError as err:
        print(one_line("ensemble_critics", err), file=sys.stderr)
        return 2
    print(f"wrote {args.out}: an ensemble of {len(args.critics)} critics")
    return 0


if __name__ == "__main__":
    sys.exit(main())
