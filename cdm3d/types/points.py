"""``PointClouds``: a batch of coloured point clouds."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdm3d.core.checkpoint import atomic_path, check_parent
from cdm3d.errors import InputError

POINT_FORMATS = (".ply", ".npz")


def check_writable(path: Path, force: bool) -> None:
    """Refuse to write into a missing folder, or over an existing file without ``force``."""
    check_parent(path)
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder; give a file name")
    if path.exists() and not force:
        raise InputError(f"{path} exists; pass force=True (--force) to overwrite it")


@dataclass
class PointClouds:
    """A batch of point clouds.

    Attributes:
        coords: ``[B, N, 3]`` float32 positions, y up, roughly inside [-1, 1]^3.
        colors: ``[B, N, 3]`` float32 RGB in [0, 1].
    """

    coords: torch.Tensor
    colors: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.coords, torch.Tensor) or not isinstance(self.colors, torch.Tensor):
            raise InputError("PointClouds needs tensors for coords and colors")
        if self.coords.ndim != 3 or self.coords.shape[-1] != 3:
            raise InputError(f"point coords must be [B, N, 3], got {tuple(self.coords.shape)}")
        if self.colors.shape != self.coords.shape:
            raise InputError(f"point colors {tuple(self.colors.shape)} do not match coords {tuple(self.coords.shape)}")
        if self.coords.shape[1] == 0:
            raise InputError("point clouds must hold at least one point")

    def __len__(self) -> int:
        return self.coords.shape[0]

    @property
    def num_points(self) -> int:
        return self.coords.shape[1]

    def __getitem__(self, index: int | slice) -> PointClouds:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return PointClouds(self.coords[index], self.colors[index])

    def to(self, device: torch.device | str) -> PointClouds:
        return PointClouds(self.coords.to(device), self.colors.to(device))

    def to_tensor(self) -> torch.Tensor:
        """``[B, N, 6]``: xyz and RGB mapped to [-1, 1] (the diffusion representation)."""
        return torch.cat([self.coords, self.colors * 2 - 1], dim=-1)

    @classmethod
    def from_tensor(cls, x: torch.Tensor) -> PointClouds:
        """Inverse of :meth:`to_tensor`; colours are clamped to [0, 1]."""
        x = x.float()
        return cls(x[..., :3].contiguous(), ((x[..., 3:6] + 1) / 2).clamp(0, 1).contiguous())

    @classmethod
    def concat(cls, clouds: list[PointClouds]) -> PointClouds:
        """Join clouds point-wise (same batch size)."""
        return cls(torch.cat([c.coords for c in clouds], 1), torch.cat([c.colors for c in clouds], 1))

    # -- files ------------------------------------------------------------------------------
    def save(self, path: str | Path, index: int = 0, force: bool = False) -> Path:
        """Write cloud ``index`` to ``.ply`` (with colours) or ``.npz`` (coords, colors)."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in POINT_FORMATS:
            raise InputError(f"unknown point-cloud format {suffix!r}; use one of {', '.join(POINT_FORMATS)}")
        check_writable(path, force)
        if not -len(self) <= index < len(self):
            raise InputError(f"index {index} is out of range for a batch of {len(self)}")
        if not bool(torch.isfinite(self.coords[index]).all()):
            raise InputError(f"item {index} holds NaN or Inf coordinates; refusing to write {path.name}")
        xyz = self.coords[index].detach().cpu().numpy().astype(np.float32)
        rgb = self.colors[index].detach().cpu().numpy().astype(np.float32)
        with atomic_path(path) as tmp:
            if suffix == ".npz":
                with open(tmp, "wb") as f:
                    np.savez(f, coords=xyz, colors=rgb)
            else:
                import trimesh

                rgba = np.concatenate([rgb, np.ones_like(rgb[:, :1])], 1)
                cloud = trimesh.PointCloud(xyz, colors=(rgba * 255).round().astype(np.uint8))
                tmp.write_bytes(cloud.export(file_type="ply"))
        return path

    export = save  # the name trimesh users expect: ``out.mesh.export("lamp.glb")``

    @classmethod
    def load(cls, path: str | Path) -> PointClouds:
        """One cloud from ``.ply`` or ``.npz`` (batch of 1)."""
        path = Path(path)
        if not path.is_file():
            raise InputError(f"point-cloud file not found: {path}")
        suffix = path.suffix.lower()
        try:
            if suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    xyz, rgb = data["coords"], data["colors"]
            elif suffix == ".ply":
                import trimesh

                cloud = trimesh.load(path, file_type="ply")
                xyz = np.asarray(cloud.vertices)
                colors = getattr(cloud, "colors", None)
                if colors is None or len(colors) != len(xyz):
                    colors = getattr(getattr(cloud, "visual", None), "vertex_colors", None)
                rgb = np.asarray(colors, np.float32)[:, :3] / 255 if colors is not None else np.full_like(xyz, 0.6)
            else:
                raise InputError(f"unknown point-cloud format {suffix!r}; use one of {', '.join(POINT_FORMATS)}")
        except InputError:
            raise
        except Exception as err:
            raise InputError(
                f"{path} cannot be read as a point cloud ({type(err).__name__}: {err}); is it corrupt or truncated?"
            ) from None
        xyz, rgb = np.asarray(xyz, np.float32), np.asarray(rgb, np.float32)
        if xyz.ndim != 2 or xyz.shape[1] != 3 or not np.isfinite(xyz).all():
            raise InputError(
                f"{path}: point coordinates must be finite [N, 3]; the file holds NaN/Inf or another shape"
            )
        return cls(torch.from_numpy(xyz)[None], torch.from_numpy(rgb)[None])

    def preview(self, index: int = 0, size: int = 256, camera: Any = None) -> torch.Tensor:
        """A rendered view ``[size, size, 3]`` of cloud ``index``."""
        from cdm3d.render import Camera, render_points

        radius = max(1.0, size / 256 * 1.5)
        return render_points(self.coords[index], self.colors[index], camera or Camera(), size=size, radius=radius)

    def save_all(
        self, directory: str | Path, stem: str, force: bool = False, formats: tuple[str, ...] = (".ply", ".npz")
    ) -> list[Path]:
        """Every cloud of the batch as ``{stem}_{i}{format}`` in ``directory``."""
        return save_batch(self, directory, stem, force, formats)


def save_batch(outputs: Any, directory: str | Path, stem: str, force: bool, formats: tuple[str, ...]) -> list[Path]:
    """Save each item of a batch output (anything with ``len`` and ``save(path, index, force)``) in each
    format as ``{stem}_{i}{format}``; every path is checked before anything is written."""
    directory = Path(directory)
    jobs = [(directory / f"{stem}_{i}{fmt}", i) for i in range(len(outputs)) for fmt in formats]
    for path, _ in jobs:
        check_writable(path, force)
    for path, i in jobs:
        outputs.save(path, i, force=force)
    return [path for path, _ in jobs]
