"""A CLIP's text prior: trained from a CLIP with its text tower frozen, it fills the text slot from images."""

from __future__ import annotations

import pytest
import torch
import yaml
from test_trainer import TINY_CLIP

from cdm3d.core import Cascade, ClipEncoder, build_stage
from cdm3d.core.config import validate
from cdm3d.data.world import World
from cdm3d.errors import CheckpointError, ConfigError, InputError
from cdm3d.training.data.views import WorldViewsConfig, load_views
from cdm3d.training.trainer import Trainer, TrainRecipe

DATA = {"type": "world.views", "objects": 16, "views": 1, "size": 32, "caption_variants": 4, "workers": 1}
CLIP_TRAIN = {"final_lr": 0.0, "decay_all": False, "betas": [0.9, 0.98], "ema_decay": 0.0, "weight_decay": 0.1}


def _recipe(init, cache, steps: int = 30) -> TrainRecipe:
    clip = {"model": TINY_CLIP, "objective": "text_prior"} | ({} if init is None else {"init": str(init)})
    train = CLIP_TRAIN | {"steps": steps, "batch_size": 8, "lr": 3e-3, "warmup": 2, "checkpoint_every": 10}
    data = DATA | {"image_fill": 0.75, "augment": True, "cache_dir": str(cache)}
    return validate(TrainRecipe, {"clip": clip, "data": data, "train": train}, "test recipe")


def train_clip(recipe: TrainRecipe, out) -> ClipEncoder:
    trainer = Trainer(recipe, out)
    trainer.fit(progress=False)
    return trainer.ema.trained_encoder()


def _views(cache, **kw) -> torch.Tensor:
    """``[M * V, 3, S, S]`` in [0, 1]: the views a recipe with ``DATA`` | ``kw`` trains on."""
    views = load_views(WorldViewsConfig.model_validate(DATA | {"cache_dir": str(cache)} | kw))
    return views.flatten(0, 1).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny CLIP (6 contrastive steps) and its text prior (30 steps) trained from it."""
    root = tmp_path_factory.mktemp("prior")
    train = CLIP_TRAIN | {"steps": 6, "batch_size": 8, "warmup": 1}
    recipe = {"clip": {"model": TINY_CLIP}, "data": DATA | {"cache_dir": str(root)}, "train": train}
    clip = train_clip(TrainRecipe.model_validate(recipe), root / "clip")
    assert (root / "clip" / "clip.safetensors").is_file()
    clip.save(root / "clip.safetensors")
    return root, train_clip(_recipe(root / "clip.safetensors", root), root / "prior")


def test_the_prior_lands_nearer_the_captions_and_leaves_the_clip_as_it_was(trained) -> None:
    root, enc = trained
    init = ClipEncoder.load(root / "clip.safetensors")
    for (name, a), (_, b) in zip(init.model.state_dict().items(), enc.model.state_dict().items()):
        assert torch.equal(a, b), name
    pixels = _views(root)
    world = World("train")
    captions = enc.encode_text([world.caption(i) for i in range(DATA["objects"])])
    before = (init.encode_image(pixels) * captions).sum(-1).mean().item()
    after = (enc.encode_image_as_text(pixels) * captions).sum(-1).mean().item()
    assert after > before + 0.2, (before, after)
    # The saved file is the tuned tower: loaded into the init CLIP it predicts the same embeddings.
    init.load_text_prior(root / "prior" / "text_prior.safetensors")
    torch.testing.assert_close(init.encode_image_as_text(pixels), enc.encode_image_as_text(pixels))


def test_images_alone_fill_the_text_slot_unless_told_not_to(trained) -> None:
    _, enc = trained
    pixels = torch.rand(2, 3, 32, 32)
    cond = enc.encode(images=pixels)
    assert set(cond.embeddings) == {"text", "image"} and cond.meta["text_from"] == "text_prior"
    torch.testing.assert_close(cond.embeddings["text"], enc.encode_image_as_text(pixels))
    torch.testing.assert_close(cond.embeddings["text"].norm(dim=-1), torch.ones(2))
    plain = enc.encode(images=pixels, text_prior=False)
    assert set(plain.embeddings) == {"image"} and "text_from" not in plain.meta
    both = enc.encode(["a red cube", "a blue mug"], pixels)  # prompts given: their text embeddings
    torch.testing.assert_close(both.embeddings["text"], enc.encode_text(["a red cube", "a blue mug"]))
    with pytest.raises(InputError, match="no text prior"):
        ClipEncoder.from_config(TINY_CLIP).encode_image_as_text(pixels)


def test_a_cascade_folder_carries_the_prior(trained, tmp_path) -> None:
    _, enc = trained
    stage = build_stage(
        {
            "type": "points.coarse",
            "num_points": 16,
            "embed_dim": 16,
            "cond_keys": ["text", "image"],
            "network": {"width": 32, "layers": 1, "heads": 2},
            "sampling": {"steps": 2},
        }
    )
    folder = Cascade([("coarse", stage)], clip=enc).save_pretrained(tmp_path / "c")
    doc = yaml.safe_load((folder / "cascade.yaml").read_text())
    assert doc["clip"]["text_prior"] == "clip.text_prior.safetensors"
    loaded = Cascade.from_pretrained(folder)
    pixels = torch.rand(1, 3, 32, 32)
    torch.testing.assert_close(
        loaded.encode(images=pixels).embeddings["text"], enc.encode_image_as_text(pixels), atol=2e-3, rtol=0
    )
    out = loaded(images=pixels, seed=0, progress=False)
    assert out.final.coords.shape == (1, 16, 3)


def test_bad_prior_files_and_recipes(trained, tmp_path) -> None:
    root, enc = trained
    other = ClipEncoder.from_config({**TINY_CLIP, "embed_dim": 24})
    with pytest.raises(CheckpointError, match="another CLIP"):
        other.load_text_prior(root / "prior" / "text_prior.safetensors")
    with pytest.raises(CheckpointError, match="not a cdm3d CLIP text prior"):
        enc.load_text_prior(root / "clip.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        enc.load_text_prior(tmp_path / "missing.safetensors")
    with pytest.raises(InputError, match="no text prior to save"):
        other.save_text_prior(tmp_path / "x.safetensors")
    with pytest.raises(ConfigError, match="needs init"):
        _recipe(None, tmp_path)


def test_the_default_view_option_renders_each_objects_first_view_from_the_default_camera(tmp_path) -> None:
    from cdm3d.render import Camera

    images = _views(tmp_path / "d", objects=2, views=2, default_view=True)
    first = World("train")[1].render(Camera(), size=32).permute(2, 0, 1)
    torch.testing.assert_close(images[2], first, atol=1 / 254, rtol=0)
    assert (images[3] - first).abs().max() > 0.1
    plain = _views(tmp_path / "p", objects=2, views=2)
    assert (plain[2] - first).abs().max() > 0.1


def test_an_interrupted_prior_training_resumes_exactly(trained, tmp_path) -> None:
    import cdm3d.training.clip as clip_trainer

    root, _ = trained
    recipe = _recipe(root / "clip.safetensors", root, steps=12)  # a checkpoint at step 10
    straight = train_clip(recipe, tmp_path / "a")
    real, calls = clip_trainer.clip_loss, []

    def crash_on_the_twelfth_step(*args):
        calls.append(1)
        if len(calls) == 12:
            raise KeyboardInterrupt
        return real(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clip_trainer, "clip_loss", crash_on_the_twelfth_step)
        with pytest.raises(KeyboardInterrupt):
            train_clip(recipe, tmp_path / "b")
    assert int(torch.load(tmp_path / "b" / "state.pt", weights_only=True)["step"]) == 10  # its last checkpoint
    trainer = Trainer(recipe, tmp_path / "b")
    trainer.fit(resume=True, progress=False)
    resumed = trainer.ema.trained_encoder()
    for (name, a), (_, b) in zip(straight.text_prior.state_dict().items(), resumed.text_prior.state_dict().items()):
        assert torch.equal(a, b), name
    assert (tmp_path / "a" / "text_prior.safetensors").read_bytes() == (
        tmp_path / "b" / "text_prior.safetensors"
    ).read_bytes()
