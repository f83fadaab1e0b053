"""Precompute CLIP embeddings of the world's captions and rendered views, for training the point stages.

    bash tools/env.sh python tools/embed_world.py --clip runs/clip/clip/clip.safetensors \
        --split train --objects 16000 --out runs/data/world_train_emb.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clip", type=Path, required=True, help="a cdm3d CLIP file (clip.safetensors)")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--objects", type=int, default=16000)
    parser.add_argument("--text-variants", type=int, default=6)
    parser.add_argument("--image-views", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from cdm3d.core import ClipEncoder
    from cdm3d.core.checkpoint import check_parent
    from cdm3d.errors import Cdm3dError, one_line
    from cdm3d.training.data.world import build_world_embeddings

    try:
        check_parent(args.out)
        clip = ClipEncoder.load(args.clip)
        build_world_embeddings(clip, args.split, args.objects, args.out, args.text_variants, args.image_views)
    except Cdm3dError as err:
        print(one_line("embed_world", err), file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
