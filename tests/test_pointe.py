"""Point-E's released models in cdm3d, checked against Point-E's own code (the oracle in ../shared/peers)."""

from __future__ import annotations

import math

import pytest
import torch
from pointe_oracle import FILES, TINY, model, needs_point_e, save

from cdm3d.convert.pointe import convert_pointe, pointe_stage

pytestmark = needs_point_e
T = (0, 512, 1023)


def _inputs(batch: int, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 6, n, generator=g), torch.tensor(T[:batch])


@pytest.mark.parametrize("name", ["base40M-textvec", "base40M", "base300M", "base1B"])
def test_a_converted_base_denoiser_matches_point_e(name, tmp_path) -> None:
    net = model(name)
    stage = pointe_stage(save(net, tmp_path / FILES[name]), "base")
    x, t = _inputs(3, 1024)
    g = torch.Generator().manual_seed(2)
    if name == "base40M-textvec":
        emb = torch.nn.functional.normalize(torch.randn(3, 768, generator=g), dim=-1)
        emb[2] = 0  # the null (unconditional) row
        ours_emb = emb[:, None]
    else:
        emb = torch.randn(3, 1024, 256, generator=g)
        emb[2] = 0
        ours_emb = emb.transpose(1, 2)
    with torch.no_grad():
        ref = net(x, t, embeddings=emb)[:, :6].transpose(1, 2)
        ours = stage.net(x.transpose(1, 2), t.float(), ours_emb)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_a_converted_upsampler_matches_point_e(tmp_path) -> None:
    net = model("upsample")
    stage = pointe_stage(save(net, tmp_path / FILES["upsample"]), "upsampler")
    x, t = _inputs(3, 3072)
    g = torch.Generator().manual_seed(3)
    low_res = torch.cat([torch.rand(3, 3, 1024, generator=g) - 0.5, torch.rand(3, 3, 1024, generator=g) * 255], 1)
    grid = torch.randn(3, 1024, 256, generator=g)
    grid[1] = 0  # Point-E's text pipeline: a zero grid
    scales = torch.tensor([2.0, 2.0, 2.0, 2 / 255, 2 / 255, 2 / 255])[None, :, None]
    biases = torch.tensor([0.0, 0.0, 0.0, -1.0, -1.0, -1.0])[None, :, None]
    cond = (low_res * scales + biases).transpose(1, 2)  # cdm3d's [-1, 1] representation
    with torch.no_grad():
        ref = net(x, t, low_res=low_res, embeddings=grid)[:, :6].transpose(1, 2)
        ours = stage.net(x.transpose(1, 2), t.float(), grid.transpose(1, 2), cond, None)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_a_converted_sdf_model_matches_point_e(tmp_path) -> None:
    net = model("sdf")
    stage = pointe_stage(save(net, tmp_path / "sdf.pt"), "sdf")
    g = torch.Generator().manual_seed(4)
    cloud, queries = torch.rand(2, 3, 512, generator=g) - 0.5, torch.rand(2, 3, 100, generator=g) - 0.5
    with torch.no_grad():
        ref = net(queries, point_clouds=cloud)
        ours = stage.net.decode(stage.net.encode(cloud.transpose(1, 2)), queries.transpose(1, 2))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


def test_the_folder_loads_as_a_cascade(tmp_path) -> None:
    from cdm3d.core import Cascade

    paths = {k: save(model(k), tmp_path / FILES[k]) for k in ("base40M-textvec", "upsample")}
    sdf = save(model("sdf"), tmp_path / "sdf.pt")
    folder = convert_pointe(tmp_path / "pe", base=paths["base40M-textvec"], upsampler=paths["upsample"], sdf=sdf)
    cascade = Cascade.from_pretrained(folder, load_clip=False)
    assert cascade.names == ["base", "upsample", "mesh"]
    assert [s.config.type for s in cascade.stages.values()] == ["points.coarse", "points.upsample", "mesh.sdf"]
    assert cascade.clip_ref.model == "ViT-L-14-quickgelu" and cascade.clip_ref.pretrained == "openai"
    assert math.isclose(cascade.stages["upsample"].config.sampling.karras.sigma_max, 160.0)


def _pointe_sampler(base, up, base_name: str, steps: int, guidance: tuple[float, float], key: str):
    from pointe_oracle import diffusion, point_e

    point_e()
    from point_e.diffusion.sampler import PointCloudSampler

    return PointCloudSampler(
        device=torch.device("cpu"),
        models=[base, up],
        diffusions=[diffusion(base_name), diffusion("upsample")],
        num_points=[1024, 3072],
        aux_channels=["R", "G", "B"],
        guidance_scale=list(guidance),
        model_kwargs_key_filter=(key, "*" if guidance[1] not in (0.0, 1.0) else ""),
        karras_steps=(steps, steps),
    )


def _as_point_e(clouds) -> torch.Tensor:
    """cdm3d clouds as Point-E's raw samples ``[B, 6, N]`` (z-up, half the scale, colours 0-255)."""
    from cdm3d.stages.points.frame import to_network

    xyz = to_network(clouds.coords, "pointe") / 2
    return torch.cat([xyz, clouds.colors * 255], -1).transpose(1, 2)


def _close_to_point_e(ours, ref: torch.Tensor) -> None:
    ours = _as_point_e(ours)
    torch.testing.assert_close(ours[:, :3], ref[:, :3], atol=1e-4, rtol=0)
    torch.testing.assert_close(ours[:, 3:], ref[:, 3:].clamp(0, 255), atol=0.02, rtol=0)


def test_the_karras_heun_port_gives_point_e_text_pipelines_cloud(tmp_path) -> None:
    """base40M-textvec + upsampler, 8 Karras-Heun steps each, guidance 3 on the base, the upsampler on a zero
    grid without guidance (Point-E's text settings): the same 4096 points from the same noise."""
    from cdm3d.core import Conditioning

    base, up = model("base40M-textvec", TINY["base40M-textvec"]), model("upsample", TINY["upsample"])
    ours_base = pointe_stage(save(base, tmp_path / "b.pt"), "base")
    ours_up = pointe_stage(save(up, tmp_path / "u.pt"), "upsampler")
    emb = torch.nn.functional.normalize(torch.randn(2, 768, generator=torch.Generator().manual_seed(5)), dim=-1)
    torch.manual_seed(7)
    sampler = _pointe_sampler(base, up, "base40M-textvec", 8, (3.0, 0.0), "embeddings")
    ref = sampler.sample_batch(batch_size=2, model_kwargs={"embeddings": emb})
    cond = Conditioning({"text": emb}, {"text": torch.zeros(768), "image_grid": torch.zeros(256, 1024)})
    g = torch.Generator().manual_seed(7)
    sampling = {"steps": 8}
    coarse = ours_base.sample(None, cond, generator=g, sampling=sampling)
    dense = ours_up.sample(coarse, cond, generator=g, sampling=sampling)
    assert dense.num_points == 4096
    _close_to_point_e(dense, ref)


def test_the_karras_heun_port_gives_point_e_image_pipelines_cloud(tmp_path) -> None:
    """base40M (image grid) + upsampler, guidance 3 on both (Point-E's image settings; its unconditional passes
    see a zero grid and, in the upsampler, a zero low-resolution cloud): the same 4096 points."""
    from cdm3d.core import Conditioning

    base, up = model("base40M", TINY["base40M"]), model("upsample", TINY["upsample"], seed=1)
    ours_base = pointe_stage(save(base, tmp_path / "b.pt"), "base")
    ours_up = pointe_stage(save(up, tmp_path / "u.pt"), "upsampler", image=True)
    grid = torch.randn(2, 1024, 256, generator=torch.Generator().manual_seed(6))
    for net in (base, up):  # the CLIP stub's stand-in for images: our grid
        net.clip.embed_images_grid = lambda images: grid[: len(images)]
    torch.manual_seed(8)
    ref = _pointe_sampler(base, up, "base40M", 8, (3.0, 3.0), "images").sample_batch(
        batch_size=2, model_kwargs={"images": [None, None]}
    )
    cond = Conditioning({"image_grid": grid.transpose(1, 2)}, {"image_grid": torch.zeros(256, 1024)})
    g = torch.Generator().manual_seed(8)
    coarse = ours_base.sample(None, cond, generator=g, sampling={"steps": 8})
    dense = ours_up.sample(coarse, cond, generator=g, sampling={"steps": 8})
    _close_to_point_e(dense, ref)


def test_a_converted_sdf_model_meshes_as_point_e_does(tmp_path) -> None:
    """Point-E's marching_cubes_mesh at grid 32 and cdm3d's mesh.sdf stage on the same cloud: the same vertices."""
    from pointe_oracle import point_e

    from cdm3d.core import Conditioning
    from cdm3d.stages.points.frame import from_network, to_network
    from cdm3d.types import PointClouds

    point_e()
    from point_e.util.pc_to_mesh import marching_cubes_mesh
    from point_e.util.point_cloud import PointCloud

    net = model("sdf")
    stage = pointe_stage(save(net, tmp_path / "sdf.pt"), "sdf")
    g = torch.Generator().manual_seed(9)
    raw, rgb = (torch.rand(1024, 3, generator=g) - 0.5) * 0.8, torch.rand(1024, 3, generator=g)
    pc = PointCloud(coords=raw.numpy(), channels={c: rgb[:, i].numpy() for i, c in enumerate("RGB")})
    ref = marching_cubes_mesh(pc, net, grid_size=32)
    cloud = PointClouds(from_network(raw * 2, "pointe")[None], rgb[None])
    cond = Conditioning({"text": torch.zeros(1, 768)}, {"text": torch.zeros(768)})
    mesh = stage.sample(cloud, cond, sampling={"grid": 32})
    assert len(ref.verts) > 0 and mesh.vertices[0].shape[0] == len(ref.verts)
    ours = to_network(mesh.vertices[0], "pointe") / 2
    torch.testing.assert_close(ours, torch.from_numpy(ref.verts).float(), atol=1e-4, rtol=0)
    assert torch.equal(mesh.faces[0], torch.from_numpy(ref.faces).long())
    expected_colors = torch.stack([torch.from_numpy(ref.vertex_channels[c]) for c in "RGB"], -1).float()
    torch.testing.assert_close(mesh.colors[0], expected_colors)


@pytest.mark.parametrize("name", ["base40M-textvec", "upsample"])
def test_the_training_loss_is_point_es_mse_term(name, tmp_path) -> None:
    """For the same batch, timesteps and noise, the loss of a converted stage equals Point-E's
    ``training_losses(...)["mse"]`` (averaged over the batch)."""
    from pointe_oracle import diffusion

    net = model(name)
    stage = pointe_stage(save(net, tmp_path / "m.pt"), "upsampler" if name == "upsample" else "base")
    g = torch.Generator().manual_seed(10)
    n = 3072 if name == "upsample" else 1024
    raw = torch.cat([torch.rand(2, 3, n, generator=g) - 0.5, torch.rand(2, 3, n, generator=g) * 255], 1)
    t, noise = torch.tensor([17, 900]), torch.randn(2, 6, n, generator=g)
    scale = torch.tensor([2.0, 2.0, 2.0, 2 / 255, 2 / 255, 2 / 255])[None, :, None]
    bias = torch.tensor([0.0, 0.0, 0.0, -1.0, -1.0, -1.0])[None, :, None]
    x0 = (raw * scale + bias).transpose(1, 2)  # the network's frame and representation
    kwargs, emb, cond = {}, None, None
    if name == "upsample":
        low_res = torch.cat([torch.rand(2, 3, 1024, generator=g) - 0.5, torch.rand(2, 3, 1024, generator=g) * 255], 1)
        kwargs = {"low_res": low_res, "embeddings": torch.zeros(2, 1024, 256)}
        emb, cond = torch.zeros(2, 256, 1024), (low_res * scale + bias).transpose(1, 2)
    else:
        vec = torch.nn.functional.normalize(torch.randn(2, 768, generator=g), dim=-1)
        kwargs, emb = {"embeddings": vec}, vec[:, None]
    with torch.no_grad():
        ref = diffusion(name).training_losses(net, raw, t, model_kwargs=kwargs, noise=noise)["mse"].mean()
        ours = stage.loss_at(x0, emb, cond, None, t, noise.transpose(1, 2))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


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

    paths = {k: save(model(k, TINY[k]), tmp_path / FILES[k]) for k in ("base40M-textvec", "upsample")}
    folder = convert_pointe(tmp_path / "pe", base=paths["base40M-textvec"], upsampler=paths["upsample"])
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
    good = model("base40M-textvec").state_dict()
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
    files["upsampler_as_base"] = save(model("upsample"), tmp_path / "upsample_40m.pt")
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

    up = save(model("upsample", TINY["upsample"]), tmp_path / FILES["upsample"])
    sdf = save(model("sdf", TINY["sdf"]), tmp_path / "sdf.pt")
    base = save(model("base40M-textvec", TINY["base40M-textvec"]), tmp_path / "t.pt")
    text = convert_pointe(tmp_path / "text", base=base, upsampler=up, sdf=sdf)
    image = convert_pointe(
        tmp_path / "image", base=save(model("base40M", TINY["base40M"]), tmp_path / "i.pt"), upsampler=up
    )
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

    base = pointe_stage(save(model("base40M-textvec", TINY["base40M-textvec"]), tmp_path / "b.pt"), "base")
    up = pointe_stage(save(model("upsample", TINY["upsample"]), tmp_path / "u.pt"), "upsampler")
    emb = torch.nn.functional.normalize(torch.randn(2, 768), dim=-1)
    cond = Conditioning({"text": emb}, {"text": torch.zeros(768), "image_grid": torch.zeros(256, 1024)})
    sampling = {"scheduler": "dpm++", "steps": 4}
    coarse = base.sample(None, cond, generator=torch.Generator().manual_seed(0), sampling=sampling)
    dense = up.sample(coarse, cond, generator=torch.Generator().manual_seed(0), sampling=sampling)
    assert dense.coords.shape == (2, 4096, 3) and torch.isfinite(dense.coords).all()
    assert base.num_steps(sampling) == 4 and base.num_steps() == 64
