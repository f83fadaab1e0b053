"""Mesh stages: ``mesh.sdf`` (a learned signed distance field + marching cubes) and ``mesh.poisson``
(open3d Poisson reconstruction, no training)."""

from cdm3d.stages.mesh.poisson import PoissonMeshConfig, PoissonMeshStage
from cdm3d.stages.mesh.sdf import SDFMeshConfig, SDFMeshStage, SDFSamplingConfig

__all__ = ["PoissonMeshConfig", "PoissonMeshStage", "SDFMeshConfig", "SDFMeshStage", "SDFSamplingConfig"]
