"""mesh.poisson: world point clouds become coloured meshes that reopen with their colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cdm3d.core import Cascade, Conditioning, build_stage, load_stage, save_stage
from cdm3d.data.world import World
from cdm3d.errors import InputError
from cdm3d.types import Meshes, PointClouds


def _cloud(category: str, n: int = 3000) -> tuple[PointClouds, object]:
    world = World("train")
    i = next(i for i in range(500) if world.labels(i).category == category)
    obj = world[i]
    xyz, rgb = obj.points(n)
    return PointClouds(torch.from_numpy(xyz)[None], torch.from_numpy(rgb)[None]), obj


def _cond(batch: int = 1) -> Conditioning:
    return Conditioning({"text": torch.zeros(batch, 4)}, {"text": torch.zeros(4)})


@pytest.fixture(scope="module")
def sphere_mesh() -> tuple[Meshes, object]:
    stage = build_stage({"type": "mesh.poisson", "depth": 6})
    cloud, obj = _cloud("sphere")
    return stage.sample(cloud, _cond()), obj


def test_poisson_mesh_lies_on_the_cloud_and_keeps_its_colour(sphere_mesh) -> None:
    meshes, obj = sphere_mesh
    assert len(meshes) == 1 and len(meshes.faces[0]) > 500
    v = meshes.vertices[0].numpy()
    dist = np.abs(obj.sdf(v))
    assert np.median(dist) < 0.02
    target = obj.face_colors[0]
    assert np.abs(meshes.colors[0].numpy().mean(0) - target).max() < 0.05


def test_meshes_reopen_with_their_colours(sphere_mesh, tmp_path) -> None:
    import open3d as o3d
    import trimesh

    meshes, obj = sphere_mesh
    target = obj.face_colors[0]
    for fmt in (".glb", ".obj", ".ply"):
        path = meshes.save(tmp_path / f"m{fmt}")
        loaded = trimesh.load(path, force="mesh")
        visual = loaded.visual.to_color() if loaded.visual.kind == "texture" else loaded.visual
        colors = np.asarray(visual.vertex_colors)[:, :3] / 255
        assert len(loaded.faces) == len(meshes.faces[0]), fmt
        assert np.abs(colors.mean(0) - target).max() < 0.06, fmt
    o3d_mesh = o3d.io.read_triangle_mesh(str(tmp_path / "m.ply"))
    assert o3d_mesh.has_vertex_colors() and len(o3d_mesh.triangles) == len(meshes.faces[0])
    with pytest.raises(InputError, match="exists"):
        meshes.save(tmp_path / "m.glb")
    with pytest.raises(InputError, match="unknown mesh format"):
        meshes.save(tmp_path / "m.stl")


def test_poisson_stage_bad_input_and_weights_round_trip(tmp_path) -> None:
    stage = build_stage({"type": "mesh.poisson", "depth": 5})
    with pytest.raises(InputError):
        stage.sample(None, _cond())
    nan = PointClouds(torch.full((1, 100, 3), float("nan")), torch.rand(1, 100, 3))
    with pytest.raises(InputError, match="NaN"):
        stage.sample(nan, _cond())
    with pytest.raises(InputError, match="too few"):
        stage.sample(PointClouds(torch.rand(1, 5, 3), torch.rand(1, 5, 3)), _cond())
    save_stage(stage, tmp_path / "p.safetensors")
    assert load_stage(tmp_path / "p.safetensors").config.depth == 5


def test_poisson_stage_chains_after_point_stages() -> None:
    up = build_stage(
        {
            "type": "points.upsample",
            "embed_dim": 4,
            "num_points": 8,
            "coarse_points": 8,
            "network": {"width": 16, "layers": 1, "heads": 2},
        }
    )
    Cascade([("upsample", up), ("mesh", build_stage({"type": "mesh.poisson"}))])
