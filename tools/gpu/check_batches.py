"""On a GPU machine: batches gathered on the GPU (the trainer's CUDA path) equal the CPU's, and how long each takes.

python3 tools/gpu/check_batches.py --out /tmp/out/batches.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from cdm3d.stages import load_builtin
from cdm3d.training.trainer import Trainer, load_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/train/points_coarse_gpu.yaml")
    parser.add_argument("--objects", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", nargs=2, default=["cpu", "cuda"], help="the two devices compared")
    args = parser.parse_args()
    load_builtin()
    recipe = load_recipe(args.config, {"data.objects": args.objects})
    report: dict[str, object] = {"config": args.config, "batch": args.batch}
    batches: dict[str, tuple] = {}
    first, second = args.devices
    for device in (first, second):
        trainer = Trainer(recipe, tempfile.mkdtemp(), device)
        generator = torch.Generator().manual_seed(0)
        x0, cond, _ = trainer.data.batch(args.batch, generator)
        batches[device] = (x0.cpu(), {k: v.cpu() for k, v in cond.embeddings.items()})
        times = []
        for _ in range(7):
            start = time.perf_counter()
            x0, _, _ = trainer.data.batch(args.batch, generator)
            x0.sum().item()  # waits for the GPU
            times.append(time.perf_counter() - start)
        report[f"{device}_batch_ms_median"] = 1000 * statistics.median(times)
    (x_cpu, c_cpu), (x_gpu, c_gpu) = batches[first], batches[second]
    report["same_points"] = bool(torch.equal(x_cpu, x_gpu))
    report["same_conditioning"] = all(torch.equal(c_cpu[k], c_gpu[k]) for k in c_cpu)
    report["speedup"] = report[f"{first}_batch_ms_median"] / report[f"{second}_batch_ms_median"]
    print(json.dumps(report))
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
