"""Image stages: the stage contract (shapes, determinism, round trip, bad input), the guidance and
augmentation knobs, and tiny training runs on world renders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from contract import check_stage_contract
from test_trainer import TINY_CLIP

from cdm3d.core import Cascade, ClipEncoder, Conditioning, build_stage
from cdm3d.errors import ConfigError, InputError
from cdm3d.training.data.world import build_world_embeddings
from cdm3d.training.trainer import Trainer, TrainRecipe
from cdm3d.types import Images

D = 16
NET = {"channels": 16, "mults": [1, 2], "attention": [4], "heads": 2, "groups": 4}
FAST = {"steps": 3}


def _cond(batch: int) -> Conditioning:
    g = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(batch, D, generator=g), dim=-1)
    return Conditioning({"text": emb}, {"text": torch.zeros(D)})


def _randomise(stage):
    torch.manual_seed(0)
    for p in stage.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return stage


def _base():
    return build_stage({"type": "images.base", "embed_dim": D, "size": 8, "network": NET})


def _sr():
    return build_stage({"type": "images.sr", "embed_dim": D, "size": 16, "low_size": 8, "network": NET})


def test_base_stage_contract(tmp_path) -> None:
    stage = _randomise(_base())
    check_stage_contract(lambda: stage, None, _cond(2), tmp_path, {"pixels": (2, 3, 8, 8)}, sampling=FAST)


def test_sr_stage_contract(tmp_path) -> None:
    stage = _randomise(_sr())
    prev = Images(torch.rand(2, 3, 8, 8))
    nan = Images(torch.full((2, 3, 8, 8), float("nan")))
    check_stage_contract(
        lambda: stage, prev, _cond(2), tmp_path, {"pixels": (2, 3, 16, 16)}, bad_prevs=[prev[0:1], nan], sampling=FAST
    )


def test_guidance_scale_changes_the_base_image() -> None:
    stage = _randomise(_base())
    run = lambda scale: stage.sample(  # noqa: E731
        None, _cond(1), generator=torch.Generator().manual_seed(0), sampling={**FAST, "guidance_scale": scale}
    )
    assert not torch.allclose(run(1.0).pixels, run(4.0).pixels)
    assert torch.equal(run(4.0).pixels, run(4.0).pixels)


def test_sr_follows_its_input_and_the_augmentation_level() -> None:
    stage = _randomise(_sr())
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    dark, light = Images(torch.zeros(1, 3, 8, 8)), Images(torch.ones(1, 3, 8, 8))
    a = stage.sample(dark, _cond(1), generator=g(), sampling=FAST).pixels
    b = stage.sample(light, _cond(1), generator=g(), sampling=FAST).pixels
    assert not torch.allclose(a, b)  # the low-resolution image conditions the output
    # The level reaches the network: the same noised input with another level input changes the prediction.
    x = torch.randn(1, 3, 16, 16)
    c = torch.zeros(1, 3, 16, 16)
    emb = _cond(1).stack(["text"])
    out0 = stage.net(x, torch.tensor([10.0]), emb, c, torch.tensor([0.0]))
    out1 = stage.net(x, torch.tensor([10.0]), emb, c, torch.tensor([0.5]))
    assert not torch.allclose(out0, out1)
    noised = stage.sample(dark, _cond(1), generator=g(), sampling={**FAST, "aug_level": 0.5}).pixels
    assert not torch.allclose(a, noised)


def _sr_at_seed_0(stage, low: Images, **settings) -> torch.Tensor:
    """The SR stage's output pixels for ``low`` (two examples) at seed 0, FAST sampling with ``settings``."""
    return stage.sample(low, _cond(2), generator=torch.Generator().manual_seed(0), sampling={**FAST, **settings}).pixels


def test_sr_colour_fix_keeps_the_inputs_low_frequencies() -> None:
    from cdm3d.stages.images.sr import resize_images

    stage = _randomise(_sr())
    # A smooth input (what a base stage's 32 px images are next to random pixels): resizing keeps it.
    low = Images(resize_images(torch.rand(2, 3, 2, 2), 8) * 0.5 + 0.25)
    run = lambda w: _sr_at_seed_0(stage, low, low_freq_fix=w)  # noqa: E731

    plain, half, fixed = run(0.0), run(0.5), run(1.0)
    # Off by default: the stage's own output, exactly.
    assert torch.equal(plain, _sr_at_seed_0(stage, low))
    err = lambda x: (resize_images(x, 8) - low.pixels).abs().mean().item()  # noqa: E731
    # Fully on, the output seen at the input's resolution is near the input; halfway lies between.
    assert err(fixed) < 0.35 * err(plain)  # (not exactly the input: resizing twice and clamping to [0, 1])
    assert err(fixed) < err(half) < err(plain)
    # The detail above the input's resolution is the stage's own.
    detail = lambda x: x - resize_images(resize_images(x, 8), 16)  # noqa: E731
    assert (detail(fixed) - detail(plain)).abs().mean() < 0.5 * (fixed - plain).abs().mean()
    with pytest.raises(ConfigError, match="low_freq_fix"):
        run(1.5)


def test_sr_adain_fix_moves_each_channels_statistics_to_the_inputs() -> None:
    from cdm3d.stages.images.sr import resize_images

    stage = _randomise(_sr())
    low = Images(resize_images(torch.rand(2, 3, 2, 2), 8) * 0.3 + 0.35)
    run = lambda w: _sr_at_seed_0(stage, low, adain_fix=w)  # noqa: E731

    plain, half, fixed = run(0.0), run(0.5), run(1.0)
    assert torch.equal(plain, _sr_at_seed_0(stage, low))  # off by default
    ref = resize_images(low.pixels, 16)
    stats = lambda x: torch.cat([x.mean((2, 3)), x.std((2, 3))])  # noqa: E731
    gap = lambda x: (stats(x) - stats(ref)).abs().max().item()  # noqa: E731
    assert gap(fixed) < 1e-3 < gap(plain) and gap(fixed) < gap(half) < gap(plain)
    # Only each channel's level and contrast change: standardised per channel, the images are the same.
    z = lambda x: (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True)  # noqa: E731
    assert torch.allclose(z(fixed), z(plain), atol=1e-3)
    with pytest.raises(ConfigError, match="adain_fix"):
        run(-0.1)


def test_sr_adain_at_input_size_leaves_a_consistent_output_alone() -> None:
    from cdm3d.stages.images.sr import adain, resize_images

    # A sharp image and its own 8 px version: measured at 8 px they agree, so the fix changes nothing;
    # measured at 16 px against the blurred upsampled version, it lowers the sharp image's contrast.
    sharp = torch.rand(2, 3, 16, 16) * 2 - 1
    low = resize_images(sharp, 8)
    assert torch.allclose(adain(sharp, low), sharp, atol=1e-4)
    blurred = adain(sharp, resize_images(low, 16))
    assert (blurred.std((2, 3)) < 0.8 * sharp.std((2, 3))).all()

    stage = _randomise(_sr())
    low = Images(resize_images(torch.rand(2, 3, 2, 2), 8) * 0.3 + 0.35)
    plain = _sr_at_seed_0(stage, low)
    at_input = _sr_at_seed_0(stage, low, adain_fix=1.0, adain_at="input")
    assert not torch.allclose(at_input, _sr_at_seed_0(stage, low, adain_fix=1.0))  # "output" is the default
    # Seen at the input's size, the output has the input's per-channel statistics (up to the [0, 1] clamp).
    stats = lambda x: torch.cat([x.mean((2, 3)), x.std((2, 3))])  # noqa: E731
    gap = lambda x: (stats(resize_images(x, 8)) - stats(low.pixels)).abs().max().item()  # noqa: E731
    assert gap(at_input) < 0.02 < gap(plain)
    with pytest.raises(ConfigError, match="adain_at"):
        _sr_at_seed_0(stage, low, adain_fix=1.0, adain_at="both")


@pytest.mark.parametrize("scheduler", ["dpm++", "ddim", "euler", "heun", "unipc"])
def test_sr_strength_refines_the_upsampled_input_in_the_last_steps(scheduler) -> None:
    from cdm3d.stages.images.sr import resize_images

    stage = _randomise(_sr())
    low = Images(torch.rand(2, 3, 8, 8))
    calls = []
    stage.net.register_forward_hook(lambda *_: calls.append(1))
    settings = {"scheduler": scheduler, "steps": 8, "guidance_scale": 1.0}

    def run(strength: float) -> torch.Tensor:
        calls.clear()
        return _sr_at_seed_0(stage, low, **settings, strength=strength)

    assert torch.equal(run(1.0), _sr_at_seed_0(stage, low, **settings))  # 1 (the default) samples from noise
    full = run(1.0)
    order = 2 if scheduler == "heun" else 1
    assert len(calls) == stage.num_steps({**settings, "strength": 1.0}) == 8 * order - (order - 1)
    half = run(0.5)
    assert len(calls) == stage.num_steps({**settings, "strength": 0.5}) == 4 * order - (order - 1)  # the last 4
    light = run(0.25)
    assert torch.isfinite(half).all() and torch.equal(light, run(0.25))  # deterministic
    # The less strength, the closer the output stays to the upsampled input it starts from.
    up = (resize_images(low.pixels, 16) * 2 - 1).clamp(-1, 1)
    dist = lambda x: (x * 2 - 1 - up).abs().mean().item()  # noqa: E731
    assert dist(light) < dist(half) < dist(full)
    with pytest.raises(ConfigError, match="runs no step"):
        run(0.1)
    with pytest.raises(ConfigError, match="strength"):
        run(0.0)


def test_strength_needs_a_stage_with_an_initial_guess() -> None:
    stage = _randomise(_base())
    with pytest.raises(InputError, match="no initial guess"):
        stage.sample(None, _cond(1), sampling={**FAST, "strength": 0.5})


def test_image_cascade_runs_base_then_sr() -> None:
    cascade = Cascade([("base", _randomise(_base())), ("sr", _randomise(_sr()))])
    out = cascade.run(_cond(2), seed=0, sampling={"base": FAST, "sr": FAST}, progress=False)
    assert out["base"].pixels.shape == (2, 3, 8, 8) and out["sr"].pixels.shape == (2, 3, 16, 16)


def test_images_save_png_and_refuse_bad_paths(tmp_path) -> None:
    from PIL import Image

    images = Images(torch.rand(2, 3, 8, 8))
    paths = images.save_all(tmp_path, "img")
    assert [p.name for p in paths] == ["img_0.png", "img_1.png"]
    back = np.asarray(Image.open(paths[1]))
    assert back.shape == (8, 8, 3)
    assert np.abs(back / 255 - images.pixels[1].permute(1, 2, 0).numpy()).max() < 1 / 255 + 1e-6
    with pytest.raises(InputError, match="format"):
        images.save(tmp_path / "img.jpg")
    with pytest.raises(InputError, match="exists"):
        images.save(paths[0])
    with pytest.raises(InputError):
        Images(torch.rand(2, 4, 8, 8))


@pytest.fixture(scope="module")
def emb_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("img")
    build_world_embeddings(ClipEncoder.from_config(TINY_CLIP), "train", 16, d / "emb.safetensors", 2, 0)
    return d


@pytest.mark.parametrize("stage", [_base, _sr])
def test_tiny_image_training_lowers_the_loss(stage, emb_file, tmp_path) -> None:
    recipe = TrainRecipe.model_validate(
        {
            "stage": stage().config.model_dump(),
            "data": {
                "type": "world.images",
                "objects": 16,
                "size": 16,
                "workers": 1,
                "embeddings": str(emb_file / "emb.safetensors"),
                "cache_dir": str(emb_file / "cache"),
            },
            "train": {"steps": 60, "batch_size": 8, "lr": 2e-3, "warmup": 5, "checkpoint_every": 30, "log_every": 10},
        }
    )
    losses = Trainer(recipe, tmp_path / "run").fit(progress=False)
    assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])
    assert (emb_file / "cache" / "world-renders-train-16x16.npy").exists()


def test_render_cache_is_read_back_not_rebuilt(tmp_path, monkeypatch) -> None:
    from cdm3d.training.data import world as image_data

    first = image_data.load_renders("train", 6, 16, str(tmp_path), 1)
    assert first.shape == (6, 3, 16, 16) and (tmp_path / "world-renders-train-6x16.npy").exists()

    def fail(*args, **kwargs):
        raise AssertionError("the cache should have been read")

    monkeypatch.setattr(image_data, "build_renders", fail)
    assert torch.equal(image_data.load_renders("train", 4, 16, str(tmp_path), 1), first[:4])


def _sr_data(emb_file, stage=_sr, **extra):
    from cdm3d.training.data.images import WorldImagesConfig, WorldImagesData

    config = WorldImagesConfig(
        objects=16,
        size=16,
        workers=1,
        embeddings=str(emb_file / "emb.safetensors"),
        cache_dir=str(emb_file / "cache"),
        **extra,
    )
    return WorldImagesData(config, stage())


def test_sr_data_conditions_on_the_low_res_cache_at_its_rate(emb_file, tmp_path) -> None:
    path = tmp_path / "low.npy"
    np.save(path, np.full((16, 3, 8, 8), 255, np.uint8))  # every re-drawn input white
    white = lambda data: (data.batch(64, torch.Generator().manual_seed(0))[2] == 1).flatten(1).all(1)  # noqa: E731
    assert white(_sr_data(emb_file, low_res=str(path), low_res_prob=1.0)).all()
    assert not white(_sr_data(emb_file, low_res=str(path), low_res_prob=0.0)).any()
    half = white(_sr_data(emb_file, low_res=str(path), low_res_prob=0.5)).float().mean()
    assert 0.3 < half < 0.7
    # without it, the render's own low-resolution image, as before
    x0, _, c = _sr_data(emb_file).batch(4, torch.Generator().manual_seed(0))
    from cdm3d.stages.images.sr import through

    assert torch.allclose(c, through(x0, 8), atol=1e-5)


def test_image_data_draws_two_colour_objects_at_their_weight(emb_file) -> None:
    from cdm3d.data.world import World

    two = torch.tensor([len(World("train").labels(i).colors) > 1 for i in range(16)])
    assert two.sum() == 2  # objects 0 and 3 of the 16
    share = lambda data: two[data.draw(4000, torch.Generator().manual_seed(0))].float().mean()  # noqa: E731
    assert 0.45 < share(_sr_data(emb_file, two_colour_weight=7.0)) < 0.55  # 2 x 7 against 14 x 1
    assert 0.09 < share(_sr_data(emb_file)) < 0.16  # uniform: 2 in 16
    # weight 1 draws exactly the batches drawn before the setting existed
    a = _sr_data(emb_file, two_colour_weight=1.0).batch(4, torch.Generator().manual_seed(3))
    b = _sr_data(emb_file).batch(4, torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[2], b[2])
    assert torch.equal(
        torch.randint(0, 16, (4,), generator=torch.Generator().manual_seed(3)),
        _sr_data(emb_file).draw(4, torch.Generator().manual_seed(3)),
    )
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        _sr_data(emb_file, two_colour_weight=0.5)


def test_sr_data_refuses_a_bad_low_res_cache(emb_file, tmp_path) -> None:
    np.save(tmp_path / "small.npy", np.zeros((16, 3, 4, 4), np.uint8))
    np.save(tmp_path / "few.npy", np.zeros((3, 3, 8, 8), np.uint8))
    np.save(tmp_path / "float.npy", np.zeros((16, 3, 8, 8), np.float32))
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    for name, words in [
        ("missing.npy", "does not exist"),
        ("small.npy", "expected uint8 [M, 3, 8, 8]"),
        ("few.npy", "covers 3 objects, fewer than data.objects = 16"),
        ("float.npy", "float32"),
        ("junk.npy", "not a readable .npy"),
    ]:
        with pytest.raises(InputError, match=words.replace("[", r"\[").replace("]", r"\]")):
            _sr_data(emb_file, low_res=str(tmp_path / name))
    with pytest.raises(InputError, match="for a super-resolution stage"):
        _sr_data(emb_file, stage=_base, low_res=str(tmp_path / "few.npy"))


def test_redraw_with_base_keeps_its_input_below_strength_1() -> None:
    from cdm3d.training.data.images import redraw_with_base

    base = _randomise(build_stage({**_base().config.model_dump(), "sampling": {"steps": 4}}))
    g = torch.Generator().manual_seed(1)
    low = torch.randint(0, 256, (6, 3, 8, 8), generator=g, dtype=torch.uint8)
    other = torch.randint(0, 256, (6, 3, 8, 8), generator=g, dtype=torch.uint8)
    text, null = torch.randn(6, 2, D, generator=g), torch.zeros(D)
    run = lambda x, s: redraw_with_base(base, x, text, null, s, seed=0, batch=4, progress=False)  # noqa: E731
    out = run(low, (0.5,))
    assert out.dtype == torch.uint8 and out.shape == low.shape
    assert torch.equal(out, run(low, (0.5,)))  # a seed gives the same images
    assert not torch.equal(out, run(other, (0.5,)))  # part of the way: the input shows through
    assert torch.equal(run(low, (1.0,)), run(other, (1.0,)))  # from noise: the input does not matter
    assert "init_sample" not in vars(base)  # the stage is left as it was
    with pytest.raises(InputError, match="8 px"):
        redraw_with_base(base, torch.zeros(2, 3, 16, 16, dtype=torch.uint8), text[:2], null, (0.5,))


def test_redraw_low_res_tool_writes_the_cache_and_refuses_bad_input(emb_file, tmp_path, capsys) -> None:
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "tools" / "redraw_low_res.py"
    spec = importlib.util.spec_from_file_location("redraw_low_res_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    base = build_stage({**_base().config.model_dump(), "sampling": {"steps": 4}})
    Cascade([("base", _randomise(base)), ("sr", _sr())], clip=ClipEncoder.from_config(TINY_CLIP)).save_pretrained(
        tmp_path / "img"
    )
    common = ["--embeddings", str(emb_file / "emb.safetensors"), "--objects", "16", "--render-size", "16"]
    common += ["--cache-dir", str(emb_file / "cache")]
    out = tmp_path / "low.npy"
    assert tool.main(["--model", str(tmp_path / "img"), *common, "--out", str(out)]) == 0
    low = np.load(out)
    assert low.dtype == np.uint8 and low.shape == (16, 3, 8, 8)
    bad = [
        (["--model", str(tmp_path / "nowhere"), *common], "nowhere"),
        (["--model", str(path.parents[1] / "cdm3d" / "weights" / "default"), *common], "not an images.base stage"),
        (["--model", str(tmp_path / "img"), *common, "--split", "val"], "split 'train', not 'val'"),
    ]
    for argv, words in bad:
        capsys.readouterr()
        assert tool.main([*argv, "--out", str(tmp_path / "bad.npy")]) == 2
        assert words in capsys.readouterr().err and not (tmp_path / "bad.npy").exists()
    with pytest.raises(SystemExit) as stop:
        tool.main(["--model", str(tmp_path / "img"), *common, "--strengths", "0", "--out", str(tmp_path / "bad.npy")])
    assert stop.value.code == 2 and not (tmp_path / "bad.npy").exists()
