"""The plain data types stages exchange, each able to save itself."""

from cdm3d.types.images import Images
from cdm3d.types.meshes import Meshes
from cdm3d.types.points import PointClouds

__all__ = ["Images", "Meshes", "PointClouds"]
