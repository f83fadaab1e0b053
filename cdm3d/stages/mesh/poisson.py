"""``mesh.poisson``: coloured points -> a coloured mesh by screened Poisson reconstruction (open3d).

Statistical outliers are dropped first; normals are estimated from neighbourhoods and oriented consistently over a
tangent-plane graph, then flipped outward as a whole (most normals point away
from the centroid). Faces in low-density regions (the fringe Poisson adds far
from the samples) are trimmed at a density quantile, and each vertex takes the
colour of its nearest input point; the mesh is cropped to the points' bounding box.
No training; the stage has no weights.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from cdm3d.core import STAGES, Conditioning, Stage, StageConfig
from cdm3d.errors import InputError
from cdm3d.types.meshes import Meshes


class PoissonMeshConfig(StageConfig):
    type: Literal["mesh.poisson"] = "mesh.poisson"
    depth: int = Field(7, ge=3, le=12)  # octree depth: 2^depth cells a side
    neighbours: int = Field(20, ge=4)  # for normal estimation and orientation
    trim_quantile: float = Field(0.05, ge=0.0, lt=1.0)  # drop vertices below this density quantile


@STAGES.register("mesh.poisson")
class PoissonMeshStage(Stage):
    Config = PoissonMeshConfig
    config: PoissonMeshConfig
    consumes: ClassVar[str] = "PointClouds"
    produces: ClassVar[str] = "Meshes"

    def sample(
        self,
        prev: Any,
        cond: Conditioning,
        *,
        generator: torch.Generator | None = None,
        sampling: Any = None,
        callback: Any = None,
    ) -> Meshes:
        self.check_prev(prev)
        if sampling:
            raise InputError(f"stage '{self.name}' has no sampling settings (got {sorted(sampling)})")
        if not torch.isfinite(prev.coords).all():
            raise InputError(f"stage '{self.name}': the point cloud holds NaN or Inf values")
        if prev.num_points < self.config.neighbours:
            raise InputError(f"stage '{self.name}': {prev.num_points} points are too few to mesh")
        vs, fs, cs = [], [], []
        for i in range(len(prev)):
            v, f, c = self.mesh_one(prev.coords[i].cpu().numpy(), prev.colors[i].cpu().numpy())
            vs.append(torch.from_numpy(v))
            fs.append(torch.from_numpy(f))
            cs.append(torch.from_numpy(c))
        if callback is not None:
            callback(1, 1)
        return Meshes(vs, fs, cs)

    def mesh_one(self, xyz: np.ndarray, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        import open3d as o3d

        cfg = self.config
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz.astype(np.float64)))
        # Stray points would make Poisson span the space between them and the object.
        pcd, kept = pcd.remove_statistical_outlier(nb_neighbors=cfg.neighbours, std_ratio=2.0)
        xyz, rgb = xyz[kept], rgb[kept]
        pcd.estimate_normals(o3d.geometry.KDTreeSearchParamKNN(cfg.neighbours))
        pcd.orient_normals_consistent_tangent_plane(cfg.neighbours)
        normals = np.asarray(pcd.normals)
        if (np.einsum("ij,ij->i", normals, xyz - xyz.mean(0)) < 0).mean() > 0.5:
            pcd.normals = o3d.utility.Vector3dVector(-normals)
        # One thread: Open3D's multi-threaded Poisson segfaults now and then, more often on a busy CPU
        # (isl-org/Open3D#6828, #7229); at these cloud sizes one thread costs little.
        with o3d.utility.VerbosityContextManager(o3d.utility.VerbosityLevel.Error):
            mesh, density = o3d.geometry.TriangleMesh.create_from_point_cloud_poisson(pcd, depth=cfg.depth, n_threads=1)
        density = np.asarray(density)
        if cfg.trim_quantile > 0 and len(density):
            mesh.remove_vertices_by_mask(density < np.quantile(density, cfg.trim_quantile))
        # Poisson closes the surface beyond the samples; keep what lies within their bounds.
        box = pcd.get_axis_aligned_bounding_box()
        box.scale(1.05, box.get_center())
        mesh = mesh.crop(box)
        vertices = np.asarray(mesh.vertices, np.float32)
        faces = np.asarray(mesh.triangles, np.int64)
        if len(faces) == 0:
            raise InputError(f"stage '{self.name}': Poisson reconstruction produced no surface")
        from scipy.spatial import cKDTree

        _, nearest = cKDTree(xyz).query(vertices)
        return vertices, faces, rgb[nearest].astype(np.float32)
