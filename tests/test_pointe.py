"""Point-E's released models in cdm3d, checked against Point-E's own code (the oracle in ../shared/peers)."""

from __future__ import annotations

import math

import pytest
import torch
from pointe_oracle import FILES, model, needs_point_e, save

from cdm3d.convert.pointe import convert_pointe, pointe_stage

pytestmark = needs_point_e
T = (0, 512, 1023)


def _inputs(batch: int, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 6, n, generator=g), torch.tensor(T[:batch])


@pytest.mark.parametrize("name", ["base40M-textvec", "base40M"])
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

    base, up = model("base40M-textvec"), model("upsample")
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

    base, up = model("base40M"), model("upsample", seed=1)
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
