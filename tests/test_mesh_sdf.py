"""mesh.sdf: marching cubes closes surfaces, coarse-to-fine decoding matches the full grid, the stage trains
through the generic trainer, and its inputs fail clearly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from test_trainer import TINY_CLIP

from cdm3d.core import Cascade, ClipEncoder, Conditioning, build_stage, load_stage, save_stage
from cdm3d.errors import ConfigError, InputError, SamplingError
from cdm3d.stages.mesh.sdf import SDFMeshConfig, SDFMeshStage
from cdm3d.training.data.world import build_world_embeddings
from cdm3d.training.trainer import Trainer, TrainRecipe
from cdm3d.types import Meshes, PointClouds

TINY = {
    "type": "mesh.sdf",
    "embed_dim": 16,
    "input_points": 32,
    "network": {"width": 32, "encoder_layers": 1, "decoder_layers": 1, "heads": 2, "fourier": 4},
    "sampling": {"grid": 24},
}


class AnalyticNet(torch.nn.Module):
    """Stands in for the network: a sphere of radius 0.35 at x = 0.3 and a thin rod along y at x = -0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def encode(self, points, emb):
        return {"xyz": points[..., :3]}

    def decode(self, enc, q):
        self.calls += q.shape[0] * q.shape[1]
        ball = (q - torch.tensor([0.3, 0.0, 0.0])).norm(dim=-1) - 0.35
        rod = (q[..., [0, 2]] - torch.tensor([-0.5, 0.0])).norm(dim=-1) - 0.06
        rod = torch.maximum(rod, q[..., 1].abs() - 0.6)
        return torch.minimum(ball, rod)


def _cond(batch: int, dim: int = 16) -> Conditioning:
    return Conditioning({"text": torch.randn(batch, dim)}, {"text": torch.zeros(dim), "image": torch.zeros(dim)})


def _clouds(batch: int, n: int = 200) -> PointClouds:
    g = torch.Generator().manual_seed(0)
    return PointClouds(torch.rand(batch, n, 3, generator=g) - 0.5, torch.rand(batch, n, 3, generator=g))


def _analytic_stage(**sampling) -> SDFMeshStage:
    stage = build_stage({**TINY, "sampling": {"grid": 48, **sampling}})
    stage.net = AnalyticNet()
    return stage


def test_marching_cubes_of_a_sphere_is_closed_outward_and_accurate() -> None:
    stage = build_stage(TINY)
    ax = np.linspace(-1, 1, 64)
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    values = np.clip(np.sqrt((x - 0.2) ** 2 + y**2 + z**2) - 0.5, -0.1, 0.1)
    v, f = stage.marching_cubes(values)
    mesh = trimesh.Trimesh(v, f)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(4 / 3 * np.pi * 0.125, rel=0.02)  # positive: normals point outward
    assert np.allclose(mesh.bounds, [[-0.3, -0.5, -0.5], [0.7, 0.5, 0.5]], atol=0.01)
    smoothed = trimesh.Trimesh(*stage.marching_cubes(values, smooth=10))
    assert smoothed.is_watertight and smoothed.volume == pytest.approx(mesh.volume, rel=0.02)  # Taubin: no shrink
    assert not np.allclose(smoothed.vertices, mesh.vertices)


def test_a_surface_cut_by_the_grid_border_is_closed() -> None:
    stage = build_stage(TINY)
    ax = np.linspace(-1, 1, 32)
    x, _, _ = np.meshgrid(ax, ax, ax, indexing="ij")
    v, f = stage.marching_cubes(np.clip(x - 0.2, -0.1, 0.1))  # everything left of x = 0.2 is "inside"
    assert trimesh.Trimesh(v, f).is_watertight


def test_small_pieces_are_dropped_and_the_largest_kept() -> None:
    stage = build_stage(TINY)
    ax = np.linspace(-1, 1, 48)
    x, y, z = np.meshgrid(ax, ax, ax, indexing="ij")
    big = np.sqrt(x**2 + y**2 + z**2) - 0.5
    speck = np.sqrt((x - 0.85) ** 2 + (y - 0.85) ** 2 + (z - 0.85) ** 2) - 0.06
    values = np.clip(np.minimum(big, speck), -0.1, 0.1)
    _, kept = stage.marching_cubes(values, min_component=0.05)
    _, every = stage.marching_cubes(values, min_component=0.0)
    assert len(trimesh.Trimesh(*stage.marching_cubes(values, 0.0)).split(only_watertight=False)) == 2
    assert 0 < len(kept) < len(every)
    assert len(trimesh.Trimesh(*stage.marching_cubes(values, 0.05)).split(only_watertight=False)) == 1


def test_coarse_to_fine_decoding_matches_the_full_grid_with_fewer_queries() -> None:
    full, fine = _analytic_stage(refine=False), _analytic_stage(refine=True)
    clouds, cond = _clouds(2), _cond(2)
    a = full.sdf_grid(clouds, cond)
    b = fine.sdf_grid(clouds, cond)
    assert a.shape == (2, 48, 48, 48)
    assert torch.equal(a.sign(), b.sign())  # the thin rod (0.06 < a coarse cell) is found too
    near = a.abs() < 0.09
    assert torch.allclose(a[near], b[near])
    assert fine.net.calls < 0.6 * full.net.calls


def test_sample_gives_watertight_coloured_meshes_for_a_batch() -> None:
    stage = _analytic_stage(min_component=0.0)
    clouds = _clouds(2)
    meshes = stage.sample(clouds, _cond(2))
    assert isinstance(meshes, Meshes) and len(meshes) == 2
    for i in range(2):
        mesh = meshes.to_trimesh(i)
        assert mesh.is_watertight and mesh.volume > 0
        assert len(mesh.split(only_watertight=False)) == 2  # the ball and the rod
        v = meshes.vertices[i].numpy()
        d = np.linalg.norm(v[:, None] - clouds.coords[i].numpy()[None], axis=-1)
        assert torch.equal(meshes.colors[i], clouds.colors[i][torch.from_numpy(d.argmin(1))])


def test_no_surface_is_a_sampling_error_and_bad_inputs_are_input_errors() -> None:
    stage = build_stage(TINY)
    torch.nn.init.constant_(stage.net.head.bias, 1.0)
    torch.nn.init.zeros_(stage.net.head.weight)
    with pytest.raises(SamplingError, match="no surface"):
        stage.sample(_clouds(1), _cond(1))
    nan = _clouds(1)
    nan.coords[0, 3, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        stage.sample(nan, _cond(1))
    with pytest.raises(InputError, match="16-d"):
        stage.sample(_clouds(1), _cond(1, dim=8))
    with pytest.raises(InputError, match="batch"):
        stage.sample(_clouds(2), _cond(1))
    with pytest.raises(ConfigError):
        stage.sample(_clouds(1), _cond(1), sampling={"grid": 4})
    with pytest.raises(ConfigError):
        stage.sample(_clouds(1), _cond(1), sampling={"steps": 4})


def test_weights_round_trip_and_a_cascade_accepts_the_stage(tmp_path) -> None:
    stage = build_stage(TINY)
    save_stage(stage, tmp_path / "sdf.safetensors")
    loaded = load_stage(tmp_path / "sdf.safetensors", "mesh.sdf")
    clouds, cond = _clouds(1), _cond(1)
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert torch.equal(stage.sdf_grid(clouds, cond, generator=g()), loaded.sdf_grid(clouds, cond, generator=g()))
    assert isinstance(loaded.config, SDFMeshConfig)
    Cascade([("mesh", loaded)])  # a consumer of point clouds is a valid (slice of a) cascade


def test_data_parallel_parts_add_up_to_the_whole_loss() -> None:
    stage = build_stage(TINY)
    x0 = torch.rand(4, 64, 4) * 2 - 1
    pts = torch.rand(4, 32, 6) * 2 - 1
    cond = _cond(4)
    whole = stage.loss(x0, cond, pts, torch.Generator().manual_seed(3))
    parts = [stage.loss(x0, cond, pts, torch.Generator().manual_seed(3), part=(r, 2)) for r in range(2)]
    assert torch.allclose(whole, sum(parts) / 2, atol=1e-6)


@pytest.fixture(scope="module")
def sdf_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("sdf")
    build_world_embeddings(ClipEncoder.from_config(TINY_CLIP), "train", 12, d / "emb.safetensors", 2, 1)
    return d


def test_tiny_sdf_training_lowers_the_loss_and_caches_the_data(sdf_data, tmp_path) -> None:
    recipe = TrainRecipe.model_validate(
        {
            "stage": TINY,
            "data": {
                "type": "world.sdf",
                "objects": 12,
                "points": 64,
                "queries": 512,
                "queries_per_example": 128,
                "workers": 1,
                "embeddings": str(sdf_data / "emb.safetensors"),
                "cache_dir": str(sdf_data / "cache"),
            },
            "train": {"steps": 80, "batch_size": 8, "lr": 2e-3, "warmup": 5, "checkpoint_every": 40, "log_every": 10},
        }
    )
    losses = Trainer(recipe, tmp_path / "run").fit(progress=False)
    assert len(losses) == 80
    assert np.mean(losses[-15:]) < 0.7 * np.mean(losses[:15])
    assert (sdf_data / "cache" / "world-sdf-train-12x512.npy").exists()
    stage = load_stage(tmp_path / "run" / "stage.safetensors", "mesh.sdf")
    assert stage.config.input_points == 32


def test_world_sdf_data_refuses_other_stages(sdf_data, tmp_path) -> None:
    recipe = TrainRecipe.model_validate(
        {
            "stage": {"type": "points.coarse", "embed_dim": 16, "num_points": 16, "network": {"width": 16}},
            "data": {"type": "world.sdf", "embeddings": str(sdf_data / "emb.safetensors")},
        }
    )
    with pytest.raises(InputError, match="mesh.sdf"):
        Trainer(recipe, tmp_path / "run")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batched_grid_matches_the_cpu() -> None:
    stage = build_stage({**TINY, "sampling": {"grid": 32, "refine": False}})
    clouds, cond = _clouds(3), _cond(3)
    cpu = stage.sdf_grid(clouds, cond, generator=torch.Generator().manual_seed(0), sampling={"autocast": False})
    gpu = stage.to("cuda").sdf_grid(
        clouds, cond, generator=torch.Generator().manual_seed(0), sampling={"autocast": False}
    )
    assert torch.allclose(cpu, gpu, atol=1e-4)
