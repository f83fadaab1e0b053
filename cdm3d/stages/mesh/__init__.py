"""Mesh stages: ``mesh.poisson`` (open3d Poisson reconstruction, no training)."""

from cdm3d.stages.mesh.poisson import PoissonMeshConfig, PoissonMeshStage

__all__ = ["PoissonMeshConfig", "PoissonMeshStage"]
