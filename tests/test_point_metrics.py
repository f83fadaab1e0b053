"""Point-cloud metrics behave as PointFlow defines them."""

from __future__ import annotations

import torch

from cdm3d.eval.point_metrics import chamfer, distribution_metrics, emd


def test_chamfer_is_zero_for_identical_clouds_and_matches_a_hand_computation() -> None:
    a = torch.rand(2, 50, 3)
    assert torch.allclose(chamfer(a, a), torch.zeros(2), atol=1e-7)
    x = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    y = torch.tensor([[[0.0, 0, 0]]])
    # a->b: (0 + 1) / 2 ; b->a: 0  => 0.5 (squared distances)
    assert torch.allclose(chamfer(x, y), torch.tensor([0.5]))


def test_emd_of_a_shifted_cloud_is_the_shift() -> None:
    a = torch.rand(1, 200, 3)
    b = a + torch.tensor([0.1, 0.0, 0.0])
    assert abs(emd(a, b).item() - 0.1) < 0.01
    assert emd(a, a).item() < 0.02


def test_1nna_is_about_half_for_the_same_distribution_and_one_for_different() -> None:
    g = torch.Generator().manual_seed(0)
    same_a = torch.rand(20, 64, 3, generator=g)
    same_b = torch.rand(20, 64, 3, generator=g)
    far = torch.rand(20, 64, 3, generator=g) + 3
    m_same = distribution_metrics(same_a, same_b)
    m_far = distribution_metrics(far, same_b)
    assert 0.25 <= m_same["1nna_cd"] <= 0.75
    assert m_far["1nna_cd"] == 1.0
    assert m_far["mmd_cd"] > 10 * m_same["mmd_cd"]
    assert m_same["cov_cd"] > 0.3
