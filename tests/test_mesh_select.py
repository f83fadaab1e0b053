"""mesh.select: a selector among candidate meshes that reads their surface samples with points.select's critic;
the shipped critic loaded as one."""

from __future__ import annotations

import pytest
import torch
import trimesh

from cdm3d.core import Cascade, load_stage
from cdm3d.data.world import World
from cdm3d.errors import CheckpointError, InputError
from cdm3d.paths import DEFAULT_MODEL
from cdm3d.stages.mesh import SelectMeshStage
from cdm3d.types import Meshes, PointClouds


def _meshes(*meshes: trimesh.Trimesh) -> Meshes:
    def colours(m: trimesh.Trimesh) -> torch.Tensor:
        return torch.from_numpy(m.visual.vertex_colors[:, :3] / 255.0).float()

    return Meshes(
        [torch.from_numpy(m.vertices).float() for m in meshes],
        [torch.from_numpy(m.faces).long() for m in meshes],
        [colours(m) for m in meshes],
    )


@pytest.fixture(scope="module")
def shipped() -> Cascade:
    return Cascade.from_pretrained(DEFAULT_MODEL)


def test_the_shipped_critic_loads_as_a_mesh_selector_with_the_same_weights(shipped) -> None:
    path = DEFAULT_MODEL / "select.safetensors"
    stage = load_stage(path, as_type="mesh.select")
    assert isinstance(stage, SelectMeshStage) and stage.config.type == "mesh.select"
    points = shipped.stages["select"].state_dict()
    assert all(torch.equal(v, points[k]) for k, v in stage.state_dict().items())
    # The shipped cascade's mesh selector is that critic.
    chooser = shipped.stages["mesh_select"]
    assert all(torch.equal(v, points[k]) for k, v in chooser.state_dict().items())
    # A file whose config or weights do not fit the asked type is refused.
    with pytest.raises(CheckpointError):
        load_stage(DEFAULT_MODEL / "mesh.safetensors", as_type="mesh.select")


def test_reads_are_coloured_surface_samples_drawn_anew_per_read(shipped) -> None:
    box = trimesh.creation.box(extents=(0.8, 0.6, 0.4))
    box.visual.vertex_colors = [255, 0, 0, 255]
    stage = shipped.stages["mesh_select"]
    x = stage.read(_meshes(box, box), torch.Generator().manual_seed(0))
    n = stage.config.num_points
    assert x.shape == (2, n, 6)
    xyz = x[..., :3].abs()
    half = torch.tensor([0.4, 0.3, 0.2])
    assert (xyz <= half + 1e-5).all()  # inside the box ...
    assert ((half - xyz).min(-1).values < 1e-5).all()  # ... and on one of its faces
    assert torch.equal(x[..., 3:], torch.tensor([1.0, -1.0, -1.0]).expand(2, n, 3))
    assert not torch.equal(x[0], x[1])  # each candidate and read draws its own samples
    again = stage.read(_meshes(box, box), torch.Generator().manual_seed(0))
    assert torch.equal(x, again)
    with pytest.raises(InputError, match="reads Meshes"):
        stage.read(PointClouds(torch.zeros(1, 8, 3), torch.zeros(1, 8, 3)), None)


def test_the_shipped_mesh_selector_prefers_the_mesh_of_the_prompt(shipped) -> None:
    world = World("test")
    found: dict[str, int] = {}
    for i in range(200):
        found.setdefault(world.labels(i).category, i)
        if {"cube", "sphere", "pyramid", "cone"} <= set(found):
            break
    stage = shipped.stages["mesh_select"]
    for a, b in (("cube", "sphere"), ("pyramid", "cone")):
        meshes = _meshes(world[found[a]].mesh, world[found[b]].mesh)
        for k, name in enumerate((a, b)):
            cond = shipped.encode([world.caption(found[name])] * 2)
            scores = stage.score(meshes, cond, torch.Generator().manual_seed(0))
            assert scores.argmax().item() == k, (name, scores)


def test_meshes_index_by_rows_as_a_selector_gathers_them() -> None:
    meshes = _meshes(*(trimesh.creation.box(extents=(s, s, s)) for s in (0.2, 0.4, 0.6)))
    picked = meshes[torch.tensor([2, 0, 2])]
    assert len(picked) == 3 and picked.vertices[0] is meshes.vertices[2] and picked.faces[1] is meshes.faces[0]
    assert len(meshes[1:]) == 2 and meshes[-1].vertices[0] is meshes.vertices[2] and len(meshes[[1]]) == 1
    with pytest.raises(IndexError):
        meshes[torch.tensor([3])]
