"""Category fidelity of the selector's choice per number of candidates, for prompts and for images; JSON.

    bash tools/env.sh python benchmarks/selection_sweep.py --model cdm3d/weights/default \
        --candidates 8 --split val --out benchmarks/results/selection_sweep_val.json

The cascade's diffusion point stages sample ``--candidates`` clouds per prompt once (what a run with that
many candidates gives its selector: each example repeated, one batch); the selector scores every candidate,
and for each k the row keeps, per prompt, the best-scored of the first k. Alongside: the fidelity of a
single sample (the mean over candidates) and of an oracle that keeps a right one whenever one of the k is
right (the ceiling of any chooser). ``--images`` adds the same for image -> 3D, conditioned on renders of
the prompts' own objects (the split's default-camera renders, as the images eval). ``--meshes M`` meshes
the selector's best M clouds per prompt (text) with the cascade's mesh stage and sweeps its mesh selector's
choice among the first m of them (the shipped cascade's ``select.keep``):

    bash tools/env.sh python benchmarks/selection_sweep.py --candidates 8 --split val --meshes 3 \
        --out benchmarks/results/selection_sweep_val_meshes.json

``--sampling NAME.KEY=VALUE`` samples the candidates at another setting of a point stage (the same seeds,
so the coarse clouds of a run that changes only ``upsample`` settings are the same clouds):

    bash tools/env.sh python benchmarks/selection_sweep.py --candidates 8 --split val \
        --sampling upsample.steps=8 --out benchmarks/results/selection_sweep_val.json

Use ``--split val`` to choose the default numbers off the test prompts.
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
from cdm3d.errors import InputError
from cdm3d.eval.classifier import PointClassifier
from cdm3d.eval.images_eval import renders
from cdm3d.eval.points_eval import generate, prompts_per_category
from cdm3d.paths import POINT_CLASSIFIER
from cdm3d.pipelines import parse_sampling_items


def candidates(
    cascade, selector: SelectorStage, cond: Conditioning, k_max: int, batch: int, sampling: dict | None = None
):
    """``k_max`` candidate clouds per prompt (rows ``i * k_max ...``) and the selector's scores ``[P, k_max]``."""
    plain = Cascade([(n, cascade.stages[n]) for n in cascade.names if n != selector.name], clip=cascade.clip)
    many = cond.repeat_interleave(k_max)
    clouds = generate(plain, many, batch * k_max, seed=0, sampling=sampling)[plain.names[-1]]
    return clouds, selector.score(clouds, many, torch.Generator().manual_seed(0)).view(-1, k_max)


def sweep(
    cascade,
    selector: SelectorStage,
    classifier,
    cond: Conditioning,
    categories,
    k_max: int,
    batch: int,
    sampling: dict | None = None,
):
    """Rows of (k, single, chosen, oracle) category fidelity over ``k = 1 .. k_max``; also the candidates."""
    clouds, scores = candidates(cascade, selector, cond, k_max, batch, sampling)
    labels = torch.tensor([list(CATEGORIES).index(c) for c in categories]).repeat_interleave(k_max)
    right = (classifier.predict(clouds.to_tensor())[0] == labels).view(-1, k_max)
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
    return rows, (clouds, scores)


def mesh_sweep(full: Cascade, clouds, scores, cond: Conditioning, categories, classifier, m_max: int, batch: int):
    """The selector's best ``m_max`` clouds per prompt meshed by the cascade's mesh stage; rows of the mesh
    selector's choice among the first m of them (m = 1: the best cloud's mesh alone), with the fidelity of the
    meshes of each cloud rank and an oracle among the m."""
    from cdm3d.eval.classifier import CLASSIFIER_POINTS
    from cdm3d.eval.mesh_eval import mesh_cloud, mesh_in_batches
    from cdm3d.types import Meshes

    mesher, chooser = full.last_producer("Meshes")
    if mesher is None:
        raise SystemExit(f"selection_sweep: {full.names} has no mesh stage for --meshes")
    if chooser is None:
        raise SystemExit("selection_sweep: --meshes needs a selector stage after the mesh stage (mesh.select)")
    prompts, k_max = scores.shape
    order = scores.argsort(1, descending=True)[:, :m_max]
    picked = clouds[(torch.arange(prompts)[:, None] * k_max + order).flatten()]
    cond_m = cond.repeat_interleave(m_max)
    items, _ = mesh_in_batches(full.stages[mesher], picked, cond_m, batch)
    ok = [j for j, (m, _) in enumerate(items) if m is not None]
    labels = torch.tensor([list(CATEGORIES).index(c) for c in categories]).repeat_interleave(m_max)
    right = torch.zeros(len(items), dtype=torch.bool)
    mesh_scores = torch.full((len(items),), -float("inf"))  # a failed mesh is never chosen and never right
    if ok:
        kept = [items[j] for j in ok]
        meshes = Meshes([m.vertices[i] for m, i in kept], [m.faces[i] for m, i in kept], [m.colors[i] for m, i in kept])
        samples = torch.stack([mesh_cloud(meshes.to_trimesh(j), CLASSIFIER_POINTS) for j in range(len(ok))])
        right[ok] = classifier.predict(samples)[0] == labels[ok]
        mesh_scores[ok] = full.stages[chooser].score(meshes, cond_m.select(ok), torch.Generator().manual_seed(0))
    right, mesh_scores = right.view(-1, m_max), mesh_scores.view(-1, m_max)
    rows = []
    for m in range(1, m_max + 1):
        pick = mesh_scores[:, :m].argmax(1)
        rows.append(
            {
                "meshes": m,
                "cloud_rank_meshed": round(right[:, m - 1].float().mean().item(), 4),
                "chosen": round(right[torch.arange(len(right)), pick].float().mean().item(), 4),
                "oracle": round(right[:, :m].any(1).float().mean().item(), 4),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("cdm3d/weights/default"))
    parser.add_argument("--classifier", type=Path, default=POINT_CLASSIFIER)
    parser.add_argument("--candidates", type=int, default=8, help="the most candidates per prompt to try")
    parser.add_argument("--per-category", type=int, default=8)
    parser.add_argument("--batch", type=int, default=13, help="prompts per run (each with all its candidates)")
    parser.add_argument("--split", default="val", choices=["test", "val"])
    parser.add_argument("--images", action="store_true", help="also image -> 3D from the prompts' renders")
    parser.add_argument(
        "--meshes",
        type=int,
        default=0,
        metavar="M",
        help="also mesh the selector's best M clouds per prompt (text) and sweep the mesh selector's choice",
    )
    parser.add_argument(
        "--sampling",
        action="append",
        default=[],
        metavar="NAME.KEY=VALUE",
        help="a point stage's sampling setting for the candidates, e.g. upsample.steps=8 (default: the model's)",
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/selection_sweep_val.json"))
    args = parser.parse_args(argv)
    check_parent(args.out)

    from cdm3d.stages import load_builtin

    load_builtin()
    cascade = Cascade.from_pretrained(args.model).producing("PointClouds")
    selectors = [s for s in cascade.stages.values() if isinstance(s, SelectorStage)]
    if not selectors:
        print(f"selection_sweep: {args.model} has no selector stage", file=sys.stderr)
        return 2
    try:
        sampling = parse_sampling_items(args.sampling, [n for n in cascade.names if n != selectors[0].name])
    except InputError as err:
        print(f"selection_sweep: {err}", file=sys.stderr)
        return 2
    classifier = PointClassifier.load(args.classifier)
    prompts = prompts_per_category(args.per_category, args.split)
    categories = [p[2] for p in prompts]
    report = {"model": str(args.model), "split": args.split, "prompts": len(prompts), "selector": selectors[0].name}
    if sampling:
        report["sampling"] = sampling
    cond = cascade.encode([p[1] for p in prompts])
    report["text"], (clouds, scores) = sweep(
        cascade, selectors[0], classifier, cond, categories, args.candidates, args.batch, sampling
    )
    if args.meshes:
        full = Cascade.from_pretrained(args.model, load_clip=False)
        report["text_meshes"] = mesh_sweep(full, clouds, scores, cond, categories, classifier, args.meshes, args.batch)
    if args.images:
        cond = cascade.encode(None, renders([p[0] for p in prompts], 64, args.split))
        report["image"] = sweep(
            cascade, selectors[0], classifier, cond, categories, args.candidates, args.batch, sampling
        )[0]
    write_text(args.out, json.dumps(report, indent=2))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
