"""Fingerprints of the shipped defaults' outputs at seed 0: a SHA-256 prefix of every stage's output tensors
for three text -> 3D prompts, two text -> image prompts and one text -> image -> 3D prompt. A change that
should not alter behaviour (a refactor) leaves every fingerprint as it was on the same machine.

    bash tools/env.sh python benchmarks/default_outputs.py --out benchmarks/results/default_outputs.json

CPU float results depend on the machine's instruction set and thread count: compare fingerprints made on one
machine, with the same torch, not across machines.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import torch

SHAPE_PROMPTS = ["a red cone", "a tall red lamp", "a blue mug"]
IMAGE_PROMPTS = ["a red mug", "a blue chair"]
VIA_IMAGE_PROMPT = "a green cone"


def digest(t: torch.Tensor) -> str:
    return hashlib.sha256(torch.as_tensor(t).detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def fingerprint(output: object) -> list:
    """The fingerprints of a stage output: its tensors (a mesh batch: each mesh's vertices, faces, colours)."""
    if hasattr(output, "pixels"):
        return [digest(output.pixels)]
    if hasattr(output, "coords"):
        return [digest(output.coords), digest(output.colors)]
    return [[digest(x) for x in getattr(output, a)] for a in ("vertices", "faces", "colors")]


def run(result: object) -> dict:
    out = result.output
    record = {name: fingerprint(v) for name, v in out.outputs.items()}
    record["selection"] = {k: {kk: digest(vv) for kk, vv in d.items()} for k, d in out.selection.items()}
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    from cdm3d import TextTo3D, TextToImage, TextToImageTo3D

    torch.set_num_threads(2)
    shapes = TextTo3D.from_pretrained()
    images = TextToImage.from_pretrained()
    report = {
        "command": "python benchmarks/default_outputs.py --out " + str(args.out),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "text_to_3d": {p: run(shapes(p, seed=0, progress=False)) for p in SHAPE_PROMPTS},
        "text_to_image": {p: run(images(p, seed=0, progress=False)) for p in IMAGE_PROMPTS},
        "text_to_image_to_3d": {
            VIA_IMAGE_PROMPT: run(TextToImageTo3D.from_pretrained()(VIA_IMAGE_PROMPT, seed=0, progress=False))
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
