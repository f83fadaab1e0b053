"""An ensemble of point-cloud critics (``network.members``): its score is the mean of its members' cosines,
its loss the mean of their contrastive losses; tools/ensemble_critics.py joins separately trained critics."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from test_trainer import TINY_CLIP

from cdm3d.core import ClipEncoder, build_stage, load_stage, save_stage
from cdm3d.errors import ConfigError, InputError
from cdm3d.stages import load_builtin
from cdm3d.stages.points.select import ensemble_critics
from cdm3d.types import PointClouds

_spec = importlib.util.spec_from_file_location(
    "ensemble_critics_tool", Path(__file__).resolve().parents[1] / "tools" / "ensemble_critics.py"
)
tool = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tool)


def _critic(seed: int, **network):
    load_builtin()
    torch.manual_seed(seed)
    config = {"type": "points.select", "embed_dim": 16, "num_points": 48, "train_points": 32}
    return build_stage({**config, "network": {"width": 16, **network}}).eval()


@pytest.fixture(scope="module")
def cond():
    return ClipEncoder.from_config(TINY_CLIP).encode(["a red cube", "a blue sphere", "a green mug"])


def _clouds(n: int = 3, points: int = 64) -> PointClouds:
    g = torch.Generator().manual_seed(5)
    return PointClouds(torch.rand(n, points, 3, generator=g) - 0.5, torch.rand(n, points, 3, generator=g))


def _score(stage, clouds, cond, reads: int = 3) -> torch.Tensor:
    return stage.score(clouds, cond, torch.Generator().manual_seed(0), sampling={"reads": reads})


def test_the_ensembles_score_and_loss_are_the_means_of_its_members(cond, tmp_path) -> None:
    a, b = _critic(0), _critic(1)
    both = ensemble_critics([a, b])
    assert both.config.network.members == 2 and len(both.net.members) == 2
    clouds = _clouds()
    sa, sb, s2 = _score(a, clouds, cond), _score(b, clouds, cond), _score(both, clouds, cond)
    assert not torch.allclose(sa, sb)  # different critics, different cosines
    torch.testing.assert_close(s2, (sa + sb) / 2)
    x0 = clouds.to_tensor()
    la = a.loss(x0, cond, generator=torch.Generator().manual_seed(3))
    lb = b.loss(x0, cond, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(both.loss(x0, cond, generator=torch.Generator().manual_seed(3)), (la + lb) / 2)
    # Saved and loaded as any stage file, it scores the same.
    save_stage(both, tmp_path / "ens.safetensors")
    torch.testing.assert_close(_score(load_stage(tmp_path / "ens.safetensors"), clouds, cond), s2)
    # One member's ensemble is the critic itself.
    single = _critic(0, members=1)
    torch.testing.assert_close(_score(single, clouds, cond), sa)


def test_an_ensemble_from_scratch_has_independent_members_and_a_gradient_for_each(cond) -> None:
    both = _critic(0, members=2).train()
    first, second = (m.point_mlp[0].weight for m in both.net.members)
    assert not torch.equal(first, second)
    both.loss(_clouds().to_tensor(), cond, generator=torch.Generator().manual_seed(0)).backward()
    for member in both.net.members:
        assert member.point_mlp[0].weight.grad.abs().sum() > 0 and member.logit_scale.grad is not None


def test_only_single_critics_of_one_config_join(cond) -> None:
    with pytest.raises(InputError, match="at least 2"):
        ensemble_critics([_critic(0)])
    # Sampling settings may differ (the first critic's are kept); the network may not.
    second = _critic(1)
    second.config = second.config.model_copy(
        update={"sampling": second.config.sampling.model_copy(update={"reads": 9})}
    )
    assert ensemble_critics([_critic(0), second]).config.sampling.reads == _critic(0).config.sampling.reads
    with pytest.raises(InputError, match="differs"):
        ensemble_critics([_critic(0), _critic(1, width=32)])
    with pytest.raises(ConfigError, match="members"):  # more members than a config allows
        ensemble_critics([_critic(seed) for seed in range(9)])
    with pytest.raises(InputError, match="already an ensemble"):
        ensemble_critics([_critic(0, members=2), _critic(1, members=2)])


def test_the_tool_writes_an_ensemble_file_and_refuses_bad_requests(cond, tmp_path, capsys) -> None:
    paths = []
    for seed in (0, 1):
        paths.append(tmp_path / f"critic{seed}.safetensors")
        save_stage(_critic(seed), paths[-1])
    out = tmp_path / "ens.safetensors"
    assert tool.main([str(p) for p in paths] + ["--out", str(out)]) == 0
    clouds = _clouds()
    expected = (_score(load_stage(paths[0]), clouds, cond) + _score(load_stage(paths[1]), clouds, cond)) / 2
    torch.testing.assert_close(_score(load_stage(out, expected_type="points.select"), clouds, cond), expected)
    before = out.read_bytes()
    assert tool.main([str(p) for p in paths] + ["--out", str(out)]) == 2  # exists, no --overwrite
    assert "exists" in capsys.readouterr().err and out.read_bytes() == before
    bad = tmp_path / "bad.safetensors"
    assert tool.main([str(paths[0]), "--out", str(bad)]) == 2  # one critic
    assert tool.main([str(paths[0]), str(tmp_path / "missing.safetensors"), "--out", str(bad)]) == 2
    assert tool.main([str(p) for p in paths] + ["--out", str(tmp_path / "ens.pt")]) == 2
    assert not bad.exists() and not (tmp_path / "ens.pt").exists()
    assert "ensemble_critics" in capsys.readouterr().err
