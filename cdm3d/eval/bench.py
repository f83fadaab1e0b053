"""Sampling speed of point cascades: latency, throughput, peak memory, denoiser TFLOP/s.

Used by ``cdm3d bench``. Speed does not depend on training, so a geometry can be
measured with random weights:

* ``tiny``    a CPU-sized pair (seconds);
* ``pointe``  Point-E's base40M + upsampler geometry (1024 + 3072 points, width
  512, 12 layers, 8 heads) with 64 + 64 Karras-Heun steps, guidance 3 on the base;
* a cascade folder: its point stages, with their own weights and settings.

Timings are medians over ``repeats`` runs after one warm-up run, with the
device synchronised around each run only (never inside the sampling loop).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from cdm3d.core import Cascade, Conditioning, build_stage
from cdm3d.errors import InputError

# Dense bf16 tensor-core peaks (TFLOP/s, without sparsity) from the vendors' data sheets.
DENSE_BF16_PEAK_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 PCIe": 756.0, "A100": 312.0}

GEOMETRIES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "tiny": (
        {
            "type": "points.coarse",
            "cond_keys": ["text", "image"],
            "embed_dim": 128,
            "num_points": 256,
            "network": {"width": 64, "layers": 2, "heads": 2},
            "sampling": {"scheduler": "dpm++", "steps": 8, "guidance_scale": 3.0},
        },
        {
            "type": "points.upsample",
            "cond_keys": ["text", "image"],
            "embed_dim": 128,
            "coarse_points": 256,
            "num_points": 768,
            "network": {"width": 64, "layers": 2, "heads": 2},
            "sampling": {"scheduler": "dpm++", "steps": 8, "guidance_scale": 1.0},
        },
    ),
    "pointe": (
        {
            "type": "points.coarse",
            "cond_keys": ["text", "image"],
            "embed_dim": 128,
            "num_points": 1024,
            "network": {"width": 512, "layers": 12, "heads": 8},
            "sampling": {"scheduler": "karras-heun", "steps": 64, "guidance_scale": 3.0},
        },
        {
            "type": "points.upsample",
            "cond_keys": ["text", "image"],
            "embed_dim": 128,
            "coarse_points": 1024,
            "num_points": 3072,
            "network": {"width": 512, "layers": 12, "heads": 8},
            "diffusion": {"augmentation": {"max_level": 0.3}},
            "sampling": {"scheduler": "karras-heun", "steps": 64, "guidance_scale": 1.0},
        },
    ),
}


def peak_tflops(device: torch.device) -> float | None:
    """The card's dense bf16 peak, when it is one we know; ``None`` on the CPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in DENSE_BF16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def _randomise_zeros(*stages: Any) -> None:
    """Give zero-initialised layers random weights (seeded), so random-weight timings do real arithmetic."""
    torch.manual_seed(0)
    for stage in stages:
        for p in stage.parameters():
            if p.ndim >= 1 and p.abs().sum() == 0:
                torch.nn.init.normal_(p, std=0.02)


def point_cascade(geometry: str | Path, device: str) -> Cascade:
    """The two point stages of a named geometry (random weights) or of a cascade folder (its weights)."""
    if str(geometry) in GEOMETRIES:
        coarse, upsample = (build_stage(c) for c in GEOMETRIES[str(geometry)])
        _randomise_zeros(coarse, upsample)
        return Cascade([("coarse", coarse), ("upsample", upsample)]).to(device)
    path = Path(geometry)
    if not path.is_dir():
        raise InputError(f"unknown geometry {geometry!r}: use {', '.join(GEOMETRIES)} or a cascade folder")

    return Cascade.from_pretrained(path, load_clip=False).producing("PointClouds", selectors=False).to(device)


def random_conditioning(cascade: Cascade, batch: int) -> Conditioning:
    """Random unit CLIP embeddings in the text slot, and in every other slot a stage requires (a converted
    image-conditioned Point-E model: a random image grid)."""
    dim = next(iter(cascade.stages.values())).config.embed_dim
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(batch, dim, generator=g), dim=-1)
    null = torch.nn.functional.normalize(torch.randn(dim, generator=g), dim=-1)
    embeddings, nulls = {"text": text}, {"text": null, "image": torch.zeros(dim)}
    for stage in cascade.stages.values():
        cfg = stage.config
        for key in getattr(cfg, "requires", []):
            shape = (cfg.slot_tokens[key], cfg.embed_dim) if key in cfg.slot_tokens else (cfg.embed_dim,)
            embeddings.setdefault(key, torch.randn(batch, *shape, generator=g))
            nulls.setdefault(key, torch.zeros(shape))
    return Conditioning(embeddings, nulls)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def denoiser_flops(stage: Any, batch: int, device: torch.device) -> tuple[float, Callable[[], Any]]:
    """FLOPs of one denoiser forward at ``batch`` (torch's flop counter) and a closure running it."""
    from torch.utils.flop_counter import FlopCounterMode

    shape = (batch, *stage.sample_shape())
    x = torch.randn(shape, device=device)
    t = torch.full((batch,), 500.0, device=device)
    emb = torch.randn(batch, len(stage.config.cond_keys), stage.config.embed_dim, device=device)
    cond = level = None
    if stage.consumes is not None:
        cond = torch.randn(batch, stage.config.coarse_points, 6, device=device)
        level = torch.zeros(batch, device=device)
    net = stage.net.eval()

    def forward() -> Any:
        with torch.no_grad(), torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda"):
            return net(x, t, emb, cond, level)

    with _AttentionFlops() as attention, FlopCounterMode(display=False) as counter:
        forward()
    # The counter knows the matmuls everywhere but not every device's attention kernel (not the CPU's):
    # count attention from the SDPA calls themselves (4 B H Lq Lk D, QK^T and AV) and drop its own count.
    counted = {str(op): n for op, n in counter.get_flop_counts().get("Global", {}).items()}
    own_attention = sum(n for op, n in counted.items() if "attention" in op)
    return float(counter.get_total_flops() - own_attention + attention.flops), forward


class _AttentionFlops(torch.overrides.TorchFunctionMode):
    """Counts the FLOPs of every ``scaled_dot_product_attention`` call made inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.scaled_dot_product_attention:
            q, k = args[0], args[1]
            *batch, lq, d = q.shape
            self.flops += 4 * int(torch.tensor(batch).prod()) * lq * k.shape[-2] * d
        return func(*args, **(kwargs or {}))


def bench(
    geometry: str | Path = "tiny",
    device: str = "cpu",
    batches: tuple[int, ...] = (1, 8),
    repeats: int = 3,
    overrides: dict[str, Any] | None = None,
    flops_batch: int | None = None,
) -> dict[str, Any]:
    """Every figure for one geometry on one device, as a JSON-ready dict.

    ``overrides`` (solver, steps, autocast, compile, ...) apply to every stage.
    """
    dev = torch.device(device)
    cascade = point_cascade(geometry, device)
    names = cascade.names
    sampling = {n: dict(overrides or {}) for n in names}
    settings = {n: cascade.stages[n].resolve_sampling(sampling[n]).model_dump() for n in names}
    result: dict[str, Any] = {
        "geometry": str(geometry),
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({platform.processor() or 'x86'})",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "sampling": settings,
        "parameters_M": {n: round(sum(p.numel() for p in s.parameters()) / 1e6, 2) for n, s in cascade.stages.items()},
    }

    result["latency_batch1_s"] = _latency(cascade, sampling, dev, repeats)
    result["throughput"] = _throughput(cascade, sampling, dev, batches, repeats)
    result["denoiser"] = _denoiser_rates(cascade, settings, dev, flops_batch or max(batches), repeats)
    result["dense_bf16_peak_TFLOPs"] = peak_tflops(dev)
    return result


def _latency(cascade: Cascade, sampling: dict, dev: torch.device, repeats: int) -> dict[str, float]:
    """Batch-1 seconds per stage and end to end (the first stage's output feeds the later stages' timing)."""
    names = cascade.names
    cond1 = random_conditioning(cascade, 1)
    coarse_out = cascade.run(cond1, stop_at=names[0], sampling=sampling, progress=False).final
    per_stage = {}
    for i, name in enumerate(names):
        kwargs = {"start_at": name, "stop_at": name, "init": coarse_out if i else None}
        seconds = _median_seconds(
            lambda kw=kwargs: cascade.run(cond1, sampling=sampling, progress=False, **kw), dev, repeats
        )
        per_stage[name] = round(seconds, 4)
    end_to_end = _median_seconds(lambda: cascade.run(cond1, sampling=sampling, progress=False), dev, repeats)
    return {**per_stage, "end_to_end": round(end_to_end, 4)}


def _throughput(
    cascade: Cascade, sampling: dict, dev: torch.device, batches: tuple[int, ...], repeats: int
) -> dict[str, dict]:
    """Seconds, samples per second and peak memory per batch size."""
    throughput = {}
    for batch in sorted(batches):
        cond = random_conditioning(cascade, batch)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        try:
            seconds = _median_seconds(
                lambda c=cond: cascade.run(c, sampling=sampling, progress=False), dev, repeats, warmup=1
            )
        except torch.OutOfMemoryError:
            throughput[str(batch)] = {"out_of_memory": True}
            torch.cuda.empty_cache()
            continue
        entry = {"seconds": round(seconds, 4), "samples_per_s": round(batch / seconds, 4)}
        if dev.type == "cuda":
            entry["peak_memory_GiB"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        else:  # the process's peak resident memory so far (it only grows; batches run in increasing size)
            import resource

            entry["process_peak_rss_GiB"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
        throughput[str(batch)] = entry
    return throughput


def _denoiser_rates(cascade: Cascade, settings: dict, dev: torch.device, batch: int, repeats: int) -> dict[str, dict]:
    """Sustained denoiser TFLOP/s per stage (the guided batch: twice the samples when guidance is on)."""
    peak = peak_tflops(dev)
    rates = {}
    for name, stage in cascade.stages.items():
        guided_batch = batch * (2 if settings[name]["guidance_scale"] not in (0.0, 1.0) else 1)
        flops, forward = denoiser_flops(stage, guided_batch, dev)
        seconds = _median_seconds(forward, dev, max(repeats, 5), warmup=2)
        tflops = flops / seconds / 1e12
        rates[name] = {
            "batch": guided_batch,
            "GFLOP_per_forward": round(flops / 1e9, 2),
            "forward_s": round(seconds, 5),
            "TFLOPs": round(tflops, 3),
            "fraction_of_dense_bf16_peak": None if peak is None else round(tflops / peak, 4),
        }
    return rates


def compare_settings(
    geometry: str | Path, device: str, baseline: dict[str, Any], optimised: dict[str, Any], repeats: int = 3
) -> dict[str, Any]:
    """End-to-end batch-1 latency under two sampling settings in the same process, and their ratio."""
    dev = torch.device(device)
    cascade = point_cascade(geometry, device)
    cond = random_conditioning(cascade, 1)
    out = {}
    for label, settings in (("baseline", baseline), ("optimised", optimised)):
        per_stage = {n: dict(settings) for n in cascade.stages}
        seconds = _median_seconds(lambda p=per_stage: cascade.run(cond, sampling=p, progress=False), dev, repeats)
        out[label] = {"settings": settings, "seconds": round(seconds, 4)}
    out["speedup"] = round(out["baseline"]["seconds"] / out["optimised"]["seconds"], 3)
    return out


# A mesh.sdf stage of the shipped CPU geometry (configs/stages/mesh/sdf.yaml), for random-weight timings.
SDF_GEOMETRY: dict[str, Any] = {
    "type": "mesh.sdf",
    "cond_keys": ["text", "image"],
    "embed_dim": 128,
    "input_points": 512,
    "network": {"width": 96, "encoder_layers": 3, "decoder_layers": 1, "heads": 4, "fourier": 6, "neighbours": 8},
}


def mesh_stage(geometry: str | Path, device: str) -> Any:
    """The ``mesh.sdf`` stage of a cascade folder, or one of the shipped geometry with random weights that
    draws a sphere-like surface (so marching cubes has a real surface to extract)."""
    path = Path(geometry)
    if path.is_dir():
        stages = [s for s in Cascade.from_pretrained(path, load_clip=False).stages.values()]
        found = [s for s in stages if s.config.type == "mesh.sdf"]
        if found:
            return found[-1].to(device)
    stage = build_stage(SDF_GEOMETRY)
    _randomise_zeros(stage)
    return stage.to(device)


def bench_mesh(
    geometry: str | Path,
    device: str,
    grids: tuple[int, ...] = (64, 128),
    batches: tuple[int, ...] = (1,),
    repeats: int = 3,
) -> dict[str, Any]:
    """``mesh.sdf`` timings per grid size and batch: the distance grid (encoder + batched query decoding, with and
    without coarse-to-fine refinement) and marching cubes, medians of ``repeats`` runs after a warm-up."""
    from cdm3d.types import PointClouds

    dev = torch.device(device)
    stage = mesh_stage(geometry, device)
    out: dict[str, Any] = {"geometry": str(geometry), "trained": Path(geometry).is_dir(), "runs": []}
    g = torch.Generator().manual_seed(0)
    for batch in batches:
        xyz = torch.nn.functional.normalize(torch.randn(batch, 1024, 3, generator=g), dim=-1) * 0.6
        clouds = PointClouds(xyz, torch.rand(batch, 1024, 3, generator=g))
        cond = Conditioning(
            {"text": torch.nn.functional.normalize(torch.randn(batch, stage.config.embed_dim, generator=g), dim=-1)},
            {"text": torch.zeros(stage.config.embed_dim), "image": torch.zeros(stage.config.embed_dim)},
        )
        for grid in grids:
            row: dict[str, Any] = {"batch": batch, "grid": grid}
            for refine in (False, True):
                sampling = {"grid": grid, "refine": refine}
                seconds = _median_seconds(
                    lambda s=sampling, c=clouds, k=cond: stage.sdf_grid(c, k, sampling=s), dev, repeats
                )
                row[f"distance_grid_s_{'refine' if refine else 'full'}"] = round(seconds, 4)
            values = stage.sdf_grid(clouds, cond, sampling={"grid": grid})
            start = time.perf_counter()
            faces = [len(stage.marching_cubes(values[i].numpy())[1]) for i in range(batch)]
            row["marching_cubes_s"] = round(time.perf_counter() - start, 4)
            row["faces"] = faces
            out["runs"].append(row)
    return out
