"""The SR stage's fidelity and FID per SDEdit strength, on the base stage's generated images; JSON.

    bash tools/env.sh python benchmarks/sr_strength_sweep.py --split val --seeds 3 \
        --strengths 1 0.75 0.5 0.35 0.2 --out benchmarks/results/sr_strength_sweep_val.json

The image cascade's base stage samples the split's prompts once per seed (as ``cdm3d eval --images``
does: the same seeds, so the base images are the eval's); the SR stage then samples from each base image at
every ``--strengths`` value (``sampling.strength``: 1 from noise, below 1 from the upsampled base image
noised part of the way, the last ``int(steps * strength)`` steps only), the rest of its settings the
model's (``--sampling sr.KEY=VALUE`` changes them for every row). Each row: category / colour fidelity by
the render classifier, per seed and their mean, the zero-shot CLIP's, the FID at the first seed (small CLIP
image features against the split's renders, as the eval), the SR stage's seconds per image at batch 1
(median of 5), and ``against_base``: by the render classifier, how many images (prompts x seeds) the SR
stage gets wrong that the base got right (``lost``) and the reverse (``gained``), with McNemar's exact
two-sided p-value (is the change in fidelity more than chance?), the counts on prompts of one and of two
colours apart (``by_group``), and the fidelity difference with its 95% interval by a bootstrap over prompts
(``ci95_by_prompt``; a prompt's seeds are not independent images). ``against_base_at_base_size`` is the same
comparison after the SR images are resized to the base's size and back: what the stage changed in what the
base drew (colours, large shapes), apart from the detail it added. ``classifier_on_renders_through_base_size``
checks the instrument: the prompts' own renders read at the SR size and through the base's size;
``on_renders_at_base_size`` runs the SR stage on those renders shrunk to the base's size (the first seed) and
compares its images with the renders: the stage's own errors, apart from the base stage's. Test whether
the SR stage lowers fidelity on the test prompts, at the shipped settings only:

    bash tools/env.sh python benchmarks/sr_strength_sweep.py --split test --seeds 5 --strengths 1 \
        --out benchmarks/results/sr_vs_base_test.json

The base row is the same measure of the base images. Use ``--split val`` to choose a default off the test
prompts. ``--two-colour-only`` keeps only prompts of two-colour objects (``--per-category`` of each category that
has them), a stress set for colour: there the SR stage must draw which part takes which colour.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from cdm3d.core import Cascade
from cdm3d.core.checkpoint import check_parent, write_text
from cdm3d.data.world import World
from cdm3d.errors import InputError
from cdm3d.eval.classifier import ImageClassifier
from cdm3d.eval.clip_eval import variant_tables
from cdm3d.eval.images_eval import (
    SEED_STRIDE,
    _run,
    _short,
    fidelity,
    frechet_distance,
    image_features,
    mean_of,
    readings,
    renders,
)
from cdm3d.eval.points_eval import prompts_per_category
from cdm3d.paths import IMAGE_CLASSIFIER
from cdm3d.pipelines import parse_sampling_items
from cdm3d.stages.images.sr import resize_images, through
from cdm3d.types import Images


def _right(judge: ImageClassifier, runs: list[torch.Tensor], prompts) -> tuple[dict, dict]:
    """Whether the render classifier finds each image's category / colour (every seed's images in a row),
    and, per image, the true label and the classifier's reading (``"red -> orange"``)."""
    right: dict = {"category": [], "colour": []}
    said: dict = {"category": [], "colour": []}
    for pixels in runs:
        cat_read, col_read = readings(*judge.predict(pixels))
        for key, read, field in (("category", cat_read, 2), ("colour", col_read, 3)):
            right[key] += [r == p[field] for r, p in zip(read, prompts)]
            said[key] += [f"{p[field]} -> {r}" for r, p in zip(read, prompts)]
    return {k: torch.tensor(v) for k, v in right.items()}, said


def paired(
    base: dict[str, torch.Tensor],
    other: dict[str, torch.Tensor],
    readings: dict | None = None,
    groups: list[str] | None = None,
    prompts: int | None = None,
) -> dict:
    """Images the other stage gets wrong where the base got them right (``lost``) and the reverse
    (``gained``), over the same prompts and seeds, with McNemar's exact two-sided p-value; with the other
    stage's ``readings`` (per image, ``"true -> read"``), how the lost images were read (``lost_as``); with
    ``groups`` (per image, e.g. ``"two colours"``), lost / gained per group (``by_group``); with ``prompts``
    (the images are seeds x prompts, seed-major), the fidelity difference (other - base) and its 95% interval
    by a bootstrap over prompts, every seed of a drawn prompt together (``difference``, ``ci95_by_prompt``):
    McNemar's test treats the images as independent, and a prompt's seeds are not."""
    from collections import Counter

    from scipy.stats import binomtest

    out = {}
    for key in base:
        lost_mask = base[key] & ~other[key]
        gained_mask = ~base[key] & other[key]
        lost, gained = int(lost_mask.sum()), int(gained_mask.sum())
        p = binomtest(lost, lost + gained).pvalue if lost + gained else 1.0
        out[key] = {"lost": lost, "gained": gained, "images": len(base[key]), "p_mcnemar": round(float(p), 4)}
        if readings is not None:
            seen = Counter(r for r, m in zip(readings[key], lost_mask.tolist()) if m)
            out[key]["lost_as"] = dict(seen.most_common())
        if groups is not None:
            out[key]["by_group"] = {
                g: {
                    "images": sum(x == g for x in groups),
                    "lost": sum(x == g and m for x, m in zip(groups, lost_mask.tolist())),
                    "gained": sum(x == g and m for x, m in zip(groups, gained_mask.tolist())),
                }
                for g in sorted(set(groups))
            }
        if prompts is not None:
            per_prompt = (other[key].float() - base[key].float()).view(-1, prompts).mean(0)
            draws = torch.randint(0, prompts, (2000, prompts), generator=torch.Generator().manual_seed(0))
            lo, hi = torch.quantile(per_prompt[draws].mean(1), torch.tensor([0.025, 0.975])).tolist()
            out[key]["difference"] = round(per_prompt.mean().item(), 4)
            out[key]["ci95_by_prompt"] = [round(lo, 4), round(hi, 4)]
    return out


def _row(runs: list[torch.Tensor], fidelity_of, fid_of) -> dict:
    per_seed = [_short(fidelity_of(pixels)) for pixels in runs]
    return {**mean_of(per_seed), "fid_first_seed": fid_of(runs[0]), "per_seed": per_seed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("cdm3d/weights/images"))
    parser.add_argument("--image-classifier", type=Path, default=IMAGE_CLASSIFIER)
    parser.add_argument("--strengths", type=float, nargs="+", default=[1.0, 0.75, 0.5, 0.35, 0.2])
    parser.add_argument("--per-category", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=52)
    parser.add_argument("--split", default="val", choices=["test", "val"])
    parser.add_argument("--two-colour-only", action="store_true", help="prompts of two-colour objects only")
    parser.add_argument("--reference", type=int, default=1000, help="renders in the FID reference set")
    parser.add_argument(
        "--sampling", action="append", default=[], metavar="NAME.KEY=VALUE", help="an image stage's setting"
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sr_strength_sweep_val.json"))
    args = parser.parse_args(argv)
    check_parent(args.out)
    if not all(0 < s <= 1 for s in args.strengths) or args.seeds < 1:
        print("sr_strength_sweep: strengths must lie in (0, 1] and --seeds be at least 1", file=sys.stderr)
        return 2

    from cdm3d.stages import load_builtin

    load_builtin()
    cascade = Cascade.from_pretrained(args.model)
    base_name, sr_name = cascade.names[0], cascade.names[-1]
    try:
        sampling = parse_sampling_items(args.sampling, cascade.names)
    except InputError as err:
        print(f"sr_strength_sweep: {err}", file=sys.stderr)
        return 2
    sampling = {n: sampling.get(n, {}) for n in cascade.names}
    sr = cascade.stages[sr_name]
    clip = cascade.clip
    judge = ImageClassifier.load(args.image_classifier)
    tables = variant_tables(clip)
    prompts = prompts_per_category(args.per_category, args.split, two_colour=args.two_colour_only)
    cond = cascade.encode([p[1] for p in prompts])
    ref = image_features(clip, renders(list(range(2000, 2000 + args.reference)), sr.config.size, args.split))

    def fidelity_of(pixels: torch.Tensor) -> dict:
        return fidelity(clip, pixels, prompts, tables, judge)

    def fid_of(pixels: torch.Tensor) -> float:
        return round(frechet_distance(image_features(clip, pixels), ref), 4)

    base_only = Cascade([(base_name, cascade.stages[base_name])], clip=clip)
    sr_only = Cascade([(sr_name, sr)], clip=clip)
    seeds = [SEED_STRIDE * s for s in range(args.seeds)]
    only_base = {base_name: sampling[base_name]}
    base = [_run(base_only, cond, args.batch, seed=s, sampling=only_base)[base_name] for s in seeds]
    report: dict = {
        "model": str(args.model),
        "split": args.split,
        "prompts": len(prompts),
        "two_colour_only": args.two_colour_only,
        "seeds": seeds,
        "fidelity_instruments": f"render classifier {args.image_classifier} (classifier_*), small CLIP zero-shot",
        "fid_features": "small CLIP image embedding (128-d, L2-normalised), trained on the world",
        "sampling": {n: s.resolve_sampling(sampling[n]).model_dump() for n, s in cascade.stages.items()},
        "base": _row([b.pixels for b in base], fidelity_of, fid_of),
        "sr": {},
    }
    base_right = _right(judge, [b.pixels for b in base], prompts)[0]
    world, low = World(args.split), cascade.stages[base_name].config.size
    colours = ["two colours" if len(world.labels(p[0]).colors) > 1 else "one colour" for p in prompts]
    groups = colours * len(seeds)
    # The instrument: does the render classifier read the prompts' own renders alike at the SR stage's size
    # and through the base stage's size? If so, what the SR stage loses is in its images, not in the reading.
    real = renders([p[0] for p in prompts], sr.config.size, args.split)
    real_right = _right(judge, [real], prompts)[0]
    report["classifier_on_renders_through_base_size"] = paired(
        real_right, _right(judge, [through(real, low)], prompts)[0]
    )
    one = cond.select([0])
    for strength in args.strengths:
        settings = {sr_name: {**sampling[sr_name], "strength": strength}}
        outs = [
            _run(sr_only, cond, args.batch, seed=s, init=b, sampling=settings)[sr_name].pixels
            for s, b in zip(seeds, base)
        ]
        times = []
        for r in range(6):
            t0 = time.perf_counter()
            sr_only.run(one, seed=r, init=base[0][0:1], progress=False, sampling=settings)
            times.append(time.perf_counter() - t0)
        row = _row(outs, fidelity_of, fid_of)
        row["against_base"] = paired(base_right, *_right(judge, outs, prompts), groups=groups, prompts=len(prompts))
        # The SR images brought back to the base's size: what the stage changed in what the base drew
        # (colours, large shapes), apart from the detail it added.
        at_base_size = _right(judge, [through(o, low) for o in outs], prompts)[0]
        row["against_base_at_base_size"] = paired(base_right, at_base_size, prompts=len(prompts))
        # The SR stage on the prompts' own renders shrunk to the base's size (first seed): its errors on an
        # input without the base stage's, against the renders read at the SR size.
        on_real = _run(
            sr_only, cond, args.batch, seed=seeds[0], init=Images(resize_images(real, low)), sampling=settings
        )
        row["on_renders_at_base_size"] = paired(
            real_right, _right(judge, [on_real[sr_name].pixels], prompts)[0], groups=colours, prompts=len(prompts)
        )
        row["sr_steps_run"] = sr.num_steps(settings[sr_name])
        row["sr_seconds_per_image_batch1"] = round(statistics.median(times[1:]), 3)
        report["sr"][f"{strength:g}"] = row
        print(f"strength {strength:g}: {row['classifier_category_fidelity']} / {row['classifier_color_fidelity']}")
    write_text(args.out, json.dumps(report, indent=2))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
