"""Category fidelity of the selector's choice per number of candidates, for prompts and for images; JSON.

    bash tools/env.sh python benchmarks/selection_sweep.py --model cdm3d/weights/default \
        --candidates 8 --split val --out benchmarks/results/selection_sweep_val.json

The cascade's diffusion point stages sample ``--candidates`` clouds per prompt once (what a run with that
many candidates gives its selector: each example repeated, one batch); the selector scores every candidate,
and for each k the row keeps, per prompt, the best-scored of the first k. Alongside: the fidelity of a
single sample (the mean over candidates) and of an oracle that keeps a right one whenever one of the k is
right (the ceiling of any chooser). ``--images`` adds the same for image -> 3D, conditioned on renders of
the prompts' own objects (the split's default-camera renders, as the images eval). Use ``--split val`` to
choose the default number off the test prompts.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from cdm3d.core import Cascade, Conditioning, SelectorStage
from cdm3d.core.checkpoint import check_parent, write_text
from cdm3d.data.vocab import CATEGORIES
from cdm3d.eval.classifier import PointClassifier
from cdm3d.eval.images_eval import renders
from cdm3d.eval.points_eval import generate, prompts_per_category
from cdm3d.eval.stages import point_stages


def sweep(cascade, selector: SelectorStage, classifier, cond: Conditioning, categories, k_max: int, batch: int):
    """Rows of (k, single, chosen, oracle) category fidelity over ``k = 1 .. k_max``."""
    names = cascade.names
    plain = Cascade([(n, cascade.stages[n]) for n in names if n != selector.name], clip=cascade.clip)
    many = cond.repeat_interleave(k_max)
    clouds = generate(plain, many, batch * k_max, seed=0)[plain.names[-1]]
    labels = torch.tensor([list(CATEGORIES).index(c) for c in categories]).repeat_interleave(k_max)
    right = (classifier.predict(clouds.to_tensor())[0] == labels).view(-1, k_max)
    scores = selector.score(clouds, many, torch.Generator().manual_seed(0)).view(-1, k_max)
    rows = []
    for k in range(1, k_max + 1):
        pick = scores[:, :k].argmax(1)
        rows.append(
            {
                "candidates": k,
                "single_sample": round(right[:, :k].float().mean().item(), 4),
                "chosen": round(right[torch.arange(len(right)), pick].float().mean().item(), 4),
                "oracle": round(right[:, :k].any(1).float().mean().item(), 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("cdm3d/weights/default"))
    parser.add_argument("--classifier", type=Path, default=Path("benchmarks/assets/classifier.safetensors"))
    parser.add_argument("--candidates", type=int, default=8, help="the most candidates per prompt to try")
    parser.add_argument("--per-category", type=int, default=8)
    parser.add_argument("--batch", type=int, default=13, help="prompts per run (each with all its candidates)")
    parser.add_argument("--split", default="val", choices=["test", "val"])
    parser.add_argument("--images", action="store_true", help="also image -> 3D from the prompts' renders")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/selection_sweep_val.json"))
    args = parser.parse_args(argv)
    check_parent(args.out)

    from cdm3d.stages import load_builtin

    load_builtin()
    cascade = point_stages(args.model)
    selectors = [s for s in cascade.stages.values() if isinstance(s, SelectorStage)]
    if not selectors:
        print(f"selection_sweep: {args.model} has no selector stage", file=sys.stderr)
        return 2
    classifier = PointClassifier.load(args.classifier)
    prompts = prompts_per_category(args.per_category, args.split)
    categories = [p[2] for p in prompts]
    report = {"model": str(args.model), "split": args.split, "prompts": len(prompts), "selector": selectors[0].name}
    cond = cascade.encode([p[1] for p in prompts])
    report["text"] = sweep(cascade, selectors[0], classifier, cond, categories, args.candidates, args.batch)
    if args.images:
        cond = cascade.encode(None, renders([p[0] for p in prompts], 64, args.split))
        report["image"] = sweep(cascade, selectors[0], classifier, cond, categories, args.candidates, args.batch)
    write_text(args.out, json.dumps(report, indent=2))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
