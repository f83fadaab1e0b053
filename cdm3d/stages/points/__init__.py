"""Point-cloud stages: ``points.coarse`` (CLIP -> N points) and ``points.upsample`` (coarse -> dense)."""

from cdm3d.stages.points.coarse import CoarsePointsConfig, CoarsePointsStage
from cdm3d.stages.points.upsample import UpsamplePointsConfig, UpsamplePointsStage

__all__ = ["CoarsePointsConfig", "CoarsePointsStage", "UpsamplePointsConfig", "UpsamplePointsStage"]
