"""TextTo3D and ImageTo3D on the shipped default cascade (few steps, to stay fast)."""

from __future__ import annotations

import pytest
import torch

from cdm3d import ImageTo3D, TextTo3D, TextToImage, TextToImageTo3D
from cdm3d.errors import InputError


@pytest.fixture(scope="module")
def pipe() -> TextTo3D:
    return TextTo3D.from_pretrained()


def test_text_to_3d_returns_every_stage_and_a_coloured_mesh(pipe, tmp_path) -> None:
    out = pipe(["a tall red lamp", "a blue mug"], seed=0, progress=False)
    coarse, up = pipe.cascade.stages["coarse"].config, pipe.cascade.stages["upsample"].config
    assert out.coarse_points.coords.shape == (2, coarse.num_points, 3)
    assert out.points.coords.shape == (2, up.coarse_points + up.num_points, 3)
    assert len(out.mesh) == 2 and out.mesh.colors[0].shape == out.mesh.vertices[0].shape
    assert out["coarse"] is out.coarse_points
    path = out.mesh.save(tmp_path / "lamp.glb")
    assert path.stat().st_size > 1000
    # The selector stage kept one of its candidates per prompt, and the coarse cloud that candidate came from.
    chosen = out.output.selection["select"]["chosen"]
    assert out.output.selection["select"]["scores"].shape == (2, pipe.cascade.stages["select"].candidates())
    # It passed its best 2 clouds per prompt on; both were meshed and the mesh selector kept one of them.
    kept, meshes = out.output.selection["select"]["kept"], out.output.selection["mesh_select"]
    assert kept.shape == (2, 2) and torch.equal(kept[:, 0], chosen) and meshes["scores"].shape == (2, 2)
    assert out.mesh is out["mesh_select"] and out["mesh"].vertices[1] is out.mesh.vertices[1]
    again = pipe("a tall red lamp", seed=0, stop_at="coarse", progress=False)
    # Without the selector in the run, one sample per prompt: the first candidate of the full run. The first
    # example of a batch gets the same noise alone as in the batch (up to batch-size rounding).
    first = pipe(["a tall red lamp", "a blue mug"], seed=0, stop_at="upsample", progress=False)
    assert torch.allclose(again.coarse_points.coords[0], first.coarse_points.coords[0], atol=1e-3)
    assert chosen.shape == (2,) and out.points.coords.shape == first.points.coords.shape
    with pytest.raises(InputError, match="no Meshes"):
        _ = again.mesh


def test_candidates_choose_among_samples_and_one_turns_the_choice_off(pipe) -> None:
    out = pipe("a blue mug", seed=0, steps=2, candidates=3, stop_at="select", progress=False)
    scores = out.output.selection["select"]["scores"]
    assert scores.shape == (1, 3) and out.output.selection["select"]["chosen"].item() == scores.argmax().item()
    one = pipe("a blue mug", seed=0, steps=2, candidates=1, stop_at="select", progress=False)
    assert not one.output.selection and torch.equal(one.points.coords, one["upsample"].coords)
    for bad in (0, -1, 2.5, "4", True):
        with pytest.raises(InputError, match="candidates"):
            pipe("a blue mug", steps=2, candidates=bad, progress=False)
    with pytest.raises(InputError, match="no selector stage"):
        TextToImage.from_pretrained()("a red mug", steps=2, candidates=2, progress=False)


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
    # The shipped cascade enlarges the view to its CLIP's training framing; reframe=False uses it as given.
    as_given = image_pipe(tmp_path / "view.png", seed=0, steps=2, stop_at="coarse", progress=False, reframe=False)
    assert not torch.allclose(out.output.cond.embeddings["image"], as_given.output.cond.embeddings["image"], atol=1e-4)
    # The shipped CLIP's text prior fills the text slot from the image too; text_prior=False leaves it out.
    assert out.output.cond.meta["text_from"] == "text_prior"
    torch.testing.assert_close(out.output.cond.embeddings["text"].norm(dim=-1), torch.ones(1))
    alone = image_pipe(tmp_path / "view.png", seed=0, steps=2, stop_at="coarse", progress=False, text_prior=False)
    assert set(alone.output.cond.embeddings) == {"image"}
    assert not torch.allclose(out.coarse_points.coords, alone.coarse_points.coords)
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot be read as an image"):
        image_pipe(tmp_path / "bad.png", steps=2, progress=False)
    with pytest.raises(InputError, match="not found"):
        image_pipe(tmp_path / "missing.png", steps=2, progress=False)
    with pytest.raises(InputError, match="must be paths"):
        image_pipe([3.5], steps=2, progress=False)


def test_the_shipped_mesher_is_the_learned_sdf_and_poisson_is_a_choice(pipe) -> None:
    from cdm3d.pipelines import with_mesher

    assert pipe.cascade.stages["mesh"].config.type == "mesh.sdf"
    out = pipe("a red cube", seed=0, progress=False)
    mesh = out.mesh.to_trimesh(0)
    assert mesh.is_watertight and mesh.volume > 0
    poisson = with_mesher(pipe.cascade, "poisson")
    assert poisson.stages["mesh"].config.type == "mesh.poisson"
    assert pipe.cascade.stages["mesh"].config.type == "mesh.sdf"  # the original is left as it was
    assert with_mesher(pipe.cascade, "sdf") is pipe.cascade
    with pytest.raises(InputError, match="unknown mesher"):
        with_mesher(pipe.cascade, "marching")
    with pytest.raises(InputError, match="no trained mesh.sdf"):
        with_mesher(poisson, "sdf")


def test_text_to_image_and_text_to_image_to_3d(pipe) -> None:
    painter = TextToImage.from_pretrained()
    out = painter(["a red mug", "a blue cone"], seed=0, progress=False)
    sr = painter.cascade.stages[painter.cascade.names[-1]].config
    assert out.images.pixels.shape == (2, 3, sr.size, sr.size)
    both = TextToImageTo3D(painter, TextTo3D(pipe.cascade))("a red mug", seed=0, stop_at="coarse", progress=False)
    assert both.images.pixels.shape == (1, 3, sr.size, sr.size)
    alone = painter("a red mug", seed=0, progress=False)
    assert torch.equal(both.images.pixels, alone.images.pixels)  # the same seed, the same image
    assert set(both.output.cond.embeddings) == {"text", "image"}
    assert both.coarse_points.coords.shape[0] == 1
