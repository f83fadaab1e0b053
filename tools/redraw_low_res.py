"""Re-draw the world's low-resolution renders with a trained image base stage, for training a super-resolution
stage on inputs like the base stage's own (``data.low_res`` of a ``world.images`` recipe).

    bash tools/env.sh python tools/redraw_low_res.py --model cdm3d/weights/images \
        --embeddings runs/data/world_train_emb.safetensors --objects 8000 \
        --out runs/cache/world-lowres-redrawn-train-8000x32.npy

Each object's default-camera render, shrunk to the base stage's size, is noised part of the way
(``--strengths``, one per object in turn) and denoised by the base stage guided by one of the object's
captions (SDEdit): the object's layout stays, the base stage's errors come in. Writes uint8
``[objects, 3, size, size]`` atomically.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="an image cascade folder (its first stage)")
    parser.add_argument("--embeddings", type=Path, required=True, help="tools/embed_world.py output of the split")
    parser.add_argument("--split", default="train", choices=["train", "val", "test"])
    parser.add_argument("--objects", type=int, default=8000)
    parser.add_argument("--render-size", type=int, default=64, help="the render cache's size (the SR data's)")
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.25, 0.4, 0.55])
    parser.add_argument("--cache-dir", default="runs/cache")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.objects < 1 or not all(0 < s <= 1 for s in args.strengths):
        parser.error("--objects must be at least 1 and every strength lie in (0, 1]")

    import numpy as np
    import torch

    from cdm3d.core import Cascade
    from cdm3d.core.checkpoint import atomic_path, check_parent
    from cdm3d.errors import Cdm3dError, InputError, one_line
    from cdm3d.stages import load_builtin
    from cdm3d.stages.images.sr import resize_images
    from cdm3d.training.data.images import redraw_with_base
    from cdm3d.training.data.world import load_embeddings, load_renders

    try:
        check_parent(args.out)
        load_builtin()
        cascade = Cascade.from_pretrained(args.model)
        base = cascade.stages[cascade.names[0]]
        if base.config.type != "images.base":
            raise InputError(f"{args.model}'s first stage is {base.config.type!r}, not an images.base stage")
        text, _, null_text = load_embeddings(str(args.embeddings), args.split, args.objects)
        renders = load_renders(args.split, args.objects, args.render_size, args.cache_dir, 2)
        low = resize_images(renders.float() / 255, base.config.size)
        low = (low.clamp(0, 1) * 255).round().to(torch.uint8)
        out = redraw_with_base(base, low, text, null_text, tuple(args.strengths), args.seed, args.batch)
        with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
            np.save(f, out.numpy())
    except Cdm3dError as err:
        print(one_line("redraw_low_res", err), file=sys.stderr)
        return 2
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
