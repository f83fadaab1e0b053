"""Mesh stages: ``mesh.sdf`` (a learned signed distance field + marching cubes) and ``mesh.poisson``
(open3d Poisson reconstruction, no training); ``mesh.select`` (a selector among candidate meshes)."""

from cdm3d.stages.mesh.poisson import PoissonMeshConfig, PoissonMeshStage
from cdm3d.stages.mesh.sdf import SDFMeshConfig, SDFMeshStage, SDFSamplingConfig
from cdm3d.stages.mesh.select import SelectMeshConfig, SelectMeshStage

__all__ = [
    "PoissonMeshConfig",
    "PoissonMeshStage",
    "SDFMeshConfig",
    "SDFMeshStage",
    "SDFSamplingConfig",
    "SelectMeshConfig",
    "SelectMeshStage",
]
