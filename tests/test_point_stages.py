"""The point stages pass the stage contract; PointClouds save and load with their colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from contract import check_stage_contract

from cdm3d.core import Cascade, Conditioning, build_stage
from cdm3d.errors import InputError
from cdm3d.stages.points.upsample import UpsamplePointsConfig, UpsamplePointsStage
from cdm3d.types import PointClouds

D = 16
TINY_NET = {"width": 32, "layers": 1, "heads": 2}
FAST = {"steps": 3}


def _cond(batch: int, slots=("text",)) -> Conditioning:
    g = torch.Generator().manual_seed(0)
    emb = {k: torch.nn.functional.normalize(torch.randn(batch, D, generator=g), dim=-1) for k in slots}
    return Conditioning(emb, {"text": torch.zeros(D), "image": torch.zeros(D)})


def _coarse():
    return build_stage({"type": "points.coarse", "embed_dim": D, "num_points": 24, "network": TINY_NET})


def _upsample():
    return build_stage(
        {"type": "points.upsample", "embed_dim": D, "num_points": 40, "coarse_points": 24, "network": TINY_NET}
    )


def _randomise(stage):
    # Fresh networks output zeros (zero-initialised output layer); give them something to say.
    torch.manual_seed(0)
    for p in stage.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return stage


def test_coarse_stage_contract(tmp_path) -> None:
    stage = _randomise(_coarse())
    check_stage_contract(
        lambda: stage, None, _cond(3), tmp_path, {"coords": (3, 24, 3), "colors": (3, 24, 3)}, sampling=FAST
    )


def test_upsample_stage_contract(tmp_path) -> None:
    stage = _randomise(_upsample())
    prev = PointClouds(torch.rand(3, 24, 3) - 0.5, torch.rand(3, 24, 3))
    nan = PointClouds(torch.full((3, 24, 3), float("nan")), torch.rand(3, 24, 3))
    check_stage_contract(
        lambda: stage,
        prev,
        _cond(3),
        tmp_path,
        {"coords": (3, 64, 3), "colors": (3, 64, 3)},
        bad_prevs=[prev[0:2], nan],
        sampling=FAST,
    )


def test_upsample_output_keeps_the_coarse_points() -> None:
    stage = _randomise(_upsample())
    prev = PointClouds(torch.rand(2, 24, 3) - 0.5, torch.rand(2, 24, 3))
    out = stage.sample(prev, _cond(2), generator=torch.Generator().manual_seed(0), sampling=FAST)
    assert torch.equal(out.coords[:, :24], prev.coords) and torch.equal(out.colors[:, :24], prev.colors)


def test_text_and_image_slots_both_condition_the_coarse_stage() -> None:
    stage = _randomise(_coarse())
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    text_only = stage.sample(None, _cond(2, ("text",)), generator=g(), sampling=FAST)
    both = stage.sample(None, _cond(2, ("text", "image")), generator=g(), sampling=FAST)
    assert not torch.allclose(text_only.coords, both.coords)


def test_point_cascade_runs_and_slices() -> None:
    cascade = Cascade([("coarse", _randomise(_coarse())), ("upsample", _randomise(_upsample()))])
    out = cascade.run(_cond(2), seed=0, sampling={"coarse": FAST, "upsample": FAST}, progress=False)
    assert out["coarse"].coords.shape == (2, 24, 3) and out["upsample"].coords.shape == (2, 64, 3)


def test_point_clouds_save_and_load(tmp_path) -> None:
    clouds = PointClouds(torch.rand(2, 50, 3) - 0.5, torch.rand(2, 50, 3))
    for fmt in (".ply", ".npz"):
        path = clouds.save(tmp_path / f"c{fmt}", index=1)
        back = PointClouds.load(path)
        np.testing.assert_allclose(back.coords[0].numpy(), clouds.coords[1].numpy(), atol=1e-6)
        np.testing.assert_allclose(back.colors[0].numpy(), clouds.colors[1].numpy(), atol=1 / 255 + 1e-6)
        with pytest.raises(InputError, match="exists"):
            clouds.save(path)
    import open3d as o3d

    pcd = o3d.io.read_point_cloud(str(tmp_path / "c.ply"))
    assert len(pcd.points) == 50 and pcd.has_colors()
    np.testing.assert_allclose(np.asarray(pcd.colors), clouds.colors[1].numpy(), atol=1 / 255 + 1e-6)
    paths = clouds.save_all(tmp_path / "all", "pts") if (tmp_path / "all").mkdir() is None else []
    assert len(paths) == 4 and all(p.exists() for p in paths)


def test_point_clouds_bad_input(tmp_path) -> None:
    with pytest.raises(InputError):
        PointClouds(torch.rand(2, 5), torch.rand(2, 5))
    with pytest.raises(InputError, match="do not match"):
        PointClouds(torch.rand(1, 5, 3), torch.rand(1, 4, 3))
    clouds = PointClouds(torch.rand(1, 5, 3), torch.rand(1, 5, 3))
    with pytest.raises(InputError, match="unknown point-cloud format"):
        clouds.save(tmp_path / "x.xyz")
    with pytest.raises(InputError, match="does not exist"):
        clouds.save(tmp_path / "missing" / "x.ply")
    (tmp_path / "bad.ply").write_bytes(b"ply\nformat garbage")
    with pytest.raises(InputError):
        PointClouds.load(tmp_path / "bad.ply")


def test_anchored_children_lie_in_their_anchors_cells() -> None:
    from cdm3d.data.world import World
    from cdm3d.training.data.points import anchored_children

    xyz, rgb = World("train")[0].points(2048)
    pts = torch.from_numpy(np.concatenate([xyz, rgb * 2 - 1], 1))[None]
    anchors, pool = pts[:, :128], pts[:, 128:]
    children = anchored_children(anchors, pool, 384, torch.Generator().manual_seed(0))
    assert children.shape == (1, 384, 6)
    own = torch.cdist(children[..., :3], anchors[..., :3]).argmin(-1) == torch.arange(384) % 128
    assert own.float().mean() > 0.97  # the rest: cells with fewer points than children, lent a neighbour's
    assert len({tuple(p) for p in children[0].tolist()}) > 0.95 * 384  # few repeats
    # Anchors plus children cover the surface as evenly as the same number of random surface points.
    from cdm3d.eval.point_metrics import chamfer

    ref = pool[:, 512:, :3]
    union = torch.cat([anchors, children], 1)[..., :3]
    assert chamfer(union, ref) < 1.2 * chamfer(pool[:, :512, :3], ref)


def test_anchored_upsampler_outputs_anchors_plus_scaled_offsets() -> None:
    stage = UpsamplePointsStage(
        UpsamplePointsConfig(embed_dim=16, coarse_points=8, num_points=24, anchored=True, network={"width": 16})
    )
    coarse = PointClouds(torch.rand(2, 8, 3), torch.rand(2, 8, 3))
    offsets = torch.zeros(2, 24, 6)
    offsets[..., 0] = 1.0  # one unit of anchor_scale along x
    out = stage.to_output(offsets, coarse)
    assert out.num_points == 32 and torch.equal(out.coords[:, :8], coarse.coords)
    expected = coarse.coords.repeat(1, 3, 1) + torch.tensor([stage.config.anchor_scale, 0.0, 0.0])
    assert torch.allclose(out.coords[:, 8:], expected)
    assert torch.allclose(out.colors[:, 8:], coarse.colors.repeat(1, 3, 1))


def test_local_blocks_keep_permutation_equivariance_and_start_as_the_plain_network() -> None:
    from cdm3d.models.point_transformer import PointDenoiser, PointTransformerConfig

    torch.manual_seed(0)
    plain = PointDenoiser(PointTransformerConfig(**{**TINY_NET, "layers": 2}), 6, D, 2)
    local = PointDenoiser(PointTransformerConfig(**{**TINY_NET, "layers": 2}, local_k=5, local_width=8), 6, D, 2)
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.2)
    # The plain network's tensors load unchanged; the local blocks (zero output) add nothing yet.
    missing, unexpected = local.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("local_blocks.") for k in missing)
    x, t, emb = torch.randn(2, 20, 6), torch.tensor([10.0, 500.0]), torch.randn(2, 2, D)
    torch.testing.assert_close(local(x, t, emb), plain(x, t, emb))
    # Trained local blocks change the output, and permuting the points permutes it.
    for name, p in local.named_parameters():
        if name.startswith("local_blocks."):
            torch.nn.init.normal_(p, std=0.3)
    out = local(x, t, emb)
    assert not torch.allclose(out, plain(x, t, emb), atol=1e-3)
    perm = torch.randperm(20)
    torch.testing.assert_close(local(x[:, perm], t, emb), out[:, perm], atol=1e-5, rtol=1e-4)


def test_the_local_critic_is_order_invariant_and_its_first_layer_sees_neighbours() -> None:
    from cdm3d.models.point_critic import EdgeConv, PointCritic, PointCriticConfig

    torch.manual_seed(0)
    net = PointCritic(PointCriticConfig(width=16, local_k=8), 6, 32, 0.07).eval()
    assert isinstance(net.point_mlp[0], EdgeConv)
    x = torch.randn(2, 64, 6)
    perm = torch.randperm(64)
    torch.testing.assert_close(net(x[:, perm]), net(x), atol=1e-5, rtol=1e-5)
    # Moving one point changes the first-layer features of other points (its neighbours); in a plain
    # PointNet each point's feature depends on that point alone.
    moved = x.clone()
    moved[:, 0, :3] = x[:, 1, :3] + 1e-3  # point 0 becomes point 1's nearest neighbour
    nearest = EdgeConv(6, 8, k=1)  # one neighbour: point 1's feature reads point 0 now
    assert ((nearest(moved) - nearest(x))[:, 1].abs().amax(-1) > 1e-4).all()
    plain = PointCritic(PointCriticConfig(width=16), 6, 32, 0.07).point_mlp[0]
    assert torch.equal(plain(moved)[:, 1:], plain(x)[:, 1:])
    # Fewer points than neighbours (a cloud of 3) still embeds.
    assert net(torch.randn(1, 3, 6)).shape == (1, 32)
