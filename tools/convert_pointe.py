"""Convert OpenAI's released Point-E checkpoints into a cdm3d cascade folder.

    bash tools/env.sh python tools/convert_pointe.py --base base_40m_textvec.pt --upsampler upsample_40m.pt \
        --sdf sdf.pt -o models/pointe-text

Download the files yourself from the addresses in Point-E's models/download.py (listed by --urls); their
terms are OpenAI's, and cdm3d neither fetches nor ships them. Files are read with torch.load(weights_only=True):
one that would need code to load is refused. The folder's CLIP is OpenAI's ViT-L/14 through open_clip
(ViT-L-14-quickgelu, tag openai), found in the local open_clip / Hugging Face cache, or --clip-checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cdm3d.errors import ArgumentParser


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, help="base_40m_textvec.pt, base_40m.pt, base_300m.pt or base_1b.pt")
    parser.add_argument("--upsampler", type=Path, default=None, help="upsample_40m.pt")
    parser.add_argument("--sdf", type=Path, default=None, help="sdf.pt (meshes with Point-E's SDF model)")
    parser.add_argument(
        "--clip-checkpoint",
        type=Path,
        default=None,
        help="a local open_clip checkpoint of ViT-L-14-quickgelu (e.g. open_clip_model.safetensors of "
        "timm/vit_large_patch14_clip_224.openai); default: the open_clip / Hugging Face cache",
    )
    parser.add_argument("-o", "--out", type=Path, default=None, help="the cascade folder to write")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--urls", action="store_true", help="print where to download the checkpoints, and exit")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    args = parser.parse_args(argv)
    from cdm3d.convert.pointe import DOWNLOADS, convert_pointe
    from cdm3d.errors import Cdm3dError, one_line

    if args.urls:
        for name, url in DOWNLOADS.items():
            print(f"{name}  {url}")
        return 0
    if args.base is None or args.out is None:
        parser.error("give --base and -o/--out (or --urls)")
    try:
        from cdm3d.stages import load_builtin

        load_builtin()
        folder = convert_pointe(
            args.out,
            base=args.base,
            upsampler=args.upsampler,
            sdf=args.sdf,
            clip_checkpoint=args.clip_checkpoint,
            overwrite=args.overwrite,
        )
    except Cdm3dError as err:
        if args.debug:
            raise
        print(one_line("convert_pointe", err), file=sys.stderr)
        return 2
    print(folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
