"""Point-E's released models in cdm3d, checked against Point-E's own code (the oracle in ../shared/peers):
networks, sampled clouds, SDF meshes and the training loss agree."""

from __future__ import annotations

import pytest
import torch
from pointe_oracle import FILES, TINY, model, needs_point_e, save

from cdm3d.convert.pointe import pointe_stage

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
