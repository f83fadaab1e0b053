"""Point-cloud stages: ``points.coarse`` (CLIP -> N points), ``points.upsample`` (coarse -> dense) and
``points.select`` (the best of several candidate clouds per prompt)."""

from cdm3d.stages.points.coarse import CoarsePointsConfig, CoarsePointsStage
from cdm3d.stages.points.select import SelectPointsConfig, SelectPointsStage
from cdm3d.stages.points.upsample import UpsamplePointsConfig, UpsamplePointsStage

__all__ = [
    "CoarsePointsConfig",
    "CoarsePointsStage",
    "SelectPointsConfig",
    "SelectPointsStage",
    "UpsamplePointsConfig",
    "UpsamplePointsStage",
]
