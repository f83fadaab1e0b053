"""Helpers of the point-stage evaluation."""

from __future__ import annotations

import torch

from cdm3d.data.vocab import CATEGORIES
from cdm3d.eval.points_eval import nearest_neighbour_upsample, prompts_per_category


def test_test_prompts_cover_every_category_equally() -> None:
    prompts = prompts_per_category(2)
    assert len(prompts) == 2 * len(CATEGORIES)
    assert {p[2] for p in prompts} == set(CATEGORIES)


def test_nearest_neighbour_upsampling_repeats_points() -> None:
    coarse = torch.rand(2, 10, 3)
    dense = nearest_neighbour_upsample(coarse, 25)
    assert dense.shape == (2, 25, 3)
    assert torch.equal(dense[:, 0], coarse[:, 0]) and torch.equal(dense[:, 1], coarse[:, 0])
