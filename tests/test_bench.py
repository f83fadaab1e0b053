"""``cdm3d bench``: the sampling benchmark runs on the CPU with a tiny geometry and writes every figure."""

from __future__ import annotations

import json

from cdm3d.cli import main


def test_bench_writes_latency_throughput_and_flops(tmp_path, capsys) -> None:
    out = tmp_path / "bench.json"
    argv = ["bench", "--geometry", "tiny", "--batches", "1", "2", "--repeats", "1", "--compare", "--out", str(out)]
    assert main([*argv, "--mesh-grids", "16"]) == 0
    (result,) = json.loads(out.read_text())["results"]
    assert set(result["latency_batch1_s"]) == {"coarse", "upsample", "end_to_end"}
    assert all(v > 0 for v in result["latency_batch1_s"].values())
    assert set(result["throughput"]) == {"1", "2"} and result["throughput"]["2"]["samples_per_s"] > 0
    assert result["compare"]["speedup"] > 0
    # FLOPs of the guided coarse forward (batch 2 x 2 for guidance): matmuls 24 w^2 per token and layer,
    # attention 4 n^2 w per layer, plus the small input/output/CLIP projections.
    w, layers, n, batch = 64, 2, 256 + 3, 4
    expected = batch * layers * (24 * w * w * n + 4 * n * n * w)
    assert abs(result["denoiser"]["coarse"]["GFLOP_per_forward"] * 1e9 / expected - 1) < 0.05
    assert result["denoiser"]["coarse"]["fraction_of_dense_bf16_peak"] is None  # no peak on a CPU
    runs = result["mesh_sdf"]["runs"]
    assert [(r["batch"], r["grid"]) for r in runs] == [(1, 16), (2, 16)]
    assert all(
        r["distance_grid_s_full"] > 0 and r["distance_grid_s_refine"] > 0 and len(r["faces"]) == r["batch"]
        for r in runs
    )


def test_bench_bad_arguments(tmp_path, capsys) -> None:
    assert main(["bench", "--geometry", "huge"]) == 2
    assert "unknown geometry 'huge'" in capsys.readouterr().err
    assert main(["bench", "--batches", "0"]) == 2
    assert main(["bench", "--mesh-grids", "4"]) == 2
    assert "at least 8" in capsys.readouterr().err
    assert main(["bench", "--out", str(tmp_path / "no" / "b.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_compiled_sampling_matches_eager() -> None:
    """``sampling.compile`` (torch.compile of the denoiser) gives the eager samples on the CPU."""
    import shutil

    import pytest
    import torch

    if not (shutil.which("cc") or shutil.which("gcc")):
        pytest.skip("torch.compile on the CPU needs a C compiler")

    from cdm3d.eval.bench import point_cascade, random_conditioning

    cascade = point_cascade("tiny", "cpu")
    cond = random_conditioning(cascade, 2)
    settings = {"steps": 2}
    eager = cascade.run(cond, stop_at="coarse", sampling={"coarse": settings}, progress=False).final
    compiled = cascade.run(
        cond, stop_at="coarse", sampling={"coarse": {**settings, "compile": True}}, progress=False
    ).final
    assert torch.allclose(eager.coords, compiled.coords, atol=1e-4)
    assert "_compiled" in cascade.stages["coarse"].__dict__ and "_compiled" not in dict(
        cascade.stages["coarse"].named_modules()
    )
