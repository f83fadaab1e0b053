"""ClipEncoder: custom small CLIPs, local checkpoints, offline errors, prompt checks."""

from __future__ import annotations

import json

import pytest
import torch

from cdm3d.core import Cascade, ClipEncoder, load_cascade_clip
from cdm3d.core.clip import check_prompts
from cdm3d.errors import CheckpointError, ConfigError, InputError, UnavailableError
from cdm3d.paths import DEFAULT_MODEL

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def tiny() -> ClipEncoder:
    return ClipEncoder.from_config(TINY, seed=0)


def test_encode_text_gives_unit_norm_embeddings_and_nulls(tiny: ClipEncoder) -> None:
    cond = tiny.encode(["a red cube", "a blue sphere", "a red cube"])
    emb = cond.embeddings["text"]
    assert emb.shape == (3, 32) and cond.batch_size == 3 and cond.dim == 32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert torch.equal(emb[0], emb[2]) and not torch.allclose(emb[0], emb[1])
    torch.testing.assert_close(cond.null["text"], tiny.encode_text([""])[0])
    assert torch.equal(cond.null["image"], torch.zeros(32))
    assert cond.prompts == ["a red cube", "a blue sphere", "a red cube"]
    # A missing slot is filled by its null embedding in a stage's token stack.
    stack = cond.stack(["text", "image"])
    assert stack.shape == (3, 2, 32) and torch.equal(stack[:, 1], torch.zeros(3, 32))


def test_encode_images_any_size(tiny: ClipEncoder) -> None:
    images = torch.rand(2, 3, 48, 64)
    cond = tiny.encode(images=images)
    assert set(cond.embeddings) == {"image"} and cond.embeddings["image"].shape == (2, 32)
    both = tiny.encode(["a", "b"], images)
    assert set(both.embeddings) == {"text", "image"}
    with pytest.raises(InputError, match="differ in number"):
        tiny.encode(["a"], images)


@pytest.mark.parametrize(
    "bad",
    [torch.rand(3, 32, 32), torch.rand(1, 4, 32, 32), torch.randint(0, 255, (1, 3, 32, 32)), torch.rand(1, 3, 4, 4)],
)
def test_bad_images_are_input_errors(tiny: ClipEncoder, bad) -> None:
    with pytest.raises(InputError):
        tiny.encode(images=bad)


def test_nan_and_out_of_range_images(tiny: ClipEncoder) -> None:
    x = torch.rand(1, 3, 32, 32)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        tiny.encode(images=x)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        tiny.encode(images=torch.rand(1, 3, 32, 32) * 255)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ([], "non-empty list"),
        (None, "non-empty list"),
        (42, "non-empty list"),
        (["ok", 3], "prompt 1 must be a string"),
        ("a\x00cube", "control characters"),
        ("x" * 5000, "characters"),
    ],
)
def test_bad_prompts(prompts, message) -> None:
    with pytest.raises(InputError, match=message):
        check_prompts(prompts)


def test_prompts_are_normalised() -> None:
    assert check_prompts("  a   red\tcube ") == ["a red cube"]


def test_custom_clip_save_load_round_trip(tiny: ClipEncoder, tmp_path) -> None:
    path = tmp_path / "clip.safetensors"
    tiny.save(path)
    loaded = ClipEncoder.load(path)
    torch.testing.assert_close(loaded.encode_text(["a red cube"]), tiny.encode_text(["a red cube"]))
    assert loaded.custom_config == TINY


def test_clip_file_of_the_wrong_kind(tmp_path) -> None:
    from toy_signals import ToyCoarseStage  # noqa: F401

    from cdm3d.core import build_stage, save_stage

    path = tmp_path / "stage.safetensors"
    save_stage(build_stage({"type": "toy.coarse"}), path)
    with pytest.raises(CheckpointError, match="not a cdm3d clip weights file"):
        ClipEncoder.load(path)


def test_custom_config_errors() -> None:
    with pytest.raises(ConfigError, match="embed_dim"):
        ClipEncoder.from_config({"vision_cfg": {}})


def test_unavailable_pretrained_weights_name_the_alternatives(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(UnavailableError, match="from_checkpoint.*from_config"):
        ClipEncoder.from_pretrained("ViT-B-32", "openai", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="unknown open_clip model"):
        ClipEncoder.from_pretrained("ViT-Nope", "openai")


def test_local_open_clip_checkpoint(tiny: ClipEncoder, tmp_path) -> None:
    import open_clip
    from safetensors.torch import save_file

    config_dir = tmp_path / "configs"
    config_dir.mkdir()
    (config_dir / "cdm3d-test-tiny.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(config_dir)
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in tiny.model.state_dict().items()}, str(path))
    enc = ClipEncoder.from_checkpoint(path, "cdm3d-test-tiny")
    torch.testing.assert_close(enc.encode_text(["a mug"]), tiny.encode_text(["a mug"]))
    with pytest.raises(InputError, match="not found"):
        ClipEncoder.from_checkpoint(tmp_path / "missing.pt", "cdm3d-test-tiny")


def test_image_normalisation_is_saved_and_used(tiny: ClipEncoder, tmp_path) -> None:
    # cdm3d's custom CLIPs see [0, 1] images unchanged; training uses the same preprocess().
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(tiny.preprocess(x), x)
    tiny.image_mean, tiny.image_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    try:
        tiny.save(tmp_path / "c.safetensors")
        loaded = ClipEncoder.load(tmp_path / "c.safetensors")
        assert loaded.image_mean == (0.5, 0.5, 0.5) and loaded.image_std == (0.25, 0.25, 0.25)
        torch.testing.assert_close(loaded.encode_image(x), tiny.encode_image(x))
    finally:
        tiny.image_mean, tiny.image_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def test_clip_evaluation_runs_and_reports_every_metric(tiny: ClipEncoder) -> None:
    from cdm3d.eval.clip_eval import attribute_phrases, evaluate_clip

    assert len(attribute_phrases()) == 27 and "" in attribute_phrases()
    report = evaluate_clip(tiny, count=100)
    for key in (
        "category_accuracy",
        "color_accuracy",
        "category_accuracy_attribute_blind",
        "retrieval_top1",
        "retrieval_top5",
    ):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["retrieval_top5"] >= report["retrieval_top1"]


def test_default_clip_is_shipped() -> None:
    enc = load_cascade_clip()
    assert enc.embed_dim == 128 and enc.image_size == 64
    # The shipped cascade reframes conditioning images to its CLIP's training framing (benchmarks/framing.py).
    assert enc.image_fill == Cascade.from_pretrained(DEFAULT_MODEL, load_clip=True).clip.image_fill == 0.75
    cond = enc.encode(["a tall red lamp"])
    assert cond.embeddings["text"].shape == (1, 128)


def _named_tiny_clip():
    """A tiny ViT CLIP standing in for a named open_clip model (OpenAI's ViT-L/14 in real use)."""
    import open_clip

    from cdm3d.core import ClipEncoder

    vision = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}
    text = {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=24, vision_cfg=vision, text_cfg=text)
    return ClipEncoder(model, open_clip.SimpleTokenizer(context_length=16), "tiny-vit")


def test_a_named_vit_clip_gives_the_image_grid_point_e_reads() -> None:
    """The "image_grid" slot: the image transformer's output before its final LayerNorm, class token dropped,
    computed in the same pass as the image embedding."""
    enc = _named_tiny_clip()
    images = torch.rand(2, 3, 40, 56)
    cond = enc.encode(["a red cube", "a blue mug"], images)
    assert enc.grid and enc.grid_shape == (16, 32)
    vt, px = enc.model.visual, enc.preprocess(images)
    with torch.no_grad():  # Point-E's embed_images_grid, on open_clip's batch-first transformer
        x = vt.conv1(px).reshape(2, 32, -1).permute(0, 2, 1)
        x = torch.cat([vt.class_embedding + torch.zeros(2, 1, 32), x], 1) + vt.positional_embedding
        reference = vt.transformer(vt.ln_pre(x))[:, 1:]
    torch.testing.assert_close(cond.embeddings["image_grid"], reference)
    torch.testing.assert_close(cond.embeddings["image"], enc.encode_image(images))
    torch.testing.assert_close(enc.encode_image_grid(images), reference)
    assert torch.equal(cond.null["image_grid"], torch.zeros(16, 32))
    text_only = enc.encode(["a red cube"])
    assert "image_grid" not in text_only.embeddings and text_only.null["image_grid"].shape == (16, 32)


def test_a_named_clip_preprocesses_as_clip_does() -> None:
    """The shortest side resized to the input size, then a centre crop: a wide image keeps its middle."""
    enc = _named_tiny_clip()
    wide = torch.zeros(1, 3, 64, 192)  # shrunk to 32 x 96, then cropped to its middle 32 x 32
    wide[..., 56:136] = 1.0  # a white band wider than the middle third
    mean = torch.tensor(enc.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(enc.image_std).view(1, 3, 1, 1)
    pixels = enc.preprocess(wide) * std + mean
    assert pixels.shape == (1, 3, 32, 32)
    torch.testing.assert_close(pixels, torch.ones(1, 3, 32, 32), atol=1e-5, rtol=0)


def test_a_torchscript_clip_archive_is_refused_with_what_to_use_instead(tmp_path) -> None:
    from cdm3d.core import ClipEncoder

    scripted = torch.jit.script(torch.nn.Linear(2, 2))
    scripted.save(str(tmp_path / "ViT-L-14.pt"))
    with pytest.raises(CheckpointError, match="TorchScript archive.*timm/vit_large_patch14_clip_224.openai"):
        ClipEncoder.from_checkpoint(tmp_path / "ViT-L-14.pt", "ViT-L-14-quickgelu")
