"""Loading user meshes (.obj, .ply, .glb, .gltf, .off, .stl) with clear errors, and sampling them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import trimesh

from cdm3d.errors import InputError

MESH_SUFFIXES = (".obj", ".ply", ".glb", ".gltf", ".off", ".stl")
MAX_FACES = 5_000_000
DEFAULT_GRAY = np.array([0.6, 0.6, 0.6], np.float32)


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """One triangle mesh from a file, or an :class:`InputError` saying what is wrong with it."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"mesh file not found: {path}")
    if path.suffix.lower() not in MESH_SUFFIXES:
        raise InputError(f"{path.name}: unsupported mesh format {path.suffix!r}; use one of {', '.join(MESH_SUFFIXES)}")
    if path.stat().st_size == 0:
        raise InputError(f"{path.name}: file is empty; re-export the mesh")
    try:
        loaded = trimesh.load(path, force="mesh", process=False)
    except Exception as err:  # trimesh raises many kinds for corrupt files
        raise InputError(
            f"{path.name}: cannot be read as a mesh ({type(err).__name__}: {err}); is it corrupt or truncated?"
        ) from None
    if not isinstance(loaded, trimesh.Trimesh):
        raise InputError(
            f"{path.name}: holds no triangle mesh (got {type(loaded).__name__}); export the surface as triangles"
        )
    return check_mesh(loaded, path.name)


def check_mesh(mesh: trimesh.Trimesh, name: str = "mesh") -> trimesh.Trimesh:
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise InputError(f"{name}: mesh is empty (no faces); export the surface as triangles")
    if len(mesh.faces) > MAX_FACES:
        raise InputError(f"{name}: {len(mesh.faces)} faces is more than the {MAX_FACES} accepted; decimate it first")
    if not np.isfinite(mesh.vertices).all():
        raise InputError(f"{name}: vertices hold NaN or Inf values; repair or re-export the mesh")
    if mesh.faces.max() >= len(mesh.vertices) or mesh.faces.min() < 0:
        raise InputError(f"{name}: faces index vertices that do not exist; repair or re-export the mesh")
    if not mesh.area > 0:
        raise InputError(f"{name}: mesh is degenerate (zero surface area); it has no surface to sample")
    return mesh


def vertex_colors(mesh: trimesh.Trimesh) -> np.ndarray:
    """``[V, 3]`` float colours in [0, 1]: vertex colours, textures sampled, else gray."""
    visual = mesh.visual
    try:
        if visual.kind == "texture":
            visual = visual.to_color()
        if visual.kind in ("vertex", "face"):
            colors = np.asarray(visual.vertex_colors, np.float32)[:, :3] / 255.0
            if len(colors) == len(mesh.vertices):
                return colors
    except Exception:  # a broken material is no reason to drop the shape
        pass
    return np.broadcast_to(DEFAULT_GRAY, (len(mesh.vertices), 3)).copy()


def normalise(mesh: trimesh.Trimesh, extent: float = 1.8) -> trimesh.Trimesh:
    """Centre the bounding box at the origin and scale the largest side to ``extent``."""
    mesh = mesh.copy()
    lo, hi = mesh.bounds
    mesh.apply_translation(-(lo + hi) / 2)
    mesh.apply_scale(extent / max(float((hi - lo).max()), 1e-12))
    return mesh


def sample_colored_points(mesh: trimesh.Trimesh, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-uniform surface points ``[n, 3]`` and their interpolated colours ``[n, 3]``."""
    points, rgb = sample_colored_surface(
        np.asarray(mesh.vertices), np.asarray(mesh.faces), vertex_colors(mesh), n, seed
    )
    return points.astype(np.float32), rgb.astype(np.float32)


def sample_colored_surface(
    vertices: np.ndarray, faces: np.ndarray, colors: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``n`` area-uniform surface points ``[n, 3]`` of a mesh given as arrays and their colours ``[n, 3]``
    interpolated from the per-vertex ``colors`` (in the arrays' own precision)."""
    points, face, bary = sample_surface(vertices, faces, n, seed)
    return points, (colors[faces[face]] * bary[:, :, None]).sum(1)


def sample_surface(
    vertices: np.ndarray, faces: np.ndarray, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` area-uniform surface points ``[n, 3]``, their faces ``[n]`` and barycentrics ``[n, 3]``."""
    rng = np.random.default_rng(seed)
    tri = vertices[faces]
    area = 0.5 * np.linalg.norm(np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]), axis=1)
    face = rng.choice(len(area), size=n, p=area / area.sum())
    u, v = rng.random((2, n))
    flip = u + v > 1
    u[flip], v[flip] = 1 - u[flip], 1 - v[flip]
    bary = np.stack([1 - u - v, u, v], 1)
    points = (tri[face] * bary[:, :, None]).sum(1)
    return points, face, bary
