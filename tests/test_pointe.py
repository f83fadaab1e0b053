"""Point-E's released models in cdm3d without Point-E's code: conversion, bad files, the Karras-Heun sampler,
the pipelines and fine-tuning, on checkpoints of random tensors in the released key layout (the equality
with Point-E's own code: test_pointe_oracle.py)."""

from __future__ import annotations

import math

import pytest
import torch

from cdm3d.convert.pointe import CHANNEL_BIASES, CHANNEL_SCALES, convert_pointe, expected_shapes, pointe_stage

FILES = {"textvec": "base_40m_textvec.pt", "grid": "base_40m.pt", "upsample": "upsample_40m.pt", "sdf": "sdf.pt"}


def fake(kind: str, path, width: int = 64, layers: int = 1, seed: int = 0):
    """A checkpoint of random tensors in the key layout and shapes of a released Point-E model (heads of 64)."""
    g = torch.Generator().manual_seed(seed)
    shapes = expected_shapes(kind, width, layers, decoder_layers=1 if kind == "sdf" else 0)
    tensors = {k: torch.randn(shape, generator=g) * 0.05 for k, shape in shapes.items()}
    for k in tensors:  # LayerNorm gains near one, as trained ones are
        if (".ln_" in k or k.startswith(("ln_", "clip_embed.0"))) and k.endswith("weight"):
            tensors[k] = 1 + tensors[k]
    if kind == "upsample":
        tensors |= {"channel_scales": torch.tensor(CHANNEL_SCALES), "channel_biases": torch.tensor(CHANNEL_BIASES)}
    torch.save(tensors, path)
    return path


def test_the_folder_loads_as_a_cascade(tmp_path) -> None:
    from cdm3d.core import Cascade

    paths = {k: fake(k, tmp_path / FILES[k]) for k in ("textvec", "upsample", "sdf")}
    folder = convert_pointe(tmp_path / "pe", base=paths["textvec"], upsampler=paths["upsample"], sdf=paths["sdf"])
    cascade = Cascade.from_pretrained(folder, load_clip=False)
    assert cascade.names == ["base", "upsample", "mesh"]
    assert [s.config.type for s in cascade.stages.values()] == ["points.coarse", "points.upsample", "mesh.sdf"]
    assert cascade.clip_ref.model == "ViT-L-14-quickgelu" and cascade.clip_ref.pretrained == "openai"
    assert math.isclose(cascade.stages["upsample"].config.sampling.karras.sigma_max, 160.0)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A tiny prepared dataset (world meshes with their captions, 4096 points each) and a 768-d CLIP for it."""
    import sys
    from pathlib import Path

    from cdm3d.core import ClipEncoder
    from cdm3d.data.world import World

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import prepare_dataset

    root = tmp_path_factory.mktemp("mine")
    (root / "meshes").mkdir()
    world, rows = World("train"), ["uid,caption"]
    for i in range(6):
        world[i].mesh.export(root / "meshes" / f"m{i}.obj")
        rows.append(f"m{i},{world.caption(i)}")
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    argv = ["--meshes", str(root / "meshes"), "--captions", str(root / "captions.csv"), "--out", str(root / "data")]
    assert prepare_dataset.main([*argv, "--points", "4096", "--workers", "1"]) == 0
    vision = {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16}
    text = {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}
    clip = {"embed_dim": 768, "vision_cfg": vision, "text_cfg": text}
    ClipEncoder.from_config(clip).save(root / "clip.safetensors")
    return root


@pytest.mark.parametrize("slot", ["base", "upsample"])
def test_twenty_fine_tuning_steps_on_prepared_meshes_lower_the_loss(slot, prepared, tmp_path) -> None:
    """tools/train.py's recipe format fine-tunes a converted stage named by its weights file, on shards from
    tools/prepare_dataset.py, with the trainer every stage trains with."""
    import yaml

    from cdm3d.training.trainer import Trainer, load_recipe

    paths = {k: fake(k, tmp_path / FILES[k]) for k in ("textvec", "upsample")}
    folder = convert_pointe(tmp_path / "pe", base=paths["textvec"], upsampler=paths["upsample"])
    recipe_path = tmp_path / "finetune.yaml"
    recipe = {
        "stage": str(folder / f"{slot}.safetensors"),
        "data": {"type": "shards.points", "path": str(prepared / "data"), "clip": str(prepared / "clip.safetensors")},
        "train": {"steps": 20, "batch_size": 4, "lr": 1e-3, "warmup": 2, "ema_decay": 0.0, "checkpoint_every": 10},
    }
    recipe_path.write_text(yaml.safe_dump(recipe))
    trainer = Trainer(load_recipe(recipe_path), tmp_path / "run")
    assert trainer.recipe.train.init_from == str(folder / f"{slot}.safetensors")

    def held_out_loss() -> float:
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            batches = [trainer.data.batch(4, g) for _ in range(4)]
            return sum(float(trainer.trainee.loss(*b, generator=g)) for b in batches) / len(batches)

    before = held_out_loss()
    losses = trainer.fit(progress=False)
    assert len(losses) == 20 and (tmp_path / "run" / "stage.safetensors").is_file()
    assert held_out_loss() < before


class _Payload:
    """A pickle that would run code when loaded (os.system): weights-only loading must never call it."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def _bad_files(tmp_path) -> dict:
    good = torch.load(fake("textvec", tmp_path / "good.pt", width=128, layers=2), weights_only=True)
    files = {}
    files["not_point_e"] = {"foo.weight": torch.zeros(3)}
    files["missing"] = {k: v for k, v in good.items() if k != "backbone.resblocks.1.mlp.c_fc.weight"}
    files["extra"] = {**good, "extra_head.weight": torch.zeros(2)}
    files["width"] = {**good, "backbone.resblocks.0.mlp.c_fc.weight": torch.zeros(100, 128)}
    out = {}
    for name, sd in files.items():
        torch.save(sd, tmp_path / f"{name}.pt")
        out[name] = tmp_path / f"{name}.pt"
    torch.save({"weight": _Payload(tmp_path / "pwned")}, tmp_path / "code.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    return out | {"code": tmp_path / "code.pt", "text": tmp_path / "text.pt"}


@pytest.mark.parametrize(
    "case, message",
    [
        ("not_point_e", "is not a Point-E checkpoint"),
        ("missing", "missing backbone.resblocks.1.mlp.c_fc.weight"),
        ("extra", "unexpected extra_head.weight"),
        ("width", "mismatched widths"),
        ("code", "refused"),
        ("text", "cannot read"),
        ("upsampler_as_base", "is the upsampler (upsample_40m.pt), given as the base"),
    ],
)
def test_bad_checkpoints_get_a_one_line_error_and_nothing_is_written(case, message, tmp_path, capsys) -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import convert_pointe

    files = _bad_files(tmp_path)
    files["upsampler_as_base"] = fake("upsample", tmp_path / "upsample_40m.pt")
    out = tmp_path / "out"
    assert convert_pointe.main(["--base", str(files[case]), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "pwned").exists()


def _vit_l_stand_in():
    """A small ViT CLIP with ViT-L/14's interface widths (768-d vectors, 256 patch tokens of 1024): standing in
    for OpenAI's ViT-L/14, which is not on these machines."""
    import open_clip

    from cdm3d.core import ClipEncoder

    vision = {"image_size": 64, "layers": 1, "width": 1024, "patch_size": 4, "head_width": 64}
    text = {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=768, vision_cfg=vision, text_cfg=text)
    return ClipEncoder(model, open_clip.SimpleTokenizer(context_length=16), "vit-l-stand-in")


def test_converted_folders_run_in_the_pipelines(tmp_path) -> None:
    """TextTo3D on a text folder (mesh included), ImageTo3D on an image folder, and a clear error when a prompt
    is given to a model that reads images only."""
    from cdm3d import ImageTo3D, InputError, TextTo3D
    from cdm3d.core import Cascade

    up, sdf, base = (fake(k, tmp_path / FILES[k]) for k in ("upsample", "sdf", "textvec"))
    text = convert_pointe(tmp_path / "text", base=base, upsampler=up, sdf=sdf)
    image = convert_pointe(tmp_path / "image", base=fake("grid", tmp_path / FILES["grid"]), upsampler=up)
    clip = _vit_l_stand_in()
    cascade = Cascade.from_pretrained(text, load_clip=False)
    cascade.clip = clip
    out = TextTo3D(cascade)("a corgi", steps=2, progress=False, stop_at="upsample")
    assert out.points.num_points == 4096
    sampling = {"base": {"steps": 2}, "upsample": {"steps": 2}, "mesh": {"grid": 24}}
    meshed = cascade(["a corgi"], sampling=sampling, progress=False)
    assert len(meshed["mesh"].vertices[0]) > 0
    shape = Cascade.from_pretrained(image, load_clip=False)
    shape.clip = clip
    points = ImageTo3D(shape)(torch.rand(1, 3, 80, 64), steps=2, progress=False).points
    assert points.num_points == 4096
    with pytest.raises(InputError, match="needs the \\['image_grid'\\] conditioning"):
        TextTo3D(shape)("a corgi", steps=2, progress=False)


def test_converted_models_sample_with_diffusers_solvers_too(tmp_path) -> None:
    """The fast modes: a diffusers solver in few steps on the converted base and upsampler (guided passes in one
    batch, as for every cdm3d stage)."""
    from cdm3d.core import Conditioning

    base = pointe_stage(fake("textvec", tmp_path / "b.pt"), "base")
    up = pointe_stage(fake("upsample", tmp_path / "u.pt"), "upsampler")
    emb = torch.nn.functional.normalize(torch.randn(2, 768), dim=-1)
    cond = Conditioning({"text": emb}, {"text": torch.zeros(768), "image_grid": torch.zeros(256, 1024)})
    sampling = {"scheduler": "dpm++", "steps": 4}
    coarse = base.sample(None, cond, generator=torch.Generator().manual_seed(0), sampling=sampling)
    dense = up.sample(coarse, cond, generator=torch.Generator().manual_seed(0), sampling=sampling)
    assert dense.coords.shape == (2, 4096, 3) and torch.isfinite(dense.coords).all()
    assert base.num_steps(sampling) == 4 and base.num_steps() == 64


def test_the_karras_heun_sampler_lands_on_the_denoisers_estimate() -> None:
    """With a denoiser that always says "x0 is this", every Heun step moves towards it and the sampler returns
    it; the schedule runs from sigma_max down to sigma_min, then 0; churn draws noise at every step."""
    from cdm3d.core.karras import karras_sigmas, sample_heun

    sigmas = karras_sigmas(8, 1e-3, 120.0)
    assert len(sigmas) == 9 and sigmas[-1] == 0 and torch.isclose(sigmas[0], torch.tensor(120.0))
    assert torch.isclose(sigmas[-2], torch.tensor(1e-3)) and (sigmas[:-1].diff() < 0).all()
    target = torch.rand(2, 5, 6) * 2 - 1
    draws = []

    def noise() -> torch.Tensor:
        draws.append(1)
        return torch.randn(2, 5, 6)

    steps = []
    x = sample_heun(
        lambda x, s: target, torch.randn(2, 5, 6) * 120, sigmas, noise, 3.0, callback=lambda i, n: steps.append(i)
    )
    torch.testing.assert_close(x, target)
    assert len(draws) == 8 and steps == list(range(1, 9))


def test_sigmas_map_to_point_es_integer_timesteps() -> None:
    """A sigma reads as the timestep whose cumulative alpha is nearest below its own, floored; huge sigmas as the
    last timestep, tiny ones as the first."""
    from cdm3d.core.karras import EpsToX0
    from cdm3d.core.schedulers import NoiseScheduleConfig, alphas_cumprod

    ac = alphas_cumprod(NoiseScheduleConfig(num_train_timesteps=1024, prediction_type="epsilon"))
    to_x0 = EpsToX0(ac)
    exact = ((1 - ac) / ac).sqrt().float()
    t = to_x0.timesteps(torch.tensor([1e6, 1e-4, float(exact[500]) * 1.0001, float(exact[500]) * 0.9999]))
    assert t.tolist()[:2] == [1023, 0] and t[2] == 500 and t[3] == 499


def test_point_e_options_that_do_not_fit_together_are_refused() -> None:
    from cdm3d.core import build_stage
    from cdm3d.errors import ConfigError

    with pytest.raises(ConfigError, match="marching 'pointe' is for Point-E's SDF model"):
        build_stage({"type": "mesh.sdf", "sampling": {"marching": "pointe"}})
    with pytest.raises(ConfigError, match="anchored upsampler works in cdm3d's frame"):
        build_stage({"type": "points.upsample", "anchored": True, "frame": "pointe"})
    with pytest.raises(ConfigError, match="must be a stage's only conditioning slot"):
        build_stage({"type": "points.coarse", "cond_keys": ["text", "image_grid"], "slot_tokens": {"image_grid": 4}})


def test_cdm3d_bench_times_a_converted_image_model(tmp_path, capsys) -> None:
    """Speed tooling works on converted folders too: the image-conditioned base gets a random image grid."""
    from cdm3d.cli import main

    up = fake("upsample", tmp_path / FILES["upsample"])
    folder = convert_pointe(tmp_path / "image", base=fake("grid", tmp_path / FILES["grid"]), upsampler=up)
    argv = ["bench", "--geometry", str(folder), "--steps", "1", "--batches", "1", "--repeats", "1"]
    assert main([*argv, "--out", str(tmp_path / "b.json")]) == 0
    assert "latency_batch1_s" in (tmp_path / "b.json").read_text()
