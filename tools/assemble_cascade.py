"""Assemble a cascade folder from trained stage files and a CLIP.

    bash tools/env.sh python tools/assemble_cascade.py --clip runs/clip/clip/clip.safetensors \
        --stage coarse=runs/points/coarse/stage.safetensors --stage upsample=runs/points/upsample/stage.safetensors \
        --stage mesh=configs/stages/mesh/poisson.yaml --out runs/mine
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, required=True)
    parser.add_argument(
        "--clip-image-fill",
        type=float,
        default=None,
        metavar="F",
        help="reframe conditioning images so their object spans this fraction of the frame, the framing of the "
        "CLIP's training images (benchmarks/framing.py measures it); default: images are used as given",
    )
    parser.add_argument(
        "--clip-text-prior",
        type=Path,
        default=None,
        help="the CLIP's text prior (text_prior.safetensors of a configs/train/clip/text_prior.yaml run)",
    )
    parser.add_argument(
        "--stage",
        action="append",
        required=True,
        metavar="NAME=FILE",
        help="a stage weights file (.safetensors) or, for stages without weights, a stage config (.yaml)",
    )
    parser.add_argument(
        "--as-type",
        action="append",
        default=[],
        metavar="NAME=TYPE",
        help="load stage NAME's weights file as another stage type with the same config fields and network, "
        "e.g. mesh_select=mesh.select for a points.select critic that scores meshes",
    )
    parser.add_argument(
        "--expert",
        action="append",
        default=[],
        metavar="NAME=FILE",
        help="a low-noise expert for stage NAME: the same stage type trained on timesteps [0, switch) only",
    )
    parser.add_argument(
        "--sampling",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a stage's default sampling setting, e.g. coarse.scheduler=unipc coarse.steps=12 (kept in its config)",
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument(
        "--half", action="store_true", help="store the stages' weights in float16 (half the size; loaded as float32)"
    )
    args = parser.parse_args(argv)
    from cdm3d.core import Cascade, ClipEncoder, build_stage, load_stage, load_yaml
    from cdm3d.core.config import updated
    from cdm3d.errors import Cdm3dError, one_line
    from cdm3d.pipelines import parse_sampling_items
    from cdm3d.stages import load_builtin

    try:
        load_builtin()
        as_type = {}
        for item in args.as_type:
            name, sep, stage_type = item.partition("=")
            if not sep:
                raise Cdm3dError(f"--as-type {item!r} must look like NAME=TYPE")
            as_type[name] = stage_type
        stages = []
        for item in args.stage:
            name, sep, path = item.partition("=")
            if not sep:
                raise Cdm3dError(f"--stage {item!r} must look like name=path")
            if path.endswith((".yaml", ".yml")):
                stages.append((name, build_stage(load_yaml(path), f"config {path}")))
            else:
                stages.append((name, load_stage(path, as_type=as_type.pop(name, None))))
        if as_type:
            raise Cdm3dError(f"--as-type names stages without a weights file given by --stage: {sorted(as_type)}")
        by_name = dict(stages)
        for item in args.expert:
            name, sep, path = item.partition("=")
            if not sep or name not in by_name or not hasattr(by_name[name], "set_expert"):
                raise Cdm3dError(f"--expert {item!r} must look like NAME=FILE with NAME a diffusion stage")
            by_name[name].set_expert(load_stage(path, expected_type=by_name[name].config.type))
        for name, fields in parse_sampling_items(args.sampling, list(by_name)).items():
            stage = by_name[name]
            stage.config = updated(stage.config, {"sampling": fields}, f"sampling of stage {name!r}")
        clip = ClipEncoder.load(args.clip)
        if args.clip_image_fill is not None:
            if not 0.05 <= args.clip_image_fill <= 1.0:
                raise Cdm3dError(f"--clip-image-fill must lie in [0.05, 1], got {args.clip_image_fill}")
            clip.image_fill = args.clip_image_fill
        if args.clip_text_prior is not None:
            clip.load_text_prior(args.clip_text_prior)
        cascade = Cascade(stages, clip=clip)
        import torch

        cascade.save_pretrained(args.out, overwrite=args.overwrite, stage_dtype=torch.float16 if args.half else None)
    except Cdm3dError as err:
        print(one_line("assemble_cascade", err), file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
