"""``Meshes``: a batch of vertex-coloured triangle meshes (sizes differ, so a list per field)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdm3d.core.checkpoint import atomic_path
from cdm3d.errors import InputError
from cdm3d.types.points import check_writable, save_batch

MESH_FORMATS = (".glb", ".obj", ".ply")


@dataclass
class Meshes:
    """A batch of meshes.

    Attributes:
        vertices: per mesh ``[V_i, 3]`` float32.
        faces: per mesh ``[F_i, 3]`` int64.
        colors: per mesh ``[V_i, 3]`` float32 vertex colours in [0, 1].
    """

    vertices: list[torch.Tensor]
    faces: list[torch.Tensor]
    colors: list[torch.Tensor]

    def __post_init__(self) -> None:
        if not (len(self.vertices) == len(self.faces) == len(self.colors)):
            raise InputError("Meshes needs as many face and colour arrays as vertex arrays")
        for i, (v, f, c) in enumerate(zip(self.vertices, self.faces, self.colors)):
            if v.ndim != 2 or v.shape[-1] != 3 or f.ndim != 2 or f.shape[-1] != 3 or c.shape != v.shape:
                raise InputError(f"mesh {i}: expected vertices [V, 3], faces [F, 3], colours [V, 3]")

    def __len__(self) -> int:
        return len(self.vertices)

    def __getitem__(self, index: int | slice | torch.Tensor | list[int]) -> Meshes:
        """The meshes at ``index`` (an int, a slice, or a list / 1-D tensor of rows, repeats allowed)."""
        if isinstance(index, int):
            rows = [index]
        elif isinstance(index, slice):
            rows = list(range(len(self)))[index]
        else:
            rows = [int(i) for i in (index.tolist() if isinstance(index, torch.Tensor) else index)]
        for i in rows:
            if not -len(self) <= i < len(self):
                raise IndexError(f"mesh {i} of a batch of {len(self)}")
        return Meshes([self.vertices[i] for i in rows], [self.faces[i] for i in rows], [self.colors[i] for i in rows])

    def to_trimesh(self, index: int = 0) -> Any:
        import trimesh

        rgb = self.colors[index].detach().cpu().numpy().clip(0, 1)
        rgba = np.concatenate([rgb, np.ones_like(rgb[:, :1])], 1)
        return trimesh.Trimesh(
            self.vertices[index].detach().cpu().numpy(),
            self.faces[index].detach().cpu().numpy(),
            vertex_colors=(rgba * 255).round().astype(np.uint8),
            process=False,
        )

    def save(self, path: str | Path, index: int = 0, force: bool = False) -> Path:
        """Write mesh ``index`` as ``.glb``, ``.obj`` or ``.ply``, with its vertex colours."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in MESH_FORMATS:
            raise InputError(f"unknown mesh format {suffix!r}; use one of {', '.join(MESH_FORMATS)}")
        check_writable(path, force)
        if not -len(self) <= index < len(self):
            raise InputError(f"index {index} is out of range for a batch of {len(self)}")
        if not bool(torch.isfinite(self.vertices[index]).all()):
            raise InputError(f"item {index} holds NaN or Inf coordinates; refusing to write {path.name}")
        data = self.to_trimesh(index).export(file_type=suffix[1:])
        with atomic_path(path) as tmp:
            tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
        return path

    export = save  # the name trimesh users expect: ``out.mesh.export("lamp.glb")``

    def preview(self, index: int = 0, size: int = 256, camera: Any = None) -> torch.Tensor:
        from cdm3d.render import Camera, render_mesh

        return render_mesh(self.vertices[index], self.faces[index], self.colors[index], camera or Camera(), size=size)

    def save_all(
        self, directory: str | Path, stem: str, force: bool = False, formats: tuple[str, ...] = (".glb", ".ply")
    ) -> list[Path]:
        """Every mesh of the batch as ``{stem}_{i}{format}`` in ``directory``."""
        return save_batch(self, directory, stem, force, formats)
