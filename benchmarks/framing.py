"""How much of the frame the world's objects fill, and what reframing does for the small CLIP; JSON.

    bash tools/env.sh python benchmarks/framing.py --model cdm3d/weights/default \
        --out benchmarks/results/framing.json

The small CLIP (and the embeddings the point stages train on) sees views from
``cdm3d.render.camera.random_camera`` (distance 2.7); the image stages and the image ->
3D evaluation use the default camera (distance 3.2), where objects are smaller.
This script measures the object fill (``cdm3d.core.framing.object_fill``) of both
kinds of view on training objects, and the CLIP's zero-shot category and colour
accuracy on default-camera renders of test objects as they are and reframed to
the training views' median fill, and on renders from the training distance as
they are and reframed (what reframing costs images already framed as in
training). The median it reports is the ``--clip-image-fill`` that
configs/README.md assembles the cascade with.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

from cdm3d.core.checkpoint import atomic_path, check_parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("cdm3d/weights/default"))
    parser.add_argument("--objects", type=int, default=400, help="training objects whose fill is measured")
    parser.add_argument("--test-objects", type=int, default=500)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/framing.json"))
    args = parser.parse_args(argv)
    check_parent(args.out)

    from cdm3d.core import Cascade
    from cdm3d.core.framing import object_fill, reframe
    from cdm3d.data.vocab import CATEGORIES, COLORS
    from cdm3d.data.world import World
    from cdm3d.eval.clip_eval import attribute_aware_predict, variant_tables
    from cdm3d.render import Camera
    from cdm3d.render.camera import random_camera

    clip = Cascade.from_pretrained(args.model).clip
    size = clip.image_size
    train, rng = World("train"), random.Random(0)
    views = torch.stack([train[i].render(random_camera(rng), size=size).permute(2, 0, 1) for i in range(args.objects)])
    default = torch.stack([train[i].render(size=size).permute(2, 0, 1) for i in range(args.objects)])

    def stats(fill: torch.Tensor) -> dict[str, float]:
        q = torch.tensor([0.25, 0.5, 0.75])
        lo, mid, hi = fill.nanquantile(q).tolist()
        return {"median": round(mid, 4), "quartile_1": round(lo, 4), "quartile_3": round(hi, 4)}

    fill_views, fill_default = stats(object_fill(views)), stats(object_fill(default))
    target = fill_views["median"]
    test = World("test")
    objects = [test[i] for i in range(args.test_objects)]
    tables = variant_tables(clip)
    cats, cols = list(CATEGORIES), list(COLORS)

    def zero_shot(images: torch.Tensor) -> dict[str, float]:
        cat, col = attribute_aware_predict(clip, clip.encode_image(images), tables)
        cat_ok = [cats[c] == o.labels.category for c, o in zip(cat.tolist(), objects)]
        col_ok = [cols[c] == o.labels.colors[0] for c, o in zip(col.tolist(), objects)]
        n = len(objects)
        return {"category_accuracy": round(sum(cat_ok) / n, 4), "color_accuracy": round(sum(col_ok) / n, 4)}

    as_given = torch.stack([o.render(size=size).permute(2, 0, 1) for o in objects])
    near = torch.stack([o.render(Camera(distance=2.7), size=size).permute(2, 0, 1) for o in objects])
    report = {
        "model": str(args.model),
        "clip_image_size": size,
        "fill_of_clip_training_views": {**fill_views, "objects": args.objects, "camera": "random_camera, distance 2.7"},
        "fill_of_default_camera_renders": {**fill_default, "objects": args.objects, "camera": "Camera(), distance 3.2"},
        "zero_shot_on_test_renders": {
            "objects": args.test_objects,
            "default_camera_as_given": zero_shot(as_given),
            f"default_camera_reframed_to_{target:g}": zero_shot(reframe(as_given, target)),
            "training_distance_2.7_as_given": zero_shot(near),
            f"training_distance_2.7_reframed_to_{target:g}": zero_shot(reframe(near, target)),
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    with atomic_path(args.out) as tmp:
        tmp.write_text(text)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
