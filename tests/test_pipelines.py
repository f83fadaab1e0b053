"""TextTo3D and ImageTo3D on the shipped default cascade (few steps, to stay fast)."""

from __future__ import annotations

import pytest
import torch

from cdm3d import ImageTo3D, TextTo3D
from cdm3d.errors import InputError


@pytest.fixture(scope="module")
def pipe() -> TextTo3D:
    return TextTo3D.from_pretrained()


def test_text_to_3d_returns_every_stage_and_a_coloured_mesh(pipe, tmp_path) -> None:
    out = pipe(["a tall red lamp", "a blue mug"], seed=0, steps=2, progress=False)
    coarse, up = pipe.cascade.stages["coarse"].config, pipe.cascade.stages["upsample"].config
    assert out.coarse_points.coords.shape == (2, coarse.num_points, 3)
    assert out.points.coords.shape == (2, up.coarse_points + up.num_points, 3)
    assert len(out.mesh) == 2 and out.mesh.colors[0].shape == out.mesh.vertices[0].shape
    assert out["coarse"] is out.coarse_points
    path = out.mesh.save(tmp_path / "lamp.glb")
    assert path.stat().st_size > 1000
    again = pipe("a tall red lamp", seed=0, steps=2, stop_at="coarse", progress=False)
    # The first prompt of a batch gets the same noise alone as in the batch (up to batch-size rounding).
    assert torch.allclose(again.coarse_points.coords[0], out.coarse_points.coords[0], atol=1e-3)
    with pytest.raises(InputError, match="no Meshes"):
        _ = again.mesh


@pytest.mark.parametrize("bad", ["", "   ", 42, None, ["ok", 3]])
def test_bad_prompts(pipe, bad) -> None:
    with pytest.raises(InputError):
        pipe(bad, steps=2, progress=False)


def test_image_to_3d_from_a_render_file(pipe, tmp_path) -> None:
    from cdm3d.data.world import World
    from cdm3d.render.preview import save_png

    save_png(World("test")[0].render(size=64), tmp_path / "view.png")
    image_pipe = ImageTo3D(pipe.cascade)
    out = image_pipe(tmp_path / "view.png", seed=0, steps=2, stop_at="coarse", progress=False)
    assert out.coarse_points.coords.shape == (1, pipe.cascade.stages["coarse"].config.num_points, 3)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot be read as an image"):
        image_pipe(tmp_path / "bad.png", steps=2, progress=False)
    with pytest.raises(InputError, match="not found"):
        image_pipe(tmp_path / "missing.png", steps=2, progress=False)
    with pytest.raises(InputError, match="must be paths"):
        image_pipe([3.5], steps=2, progress=False)
