"""Point-E's own code against cdm3d on the same converted weights, at the released geometries: equality and speed.

    # equality of every converted network (the six released kinds) and of the sampled 4096-point clouds
    bash tools/env.sh python benchmarks/pointe.py --check --out benchmarks/results/pointe_check.json
    # seconds per 4096-point sample, both codes in one process, base40M-textvec + upsampler (CPU: a few steps)
    bash tools/env.sh python benchmarks/pointe.py --speed --steps 4 --repeats 3 --out benchmarks/results/pointe_cpu.json
    # on a GPU: Point-E's 64 + 64 steps, batch-1 latency and batch-32 throughput
    python benchmarks/pointe.py --speed --device cuda --steps 64 --batches 1 32 --out pointe_cuda.json

Weights are random (Point-E's own initialisation, its zero-initialised output layers re-randomised), so the
figures say nothing of sample quality: only of equality and speed. Needs Point-E's code (the test oracle) at
../shared/peers/point-e. Every timing is the median of ``--repeats`` runs after one warm-up run, Point-E's and
cdm3d's sampling run alternately from the same seed, and the two clouds compared.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import pointe_oracle  # noqa: E402

# The released geometries (Point-E's models/configs.py); the checkpoint file each stands for.
RELEASED = {
    "base40M-textvec": ("base_40m_textvec.pt", "base"),
    "base40M": ("base_40m.pt", "base"),
    "base300M": ("base_300m.pt", "base"),
    "base1B": ("base_1b.pt", "base"),
    "upsample": ("upsample_40m.pt", "upsampler"),
    "sdf": ("sdf.pt", "sdf"),
}


def released(name: str, seed: int = 0) -> torch.nn.Module:
    return pointe_oracle.model(name, geometry={}, seed=seed)


def converted(net: torch.nn.Module, name: str, tmp: Path):
    from cdm3d.convert.pointe import pointe_stage

    file, slot = RELEASED[name]
    return pointe_stage(pointe_oracle.save(net, tmp / file), slot)


def check_network(name: str, tmp: Path) -> dict:
    """Max |difference| of Point-E's network and the converted one on the same inputs (t = 0, 512, 1023; the
    last example's conditioning zero)."""
    net = released(name)
    stage = converted(net, name, tmp)
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 512, 1023])
    with torch.no_grad():
        if name == "sdf":
            cloud, queries = torch.rand(2, 3, 4096, generator=g) - 0.5, torch.rand(2, 3, 4096, generator=g) - 0.5
            ref = net(queries, point_clouds=cloud)
            ours = stage.net.decode(stage.net.encode(cloud.transpose(1, 2)), queries.transpose(1, 2))
        else:
            n = 3072 if name == "upsample" else 1024
            x = torch.randn(3, 6, n, generator=g)
            kwargs, extra = _conditioning(name, g)
            ref = net(x, t, **kwargs)[:, :6].transpose(1, 2)
            ours = stage.net(x.transpose(1, 2), t.float(), *extra)
    del net, stage
    return {"max_abs_difference": float((ours - ref).abs().max()), "parameters_M": _params(name)}


def _conditioning(name: str, g: torch.Generator) -> tuple[dict, tuple]:
    if name == "base40M-textvec":
        emb = torch.nn.functional.normalize(torch.randn(3, 768, generator=g), dim=-1)
        emb[2] = 0
        return {"embeddings": emb}, (emb[:, None],)
    grid = torch.randn(3, 1024, 256, generator=g)
    grid[2] = 0
    if name != "upsample":
        return {"embeddings": grid}, (grid.transpose(1, 2),)
    low_res = torch.cat([torch.rand(3, 3, 1024, generator=g) - 0.5, torch.rand(3, 3, 1024, generator=g) * 255], 1)
    scale = torch.tensor([2.0, 2.0, 2.0, 2 / 255, 2 / 255, 2 / 255])[None, :, None]
    bias = torch.tensor([0.0, 0.0, 0.0, -1.0, -1.0, -1.0])[None, :, None]
    cond = (low_res * scale + bias).transpose(1, 2)
    return {"embeddings": grid, "low_res": low_res}, (grid.transpose(1, 2), cond, None)


def _params(name: str) -> float:
    geometry = pointe_oracle.point_e().models.configs.MODEL_CONFIGS[name]
    w, layers = geometry["width"], geometry.get("layers", geometry.get("encoder_layers", 0))
    return round(12 * w * w * layers / 1e6, 1)


class Pair:
    """base40M-textvec + upsampler, in Point-E's code and converted into cdm3d, with the same weights."""

    def __init__(self, tmp: Path, device: str) -> None:
        from cdm3d.convert.pointe import pointe_stage

        self.base, self.up = released("base40M-textvec"), released("upsample", seed=1)
        self.ours_base = pointe_stage(pointe_oracle.save(self.base, tmp / "b.pt"), "base").to(device)
        self.ours_up = pointe_stage(pointe_oracle.save(self.up, tmp / "u.pt"), "upsampler").to(device)
        self.base.to(device)
        self.up.to(device)
        self.device = device

    def point_e(self, emb: torch.Tensor, steps: int, seed: int) -> torch.Tensor:
        from point_e.diffusion.sampler import PointCloudSampler

        sampler = PointCloudSampler(
            device=torch.device(self.device),
            models=[self.base, self.up],
            diffusions=[pointe_oracle.diffusion("base40M-textvec"), pointe_oracle.diffusion("upsample")],
            num_points=[1024, 3072],
            aux_channels=["R", "G", "B"],
            guidance_scale=[3.0, 0.0],
            model_kwargs_key_filter=("embeddings", ""),
            karras_steps=(steps, steps),
        )
        torch.manual_seed(seed)
        return sampler.sample_batch(batch_size=len(emb), model_kwargs={"embeddings": emb})

    def cdm3d(self, emb: torch.Tensor, steps: int, seed: int, extra: dict | None = None) -> torch.Tensor:
        from cdm3d.core import Conditioning
        from cdm3d.stages.points.frame import to_network

        cond = Conditioning({"text": emb}, {"text": torch.zeros(768), "image_grid": torch.zeros(256, 1024)})
        g = torch.Generator().manual_seed(seed)
        sampling = {"steps": steps, **(extra or {})}
        coarse = self.ours_base.sample(None, cond, generator=g, sampling=sampling)
        dense = self.ours_up.sample(coarse, cond, generator=g, sampling=sampling)
        xyz = to_network(dense.coords, "pointe") / 2
        return torch.cat([xyz, dense.colors * 255], -1).transpose(1, 2)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[float, torch.Tensor]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return time.perf_counter() - start, out


def speed(args: argparse.Namespace, tmp: Path) -> dict:
    pair = Pair(tmp, args.device)
    report = {}
    for batch in args.batches:
        emb = torch.nn.functional.normalize(torch.randn(batch, 768, generator=torch.Generator().manual_seed(5)), -1)
        emb = emb.to(args.device)
        runs = {"point_e": [], "cdm3d": []}
        diffs = []
        for r in range(args.repeats + 1):  # the first run warms up and is not counted
            t_pe, ref = timed(partial(pair.point_e, emb, args.steps, r), args.device)
            t_ours, ours = timed(partial(pair.cdm3d, emb, args.steps, r), args.device)
            if r:
                runs["point_e"].append(t_pe)
                runs["cdm3d"].append(t_ours)
            diffs.append(_differences(ours.cpu(), ref.cpu()))
        pe, ours = statistics.median(runs["point_e"]), statistics.median(runs["cdm3d"])
        report[str(batch)] = {
            "point_e_s": round(pe, 3),
            "cdm3d_s": round(ours, 3),
            "point_e_samples_per_s": round(batch / pe, 4),
            "cdm3d_samples_per_s": round(batch / ours, 4),
            "speedup": round(pe / ours, 3),
            "runs_s": {k: [round(v, 3) for v in vs] for k, vs in runs.items()},
            "same_cloud": {k: max(d[k] for d in diffs) for k in diffs[0]},
        }
    report["where_the_time_goes"] = forwards(pair, args)
    return report


def _differences(ours: torch.Tensor, ref: torch.Tensor) -> dict:
    return {
        "xyz_max_abs": float((ours[:, :3] - ref[:, :3]).abs().max()),
        "rgb_max_abs_0_255": float((ours[:, 3:] - ref[:, 3:].clamp(0, 255)).abs().max()),
    }


def forwards(pair: Pair, args: argparse.Namespace) -> dict:
    """One denoiser forward of each network in each code at the batch a sampling step runs (the base guided:
    twice the samples), median of 5: how much of the gap is the network, and how much the sampler around it."""
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, net, stage, n, batch in (
        ("base", pair.base, pair.ours_base, 1024, 2),
        ("upsample", pair.up, pair.ours_up, 3072, 1),
    ):
        x = torch.randn(batch, 6, n, generator=g).to(args.device)
        t = torch.full((batch,), 500, device=args.device)
        kwargs, extra = _conditioning("base40M-textvec" if name == "base" else "upsample", g)
        kwargs = {k: v[:batch].to(args.device) for k, v in kwargs.items()}
        extra = tuple(None if e is None else e[:batch].to(args.device) for e in extra)
        with torch.no_grad():
            pe = _median_time(partial(net, x, t, **kwargs), args.device)
            ours = _median_time(partial(stage.net, x.transpose(1, 2), t.float(), *extra), args.device)
        out[name] = {"point_e_forward_s": round(pe, 4), "cdm3d_forward_s": round(ours, 4)}
    evals = 2 * args.steps - 1  # Heun: two network calls a step, one on the last
    for name in out:
        out[name]["network_calls_per_sample"] = evals
    return out


def _median_time(fn, device: str, runs: int = 5) -> float:
    """The median seconds of ``runs`` calls after one warm-up call."""
    return statistics.median([timed(fn, device)[0] for _ in range(runs + 1)][1:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="equality of every released kind, and of the clouds")
    parser.add_argument("--speed", action="store_true", help="seconds per sample of both codes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=4, help="Karras-Heun steps per stage")
    parser.add_argument("--batches", type=int, nargs="+", default=[1])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if not pointe_oracle.AVAILABLE:
        raise SystemExit(f"pointe: Point-E's code is not at {pointe_oracle.PEERS}")
    pointe_oracle.point_e()
    from cdm3d.stages import load_builtin

    load_builtin()
    report = {
        "command": "python benchmarks/pointe.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": _machine(args.device),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        if args.check:
            report["networks"] = {name: check_network(name, Path(tmp)) for name in RELEASED}
            pair = Pair(Path(tmp), args.device)
            emb = torch.nn.functional.normalize(torch.randn(2, 768, generator=torch.Generator().manual_seed(5)), -1)
            report["text_pipeline_8_steps"] = _differences(pair.cdm3d(emb, 8, 7), pair.point_e(emb, 8, 7))
        if args.speed:
            report["steps"] = args.steps
            report["speed"] = speed(args, Path(tmp))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


def _machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    import os

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{platform.machine()}, {cores} CPU cores"


if __name__ == "__main__":
    sys.exit(main())
