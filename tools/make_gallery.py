"""The README's picture: the shipped default's meshes for a fixed list of prompts at seed 0, one preview each,
captioned, in one small PNG. The prompts cover primitives and composites alike; nothing is picked by result.

    bash tools/env.sh python tools/make_gallery.py --out docs/gallery.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROMPTS = [
    "a red cone",
    "a blue torus",
    "a yellow cube",
    "a tall green cylinder",
    "a purple snowman",
    "an orange dumbbell",
    "a white table",
    "a blue mug",
    "a tall red lamp",
    "a pink chair",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("docs/gallery.png"))
    parser.add_argument("--size", type=int, default=160, help="pixels per preview")
    parser.add_argument("--columns", type=int, default=5)
    args = parser.parse_args(argv)
    import numpy as np
    from PIL import Image, ImageDraw

    from cdm3d import TextTo3D
    from cdm3d.render.preview import to_uint8

    pipe = TextTo3D.from_pretrained()
    tiles = []
    for prompt in PROMPTS:
        mesh = pipe(prompt, seed=0, progress=False).mesh
        tile = Image.fromarray(to_uint8(mesh.preview(0, size=args.size)))
        canvas = Image.new("RGB", (args.size, args.size + 18), "white")
        canvas.paste(tile, (0, 0))
        ImageDraw.Draw(canvas).text((4, args.size + 3), prompt, fill=(40, 40, 40))
        tiles.append(np.asarray(canvas))
    tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % args.columns)  # a short last row, filled in white
    rows = [np.concatenate(tiles[i : i + args.columns], axis=1) for i in range(0, len(tiles), args.columns)]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
