"""``points.select``: keep, of several candidate clouds per prompt, the one closest to the prompt in CLIP space.

A selector stage (:mod:`cdm3d.core.selection`): placed after ``points.upsample``, a run with
``candidates = K`` samples K clouds per prompt (or image) and keeps the one whose ``PointCritic`` embedding
has the highest cosine with the prompt's CLIP embedding. The critic reads ``num_points`` random points of a
cloud (``reads`` times, averaged) and is trained with CLIP's contrastive loss against the text and image
embeddings of the world's objects (``configs/train/points/select.yaml``).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from cdm3d.core import STAGES, SelectorStage, SelectorStageConfig
from cdm3d.core.config import validate
from cdm3d.errors import InputError
from cdm3d.models.point_critic import PointCriticConfig, build_critic
from cdm3d.stages.points.coarse import CHANNELS
from cdm3d.types import PointClouds


class SelectPointsConfig(SelectorStageConfig):
    type: Literal["points.select"] = "points.select"
    cond_keys: list[str] = ["text", "image"]
    # Points the critic reads of each cloud when it scores (a random subset; all of a smaller cloud), and of
    # each training cloud (fewer: training is the costly part; max and mean pooling read any number).
    num_points: int = Field(1024, ge=1)
    train_points: int = Field(512, ge=1)
    network: PointCriticConfig = PointCriticConfig()
    # Training: each example's points are jittered by Gaussian noise of a std drawn in [0, jitter] (as
    # generated clouds are noisier than the world's).
    jitter: float = Field(0.03, ge=0.0)


@STAGES.register("points.select")
class SelectPointsStage(SelectorStage):
    Config = SelectPointsConfig
    config: SelectPointsConfig
    consumes: ClassVar[str] = "PointClouds"
    produces: ClassVar[str] = "PointClouds"

    def __init__(self, config: SelectPointsConfig) -> None:
        super().__init__(config)
        self.net = build_critic(config.network, CHANNELS, config.embed_dim, config.temperature)

    def _subset(self, x: torch.Tensor, n: int, generator: torch.Generator | None) -> torch.Tensor:
        if x.shape[1] <= n:
            return x
        order = torch.rand(x.shape[0], x.shape[1], generator=generator).argsort(dim=1, stable=True)[:, :n]
        return torch.gather(x, 1, order.to(x.device)[..., None].expand(-1, -1, x.shape[-1]))

    def read(self, prev: Any, generator: torch.Generator | None) -> torch.Tensor:
        if not isinstance(prev, PointClouds):
            raise InputError(f"stage '{self.name}' reads PointClouds, got {type(prev).__name__}")
        x = prev.to_tensor().float()
        if not torch.isfinite(x).all():
            raise InputError(f"stage '{self.name}': a candidate cloud holds NaN or Inf values")
        return self._subset(x, self.config.num_points, generator)

    def train_input(self, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = self._subset(x0.float(), self.config.train_points, generator)
        std = torch.rand(x.shape[0], 1, 1, generator=generator) * self.config.jitter
        return x + (torch.randn(x.shape, generator=generator) * std).to(x.device)


def ensemble_critics(stages: list[SelectPointsStage]) -> SelectPointsStage:
    """One selector of ``stages``' type whose critic is the ensemble of their critics (each a single critic
    with the same config, as the same recipe trained at different seeds makes them); its score averages
    their cosines, its sampling settings are the first critic's."""
    if len(stages) < 2:
        raise InputError(f"an ensemble needs at least 2 critics, got {len(stages)}")
    first = stages[0]
    for i, stage in enumerate(stages):
        if not isinstance(stage, SelectPointsStage):
            raise InputError(f"critic {i} is a {type(stage).__name__}, not a point-cloud selector stage")
        if stage.config.network.members != 1:
            raise InputError(f"critic {i} is already an ensemble of {stage.config.network.members}")
        if stage.config.model_dump(exclude={"sampling"}) != first.config.model_dump(exclude={"sampling"}):
            raise InputError(f"critic {i}'s config differs from critic 0's: an ensemble joins critics of one recipe")
    fields = first.config.model_dump()
    fields["network"]["members"] = len(stages)
    ensemble = type(first)(validate(type(first.config), fields, f"an ensemble of {len(stages)} critics"))
    for member, stage in zip(ensemble.net.members, stages, strict=True):
        member.load_state_dict(stage.net.state_dict())
    return ensemble.eval()


__all__ = ["SelectPointsConfig", "SelectPointsStage", "ensemble_critics"]
