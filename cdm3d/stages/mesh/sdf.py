"""``mesh.sdf``: coloured points + CLIP -> a watertight coloured mesh through a learned signed distance field.

In the manner of Point-E's SDF model: a transformer encodes the cloud (and the
CLIP tokens: CLIP reaches this stage too), a cross-attention decoder predicts
the signed distance (negative inside) at query points, and marching cubes
(scikit-image) extracts the zero level set on a grid over ``[-bound, bound]^3``.
The grid is padded with "outside" so every surface closes: meshes are
watertight. Each vertex takes the colour of its nearest input point.

Queries are decoded in chunks for every mesh of the batch at once, on the
stage's device (bf16 autocast on CUDA). With ``refine`` the grid is first
decoded at half resolution; only fine points near a coarse point whose
distance lies inside the truncation band are decoded, the others take the
interpolated (saturated) coarse value, whose sign is all marching cubes needs.

Training (``tools/train.py`` with ``configs/train/mesh/sdf.yaml``) regresses
the distance, truncated at ``truncation``, with an L1 loss, on world objects'
surface clouds jittered by Gaussian noise (the 3D analogue of conditioning
augmentation: generated clouds are noisier than surface samples).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from cdm3d.core import STAGES, Conditioning, StrictConfig, TrainableStage, TrainableStageConfig
from cdm3d.core.guidance import drop_embeddings
from cdm3d.core.stage import split_part
from cdm3d.errors import InputError, SamplingError
from cdm3d.models.sdf_net import PointESDFNet, PointSDFNet, SDFNetConfig
from cdm3d.stages.points.frame import Frame, from_network, to_network
from cdm3d.types.meshes import Meshes


class SDFSamplingConfig(StrictConfig):
    """Meshing settings (each can be overridden per call)."""

    grid: int = Field(64, ge=8, le=512)  # grid points a side
    refine: bool = True  # coarse-to-fine decoding (see the module docstring)
    chunk: int = Field(16384, ge=256)  # queries per network call, summed over the batch
    autocast: bool = True  # bf16 on CUDA
    # Drop connected pieces with fewer than this fraction of the mesh's faces (the largest is always kept).
    min_component: float = Field(0.02, ge=0.0, lt=1.0)
    # Taubin smoothing iterations on the extracted mesh (moves vertices only: the mesh stays watertight).
    smooth: int = Field(5, ge=0, le=200)
    # "closed": the grid padded with "outside", so every surface closes (watertight meshes). "pointe": Point-E's
    # conventions for its converted SDF model: no padding nor clamping, a grid of ``bound * 2`` a side sampled as
    # Point-E samples it, a volume without a sign change mean-centred, faces wound as Point-E winds them.
    marching: Literal["closed", "pointe"] = "closed"


class SDFMeshConfig(TrainableStageConfig):
    type: Literal["mesh.sdf"] = "mesh.sdf"
    cond_keys: list[str] = ["text", "image"]
    # Points the encoder sees; a larger input cloud is subsampled at random (seeded by the run's generator).
    input_points: int = Field(512, ge=16)
    bound: float = Field(1.0, gt=0)  # the grid spans [-bound, bound]^3
    truncation: float = Field(0.1, gt=0)  # distances are learned and predicted clamped to +-truncation
    input_noise: float = Field(0.01, ge=0)  # training: xyz jitter, per example uniform in [0, input_noise]
    cond_drop_prob: float = Field(0.1, ge=0, le=1)  # training: CLIP tokens replaced by null ones
    network: SDFNetConfig = SDFNetConfig()
    sampling: SDFSamplingConfig = SDFSamplingConfig()
    # The network's coordinate frame: "pointe" (Point-E's converted SDF) reads z-up coordinates at half cdm3d's
    # scale (Point-E's raw units); the stage maps at its boundary, so meshes come out in cdm3d's frame.
    frame: Frame = "cdm3d"

    @model_validator(mode="after")
    def _check_pointe(self) -> SDFMeshConfig:
        if self.sampling.marching == "pointe" and self.network.arch != "pointe":
            raise ValueError("sampling.marching 'pointe' is for Point-E's SDF model (network.arch 'pointe')")
        return self


@STAGES.register("mesh.sdf")
class SDFMeshStage(TrainableStage):
    Config = SDFMeshConfig
    config: SDFMeshConfig
    consumes: ClassVar[str] = "PointClouds"
    produces: ClassVar[str] = "Meshes"

    def __init__(self, config: SDFMeshConfig) -> None:
        super().__init__(config)
        if config.network.arch == "pointe":
            self.net = PointESDFNet(config.network)
        else:
            self.net = PointSDFNet(config.network, config.embed_dim, len(config.cond_keys))
        # Network units per cdm3d unit: Point-E's raw coordinates are half cdm3d's.
        self.scale = 0.5 if config.frame == "pointe" else 1.0

    def to_net(self, xyz: torch.Tensor) -> torch.Tensor:
        """cdm3d coordinates ``[..., 3 + C]`` in the network's frame and units (other channels as they are)."""
        x = to_network(xyz, self.config.frame)
        return torch.cat([x[..., :3] * self.scale, x[..., 3:]], -1)

    def from_net(self, xyz: torch.Tensor) -> torch.Tensor:
        return from_network(xyz / self.scale, self.config.frame)

    def resolve_sampling(self, sampling: SDFSamplingConfig | dict[str, Any] | None) -> SDFSamplingConfig:
        return self._settings(sampling, self.config.sampling)

    # -- sampling -----------------------------------------------------------------------------
    def _input_points(self, prev: Any, generator: torch.Generator | None) -> torch.Tensor:
        """``[B, N, 6]`` (xyz, rgb in [-1, 1]) on the device, at most ``input_points`` per cloud."""
        x = prev.to_tensor().float()
        if not torch.isfinite(x).all():
            raise InputError(f"stage '{self.name}': the point cloud holds NaN or Inf values")
        n = self.config.input_points
        if x.shape[1] > n:
            keep = torch.rand(x.shape[0], x.shape[1], generator=generator).argsort(1)[:, :n]
            x = torch.gather(x, 1, keep[..., None].expand(-1, -1, x.shape[-1]))
        return self.to_net(x).to(self.device)

    @torch.no_grad()
    def sdf_grid(
        self,
        prev: Any,
        cond: Conditioning,
        *,
        generator: torch.Generator | None = None,
        sampling: SDFSamplingConfig | dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Predicted signed distances ``[B, G, G, G]`` (CPU, float32) on the grid; axes are the network's x, y, z."""
        self.check_prev(prev)
        s = self.resolve_sampling(sampling)
        emb, _ = self._embeddings(cond)
        if emb.shape[0] != len(prev):
            raise InputError(f"stage '{self.name}': {len(prev)} clouds but a conditioning batch of {emb.shape[0]}")
        points = self._input_points(prev, generator)
        use_bf16 = s.autocast and self.device.type == "cuda"
        was_training = self.training
        self.eval()
        try:
            with torch.autocast("cuda", torch.bfloat16, enabled=use_bf16):
                enc = self.net.encode(points, emb)
                return self._grid_values(enc, len(prev), s).float().cpu()
        finally:
            self.train(was_training)

    def _decode(self, enc: dict[str, torch.Tensor], queries: torch.Tensor, s: SDFSamplingConfig) -> torch.Tensor:
        """Distances ``[B, Q]`` at ``queries [B, Q, 3]``, ``s.chunk`` queries (over the batch) per call."""
        per_call = max(1, s.chunk // queries.shape[0])
        out = [self.net.decode(enc, queries[:, i : i + per_call]) for i in range(0, queries.shape[1], per_call)]
        out = torch.cat(out, 1).float()
        if s.marching == "pointe":
            return out
        tau = self.config.truncation
        return out.clamp(-tau, tau)

    def _axis(self, n: int, s: SDFSamplingConfig) -> torch.Tensor:
        """The grid's coordinates along an axis, in the network's units (Point-E's: ``i * voxel + min``)."""
        bound = self.config.bound * self.scale
        if s.marching == "pointe":
            voxel = 2 * bound / (n - 1)
            return torch.arange(n, device=self.device).float() * voxel - bound
        return torch.linspace(-bound, bound, n, device=self.device)

    def _grid_values(self, enc: dict[str, torch.Tensor], batch: int, s: SDFSamplingConfig) -> torch.Tensor:
        g = s.grid
        if not s.refine or g < 16 or s.marching == "pointe":
            return self._decode(enc, _grid_points(self._axis(g, s), batch), s).view(batch, g, g, g)
        coarse_n = g // 2 + 1
        coarse = self._decode(enc, _grid_points(self._axis(coarse_n, s), batch), s).view(batch, 1, *[coarse_n] * 3)
        fine = F.interpolate(coarse, size=(g, g, g), mode="trilinear", align_corners=True)[:, 0]
        # Within the truncation band the coarse value is a real distance; dilate by a coarse cell for thin parts.
        near = (coarse.abs() < 0.9 * self.config.truncation).float()
        near = F.max_pool3d(near, 3, stride=1, padding=1)
        near = F.interpolate(near, size=(g, g, g), mode="trilinear", align_corners=True)[:, 0] > 0
        axis = self._axis(g, s)
        for b in range(batch):
            idx = near[b].nonzero()
            if len(idx):
                queries = torch.stack([axis[idx[:, 0]], axis[idx[:, 1]], axis[idx[:, 2]]], -1)[None]
                fine[b][near[b]] = self._decode({key: t[b : b + 1] for key, t in enc.items()}, queries, s)[0]
        return fine

    @torch.no_grad()
    def sample(
        self,
        prev: Any,
        cond: Conditioning,
        *,
        generator: torch.Generator | None = None,
        sampling: SDFSamplingConfig | dict[str, Any] | None = None,
        callback: Any = None,
    ) -> Meshes:
        s = self.resolve_sampling(sampling)
        grids = self.sdf_grid(prev, cond, generator=generator, sampling=s)
        if not torch.isfinite(grids).all():
            raise SamplingError(f"stage '{self.name}': the predicted distance field holds NaN or Inf values")
        vs, fs, cs = [], [], []
        for i in range(len(prev)):
            v, f = self.marching_cubes(grids[i].numpy(), s.min_component, s.smooth, s.marching)
            if len(f) == 0:
                raise SamplingError(
                    f"stage '{self.name}': item {i} has no surface (the predicted distance never changes sign); "
                    "the point cloud may be far from any shape this stage was trained on"
                )
            vs.append(torch.from_numpy(v))
            fs.append(torch.from_numpy(f))
            cs.append(torch.from_numpy(_nearest_colors(v, prev.coords[i].cpu().numpy(), prev.colors[i].cpu().numpy())))
        if callback is not None:
            callback(1, 1)
        return Meshes(vs, fs, cs)

    def marching_cubes(
        self, values: np.ndarray, min_component: float = 0.0, smooth: int = 0, marching: str = "closed"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vertices ``[V, 3]`` (float32, cdm3d's frame and units) and faces ``[F, 3]`` of the zero level set of a
        ``[G, G, G]`` grid of signed distances over ``[-bound, bound]^3`` (the network's frame); empty arrays if
        there is none."""
        bound = self.config.bound * self.scale
        if marching == "pointe":
            if self.config.network.arch != "pointe":
                raise InputError(f"stage '{self.name}': marching 'pointe' is for Point-E's SDF model only")
            verts, faces = _pointe_marching_cubes(values, bound)
        else:
            # Point-E's field is positive inside, cdm3d's negative: the closed grid is padded with "outside".
            inside_positive = self.config.network.arch == "pointe"
            values = np.clip(-values, -1e6, 1e6) if inside_positive else values
            verts, faces = _closed_marching_cubes(values, bound, self.config.truncation)
        if len(faces) == 0:
            return verts, faces
        if self.config.frame != "cdm3d":
            verts = self.from_net(torch.from_numpy(np.ascontiguousarray(verts, np.float32))).numpy()
        if min_component > 0:
            verts, faces = _drop_small_components(verts, faces, min_component)
        if smooth > 0:
            import trimesh

            mesh = trimesh.Trimesh(verts, faces, process=False)
            trimesh.smoothing.filter_taubin(mesh, iterations=smooth)
            verts = np.asarray(mesh.vertices)
        return verts.astype(np.float32), faces

    # -- training -----------------------------------------------------------------------------
    def loss(
        self,
        x0: torch.Tensor,
        cond: Conditioning,
        cond_input: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        part: tuple[int, int] | None = None,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """L1 loss of truncated distances.

        Args:
            x0: ``[B, Q, 4]`` query points and their signed distances.
            cond_input: ``[B, N, 6]`` clean surface points (xyz, rgb in [-1, 1]); jittered here.
        """
        if cond_input is None:
            raise InputError(f"stage '{self.name}' is trained on (points, queries) pairs: cond_input is missing")
        cfg = self.config
        emb, null_emb = self._embeddings(cond)
        emb = drop_embeddings(emb, null_emb, cfg.cond_drop_prob, generator)
        batch, device = x0.shape[0], x0.device
        sigma = torch.rand(batch, 1, 1, generator=generator) * cfg.input_noise
        jitter = torch.randn(cond_input[..., :3].shape, generator=generator) * sigma
        points = torch.cat([cond_input[..., :3] + jitter.to(device), cond_input[..., 3:]], -1)
        if part is not None:
            sl = split_part(batch, part)
            x0, points, emb = x0[sl], points[sl], emb[sl]
        if cfg.network.arch == "pointe":
            raise InputError(f"stage '{self.name}': training Point-E's SDF model is not supported")
        pred = (net or self.net)(points, emb, x0[..., :3])
        tau = cfg.truncation
        return F.l1_loss(pred.float(), x0[..., 3].float().clamp(-tau, tau))


def _closed_marching_cubes(values: np.ndarray, bound: float, truncation: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes on the grid padded with "outside" (``truncation``), so surfaces touching the border close."""
    from skimage.measure import marching_cubes

    padded = np.pad(values.astype(np.float32), 1, constant_values=truncation)
    if not (padded.min() < 0 < padded.max()):
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    step = 2 * bound / (values.shape[0] - 1)
    verts, faces, _, _ = marching_cubes(padded, level=0.0, spacing=(step, step, step))
    return verts - step - bound, faces.astype(np.int64)


def _pointe_marching_cubes(values: np.ndarray, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes as Point-E's ``marching_cubes_mesh`` runs it: no padding, a volume without a sign change
    mean-centred, the faces' first two corners swapped (its right-hand winding)."""
    from skimage.measure import marching_cubes

    volume = values.astype(np.float32)
    if np.all(volume < 0) or np.all(volume > 0):
        volume = volume - np.mean(volume)
    step = 2 * bound / (values.shape[0] - 1)
    try:
        verts, faces, _, _ = marching_cubes(volume, level=0, allow_degenerate=False, spacing=(step,) * 3)
    except (ValueError, RuntimeError):  # a flat volume (no surface at all)
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.int64)
    faces = faces[:, [1, 0, 2]].astype(np.int64)
    return verts - bound, faces


def _grid_points(axis: torch.Tensor, batch: int) -> torch.Tensor:
    """``[B, n^3, 3]`` grid points, x slowest, z fastest (matching ``view(B, n, n, n)``)."""
    xyz = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(1, -1, 3)
    return xyz.expand(batch, -1, -1)


def _nearest_colors(vertices: np.ndarray, xyz: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(xyz).query(vertices)
    return rgb[nearest].astype(np.float32)


def _drop_small_components(verts: np.ndarray, faces: np.ndarray, min_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep connected pieces with at least ``min_fraction`` of the faces (and always the largest)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(verts)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]]])
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    if count == 1:
        return verts, faces
    face_label = labels[faces[:, 0]]
    sizes = np.bincount(face_label, minlength=count)
    keep_label = (sizes >= min_fraction * len(faces)) | (sizes == sizes.max())
    faces = faces[keep_label[face_label]]
    used = np.unique(faces)
    remap = np.full(n, -1, np.int64)
    remap[used] = np.arange(len(used))
    return verts[used], remap[faces]
