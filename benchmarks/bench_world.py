"""Speed of the procedural world and the renderer, written as JSON.

    bash tools/env.sh python benchmarks/bench_world.py --out benchmarks/results/world.json

Reports medians over several repeats: world objects per second (mesh only, and with
a 4096-point cloud), and render times of a mesh and of a 4096-point cloud at 64 and 512 px.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from cdm3d.data.world import World
from cdm3d.render import Camera, render_mesh, render_points


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/world.json"))
    parser.add_argument("--objects", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    world = World("train")
    world[0]  # warm up imports
    n = args.objects
    t_mesh = _median_time(lambda: [world[i] for i in range(n)], 3)
    t_points = _median_time(lambda: [world[i].points(4096) for i in range(n)], 3)
    objs = [world[i] for i in range(20)]
    tensors = [(torch.from_numpy(o.vertices), torch.from_numpy(o.faces), torch.from_numpy(o.face_colors)) for o in objs]
    clouds = [tuple(map(torch.from_numpy, o.points(4096))) for o in objs]
    cam = Camera()
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads",
        "objects_per_s": round(n / t_mesh, 1),
        "objects_with_4096_points_per_s": round(n / t_points, 1),
    }
    for size in (64, 512):
        t = _median_time(lambda size=size: [render_mesh(*m, cam, size=size) for m in tensors], args.repeats)
        result[f"render_mesh_{size}px_ms"] = round(1000 * t / len(tensors), 2)
        t = _median_time(lambda size=size: [render_points(*c, cam, size=size) for c in clouds], args.repeats)
        result[f"render_points_{size}px_ms"] = round(1000 * t / len(clouds), 2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
