"""Headless rendering of meshes and coloured point clouds (pure torch), and previews."""

from cdm3d.render.camera import Camera, random_camera
from cdm3d.render.rasterizer import render_mesh, render_points

__all__ = ["Camera", "random_camera", "render_mesh", "render_points"]
