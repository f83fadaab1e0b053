"""Prompts or images -> meshes (GLB/OBJ/PLY) and point clouds (PLY/NPZ), with a preview per result.

    bash tools/env.sh python tools/export_mesh.py "a tall red lamp" "a blue mug" -o outputs/
    bash tools/env.sh python tools/export_mesh.py --image view.png -o outputs/ --formats glb obj --gif

Refuses to overwrite files without --force; a bad input is a one-line error and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser

MESH_FORMATS = ("glb", "obj", "ply")
POINT_FORMATS = ("ply", "npz")


def _slug(text: str, index: int) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40]
    return f"{index:02d}-{words or 'object'}"


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompts", nargs="*")
    parser.add_argument("--image", action="append", default=[], type=Path, help="condition on an image (repeatable)")
    parser.add_argument(
        "--no-reframe",
        action="store_true",
        help="give --image files to CLIP as they are, not enlarged to the framing of its training images",
    )
    parser.add_argument(
        "--no-text-prior",
        action="store_true",
        help="condition --image files on their CLIP image embedding only, not also on the text embedding the "
        "model's text prior predicts from them",
    )
    parser.add_argument("-o", "--out", type=Path, default=Path("outputs"))
    parser.add_argument("--model", type=Path, default=None, help="cascade folder (default: the shipped one)")
    parser.add_argument("--formats", nargs="+", default=["glb"], help=f"mesh formats: {', '.join(MESH_FORMATS)}")
    parser.add_argument("--point-formats", nargs="*", default=["ply"], help="point-cloud formats: ply, npz")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument(
        "--candidates", type=int, default=None, help="samples per prompt to choose among (default: the model's)"
    )
    parser.add_argument("--gif", action="store_true", help="also write a turntable GIF per result")
    parser.add_argument("--mesher", choices=["sdf", "poisson"], default=None, help="mesh stage (default: the model's)")
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    from cdm3d.core.clip import check_prompts
    from cdm3d.errors import Cdm3dError, InputError, one_line

    try:
        bad = [f for f in args.formats if f not in MESH_FORMATS] + [
            f for f in args.point_formats if f not in POINT_FORMATS
        ]
        if bad:
            raise InputError(f"unknown format(s) {bad}; meshes: {MESH_FORMATS}, points: {POINT_FORMATS}")
        if bool(args.prompts) == bool(args.image):
            raise InputError("give prompts or --image files (one kind per call)")
        for flag, given in (("--no-reframe", args.no_reframe), ("--no-text-prior", args.no_text_prior)):
            if given and not args.image:
                raise InputError(f"{flag} applies to --image files only")
        labels = args.prompts or [p.stem for p in args.image]
        stems = [_slug(label, i) for i, label in enumerate(labels)]
        suffixes = [f".{f}" for f in args.formats] + [f".points.{f}" for f in args.point_formats] + [".png"]
        suffixes += [".gif"] if args.gif else []
        if args.prompts:
            check_prompts(args.prompts)  # before anything is created
        if not args.out.parent.exists():
            raise InputError(f"cannot write into {args.out}: {args.out.parent} does not exist")
        try:
            args.out.mkdir(exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create the output folder {args.out}: {err.strerror or err}") from None
        if not args.out.is_dir() or not os.access(args.out, os.W_OK):
            raise InputError(f"cannot write into {args.out}: not a writable folder")
        planned = [args.out / f"{stem}{suffix}" for stem in stems for suffix in suffixes]
        existing = [p for p in planned if p.exists()]
        if existing and not args.force:
            raise InputError(f"{existing[0]} exists; pass --force to overwrite")

        from cdm3d.pipelines import ImageTo3D, TextTo3D
        from cdm3d.render.preview import save_gif, save_png, turntable

        pipe = TextTo3D.from_pretrained(args.model, mesher=args.mesher)
        kwargs = {"seed": args.seed, "steps": args.steps, "guidance": args.guidance, "candidates": args.candidates}
        if args.prompts:
            out = pipe(args.prompts, **kwargs)
        else:
            out = ImageTo3D(pipe.cascade)(
                args.image, reframe=not args.no_reframe, text_prior=not args.no_text_prior, **kwargs
            )
        for i, stem in enumerate(stems):
            for fmt in args.formats:
                print(out.mesh.save(args.out / f"{stem}.{fmt}", i, force=True))
            for fmt in args.point_formats:
                print(out.points.save(args.out / f"{stem}.points.{fmt}", i, force=True))
            print(save_png(out.mesh.preview(i), args.out / f"{stem}.png"))
            if args.gif:
                frames = turntable(lambda cam, i=i: out.mesh.preview(i, size=192, camera=cam), frames=24)
                print(save_gif(frames, args.out / f"{stem}.gif"))
    except Cdm3dError as err:
        if args.debug:
            raise
        print(one_line("export_mesh", err), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
