"""The procedural world: captioned, coloured, watertight 3D objects, deterministic by seed.

    from cdm3d.data.world import World
    obj = World("train")[0]
    obj.caption, obj.labels          # "a tall red lamp", Labels(category="lamp", ...)
    obj.mesh                         # trimesh.Trimesh with vertex colours, watertight
    xyz, rgb = obj.points(4096)      # coloured surface samples
    q, sdf = obj.sdf_samples(8192)   # signed distances near and away from the surface
    obj.render(size=64)              # a shaded view

Splits draw from disjoint seeds: sample ``i`` of a split has seed ``3 i + k``
with ``k`` = 0 (train), 1 (val), 2 (test).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch
import trimesh

from cdm3d.data import shapes
from cdm3d.data.meshes import sample_surface
from cdm3d.data.vocab import ATTRIBUTES, CATEGORIES, COLORS, COMPOSITES, caption
from cdm3d.errors import InputError
from cdm3d.render import Camera, render_mesh

SPLITS = {"train": 0, "val": 1, "test": 2}
TWO_TONE_PROB = 0.4
ATTRIBUTE_PROB = 0.35
COLOR_JITTER = 0.03
# The object's largest extent (height, or twice the radius about the up axis) is this times the size factor.
EXTENT = 1.8


def sample_seed(split: str, index: int) -> int:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; choose one of {sorted(SPLITS)}")
    if index < 0:
        raise InputError(f"sample index must be >= 0, got {index}")
    return 3 * index + SPLITS[split]


def split_of_seed(seed: int) -> str:
    return {v: k for k, v in SPLITS.items()}[seed % 3]


@dataclass(frozen=True)
class Labels:
    """Structured labels of a world object."""

    category: str
    colors: tuple[str, ...]  # (primary,) or (primary, secondary)
    attributes: dict[str, str] = field(hash=False)  # height/width/size -> value ("normal" if unsaid)


def random_labels(rng: random.Random) -> Labels:
    category = rng.choice(sorted(CATEGORIES))
    primary = rng.choice(sorted(COLORS))
    colors: tuple[str, ...] = (primary,)
    if category in COMPOSITES and rng.random() < TWO_TONE_PROB:
        colors = (primary, rng.choice([c for c in sorted(COLORS) if c != primary]))
    attributes = {}
    for name, values in ATTRIBUTES.items():
        options = [v for v in values if v != "normal"]
        attributes[name] = rng.choice(options) if rng.random() < ATTRIBUTE_PROB else "normal"
    return Labels(category, colors, attributes)


@dataclass
class WorldObject:
    """One object of the world.

    Attributes:
        vertices: ``[V, 3]`` float32, y up, centred, inside [-0.9, 0.9]^3.
        faces: ``[F, 3]`` int64.
        face_colors: ``[F, 3]`` float32 in [0, 1].
    """

    seed: int
    labels: Labels
    caption: str
    vertices: np.ndarray
    faces: np.ndarray
    face_colors: np.ndarray

    @cached_property
    def mesh(self) -> trimesh.Trimesh:
        """A watertight trimesh with vertex colours (each vertex takes an adjacent face's colour)."""
        mesh = trimesh.Trimesh(self.vertices, self.faces, process=False)
        vertex_colors = np.zeros((len(self.vertices), 3), np.float32)
        vertex_colors[self.faces.reshape(-1)] = np.repeat(self.face_colors, 3, axis=0)
        rgba = np.concatenate([vertex_colors, np.ones((len(vertex_colors), 1), np.float32)], 1)
        mesh.visual.vertex_colors = (rgba * 255).round().astype(np.uint8)
        return mesh

    def points(self, n: int, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points on the surface, area-uniform: xyz ``[n, 3]`` and rgb ``[n, 3]`` (float32)."""
        xyz, face, _ = sample_surface(self.vertices, self.faces, n, self.seed if seed is None else seed)
        return xyz.astype(np.float32), self.face_colors[face].astype(np.float32)

    def sdf(self, queries: np.ndarray) -> np.ndarray:
        """Signed distance to the surface at ``queries [M, 3]`` (negative inside)."""
        return signed_distance(self.vertices, self.faces, queries)

    def sdf_samples(
        self, n: int, near_fraction: float = 0.8, sigma: float = 0.02, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Queries ``[n, 3]`` and their signed distances ``[n]``: most jittered off the surface
        by N(0, sigma), the rest uniform in [-1, 1]^3."""
        rng = np.random.default_rng((self.seed if seed is None else seed) + 7919)
        n_near = int(n * near_fraction)
        near, _ = self.points(n_near, seed=int(rng.integers(2**31)))
        near = near + rng.normal(scale=sigma, size=near.shape)
        far = rng.uniform(-1, 1, size=(n - n_near, 3))
        queries = np.concatenate([near, far]).astype(np.float32)
        return queries, self.sdf(queries).astype(np.float32)

    def render(self, camera: Camera | None = None, size: int = 64, ssaa: int = 2) -> torch.Tensor:
        """A shaded view ``[size, size, 3]`` in [0, 1] on white."""
        return render_mesh(
            torch.from_numpy(self.vertices),
            torch.from_numpy(self.faces),
            torch.from_numpy(self.face_colors),
            camera or Camera(),
            size=size,
            ssaa=ssaa,
        )


def signed_distance(vertices: np.ndarray, faces: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of ``queries`` to a watertight mesh, with open3d."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(
        o3d.core.Tensor(np.asarray(vertices, np.float32)), o3d.core.Tensor(np.asarray(faces, np.uint32))
    )
    return scene.compute_signed_distance(o3d.core.Tensor(np.asarray(queries, np.float32))).numpy()


def _normalise(meshes: list[trimesh.Trimesh], labels: Labels, yaw: float) -> None:
    """Apply the attributes' proportions, centre, scale to the size, rotate about y (in place)."""
    width = ATTRIBUTES["width"][labels.attributes["width"]][0]
    height = ATTRIBUTES["height"][labels.attributes["height"]][0]
    size = ATTRIBUTES["size"][labels.attributes["size"]][0]
    stretch = np.diag([width, height, width, 1.0])
    for m in meshes:
        m.apply_transform(stretch)
    v = np.concatenate([m.vertices for m in meshes])
    lo, hi = v.min(0), v.max(0)
    centre = np.array([0.0, (lo[1] + hi[1]) / 2, 0.0])
    radius = np.linalg.norm(v[:, [0, 2]], axis=1).max()
    scale = EXTENT * size / max(hi[1] - lo[1], 2 * radius)
    rot = trimesh.transformations.rotation_matrix(yaw, [0, 1, 0])
    for m in meshes:
        m.apply_translation(-centre)
        m.apply_scale(scale)
        m.apply_transform(rot)


def caption_of(seed: int, labels: Labels, variant: int = 0) -> str:
    """Caption ``variant`` of the object with ``seed`` (variant 0 is the object's own caption)."""
    return caption(labels.category, labels.colors, labels.attributes, random.Random(f"caption-{seed}-{variant}"))


def make_object(seed: int) -> WorldObject:
    """The world object with this seed (the same seed always gives the same object)."""
    rng = random.Random(seed)
    labels = random_labels(rng)
    builder = shapes.BUILDERS[labels.category]
    two_tone = len(labels.colors) > 1
    parts = builder(rng, hat=True) if labels.category == "snowman" and two_tone else builder(rng)
    meshes = [m for m, _ in parts]
    _normalise(meshes, labels, yaw=rng.uniform(0, 2 * math.pi))
    roles = [0 if role == "primary" or not two_tone else 1 for _, role in parts]
    vertices, faces, face_role = shapes.union_parts(list(zip(meshes, roles)))
    palette = np.array([COLORS[c][0] for c in labels.colors], np.float32)
    jitter = np.array([rng.uniform(-COLOR_JITTER, COLOR_JITTER) for _ in range(palette.size)], np.float32)
    palette = np.clip(palette + jitter.reshape(palette.shape), 0, 1)
    face_colors = palette[face_role]
    text = caption_of(seed, labels)
    return WorldObject(seed, labels, text, vertices.astype(np.float32), faces, face_colors)


class World:
    """Indexable split of the world: ``World("test")[i]`` is deterministic."""

    def __init__(self, split: str = "train") -> None:
        sample_seed(split, 0)  # validates the split name
        self.split = split

    def seed(self, index: int) -> int:
        return sample_seed(self.split, index)

    def __getitem__(self, index: int) -> WorldObject:
        return make_object(self.seed(index))

    def labels(self, index: int) -> Labels:
        """The labels alone (cheap: no geometry is built)."""
        return random_labels(random.Random(self.seed(index)))

    def caption(self, index: int, variant: int = 0) -> str:
        """A caption of sample ``index`` (cheap); ``variant`` > 0 draws other templates and synonyms."""
        return caption_of(self.seed(index), self.labels(index), variant)
