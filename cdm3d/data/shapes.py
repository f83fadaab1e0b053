"""Part builders of the procedural world, in a y-up frame, objects resting on y = 0.

Each builder returns ``[(mesh, role)]`` with role "primary" or "secondary";
the parts are unioned into one watertight mesh by :func:`union_parts`.
"""

from __future__ import annotations

import math
import random

import numpy as np
import trimesh

Part = tuple[trimesh.Trimesh, str]

_Z_TO_Y = trimesh.transformations.rotation_matrix(-math.pi / 2, [1, 0, 0])


def _y_up(mesh: trimesh.Trimesh) -> trimesh.Trimesh:
    """trimesh's primitives stand along z; ours stand along y."""
    return mesh.apply_transform(_Z_TO_Y)


def _at(mesh: trimesh.Trimesh, x: float = 0.0, y: float = 0.0, z: float = 0.0) -> trimesh.Trimesh:
    return mesh.apply_translation((x, y, z))


def cylinder_y(radius: float, height: float, y0: float = 0.0, sections: int = 32) -> trimesh.Trimesh:
    """A cylinder along y from ``y0`` to ``y0 + height``."""
    return _at(_y_up(trimesh.creation.cylinder(radius, height, sections=sections)), y=y0 + height / 2)


def frustum_y(r_bottom: float, r_top: float, height: float, y0: float = 0.0, sections: int = 32) -> trimesh.Trimesh:
    """A truncated cone along y from ``y0`` to ``y0 + height``."""
    mesh = trimesh.creation.cylinder(r_bottom, height, sections=sections)
    v = mesh.vertices.copy()
    top = v[:, 2] > 0
    v[top, :2] *= r_top / r_bottom
    mesh = trimesh.Trimesh(v, mesh.faces, process=True)
    return _at(_y_up(mesh), y=y0 + height / 2)


def box(w: float, h: float, d: float, x: float = 0.0, y0: float = 0.0, z: float = 0.0) -> trimesh.Trimesh:
    """A box ``w x h x d`` whose bottom is at ``y0``."""
    return _at(trimesh.creation.box((w, h, d)), x, y0 + h / 2, z)


def sphere(r: float, y: float = 0.0, x: float = 0.0) -> trimesh.Trimesh:
    return _at(trimesh.creation.icosphere(subdivisions=3, radius=r), x, y)


# -- primitives ------------------------------------------------------------------------------
def cube(rng: random.Random) -> list[Part]:
    s = 1.0
    return [(box(s, s * rng.uniform(0.9, 1.1), s * rng.uniform(0.9, 1.1)), "primary")]


def sphere_shape(rng: random.Random) -> list[Part]:
    return [(sphere(0.5, y=0.5), "primary")]


def cylinder(rng: random.Random) -> list[Part]:
    return [(cylinder_y(rng.uniform(0.3, 0.45), rng.uniform(0.8, 1.2)), "primary")]


def cone(rng: random.Random) -> list[Part]:
    mesh = _y_up(trimesh.creation.cone(rng.uniform(0.35, 0.5), rng.uniform(0.8, 1.2), sections=32))
    return [(mesh, "primary")]


def torus(rng: random.Random) -> list[Part]:
    major, minor = rng.uniform(0.35, 0.45), rng.uniform(0.1, 0.17)
    mesh = _y_up(trimesh.creation.torus(major, minor, major_sections=48, minor_sections=16))
    return [(_at(mesh, y=minor), "primary")]


def pyramid(rng: random.Random) -> list[Part]:
    mesh = trimesh.creation.cone(rng.uniform(0.55, 0.7), rng.uniform(0.7, 1.1), sections=4)
    mesh.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 4, [0, 0, 1]))
    return [(_y_up(mesh), "primary")]


def capsule(rng: random.Random) -> list[Part]:
    r, h = rng.uniform(0.2, 0.3), rng.uniform(0.5, 0.9)
    mesh = _y_up(trimesh.creation.capsule(height=h, radius=r, count=[24, 24]))
    return [(_at(mesh, y=h / 2 + r), "primary")]


# -- composites --------------------------------------------------------------------------------
def _legs(rng: random.Random, w: float, d: float, height: float, inset: float) -> list[trimesh.Trimesh]:
    round_legs = rng.random() < 0.5
    t = rng.uniform(0.035, 0.06)
    legs = []
    for sx in (-1, 1):
        for sz in (-1, 1):
            x, z = sx * (w / 2 - inset), sz * (d / 2 - inset)
            leg = cylinder_y(t, height, sections=16) if round_legs else box(2 * t, height, 2 * t)
            legs.append(_at(leg, x=x, z=z))
    return legs


def chair(rng: random.Random) -> list[Part]:
    w, d = rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0)
    seat_h, t = rng.uniform(0.4, 0.55), 0.08
    back_h = rng.uniform(0.4, 0.85)
    parts: list[Part] = [(box(w, t, d, y0=seat_h), "primary")]
    parts.append((box(w, back_h, t, y0=seat_h + t * 0.5, z=-d / 2 + t / 2), "primary"))
    parts += [(leg, "secondary") for leg in _legs(rng, w, d, seat_h + 0.02, 0.07)]
    return parts


def table(rng: random.Random) -> list[Part]:
    w, d = rng.uniform(1.2, 1.8), rng.uniform(0.7, 1.0)
    h, t = rng.uniform(0.6, 0.8), 0.07
    parts: list[Part] = [(box(w, t, d, y0=h), "primary")]
    if rng.random() < 0.7:
        parts += [(leg, "secondary") for leg in _legs(rng, w, d, h + 0.02, 0.1)]
    else:  # a pedestal table: one column on a foot
        parts.append((cylinder_y(rng.uniform(0.06, 0.1), h + 0.02), "secondary"))
        parts.append((cylinder_y(min(d, w) * 0.35, 0.05), "secondary"))
    return parts


def mug(rng: random.Random) -> list[Part]:
    r, h = rng.uniform(0.3, 0.4), rng.uniform(0.7, 1.0)
    handle_r = h * rng.uniform(0.22, 0.3)
    handle = trimesh.creation.torus(handle_r, rng.uniform(0.04, 0.06), major_sections=32, minor_sections=12)
    parts: list[Part] = [(cylinder_y(r, h), "primary"), (_at(handle, x=r, y=h / 2), "secondary")]
    return parts


def lamp(rng: random.Random) -> list[Part]:
    base_r, base_h = rng.uniform(0.25, 0.35), 0.06
    pole_h = rng.uniform(0.8, 1.3)
    shade_h = rng.uniform(0.3, 0.45)
    r_bottom, r_top = rng.uniform(0.3, 0.4), rng.uniform(0.12, 0.2)
    return [
        (cylinder_y(base_r, base_h), "secondary"),
        (cylinder_y(0.03, pole_h + 0.05, y0=base_h - 0.01, sections=12), "secondary"),
        (frustum_y(r_bottom, r_top, shade_h, y0=base_h + pole_h - shade_h * 0.4), "primary"),
    ]


def snowman(rng: random.Random, hat: bool = False) -> list[Part]:
    radii = [rng.uniform(0.4, 0.5)]
    for _ in range(rng.choice((1, 2))):
        radii.append(radii[-1] * rng.uniform(0.65, 0.8))
    parts: list[Part] = []
    y = 0.0
    for i, r in enumerate(radii):
        y += r if i == 0 else r + radii[i - 1] - 0.15 * r
        parts.append((sphere(r, y=y), "primary"))
    if hat or rng.random() < 0.5:
        r = radii[-1]
        top = y + r * 0.8
        parts.append((cylinder_y(r * 1.0, 0.04, y0=top), "secondary"))
        parts.append((cylinder_y(r * 0.65, r * 0.9, y0=top), "secondary"))
    return parts


def dumbbell(rng: random.Random) -> list[Part]:
    length, bar_r = rng.uniform(1.0, 1.4), rng.uniform(0.05, 0.07)
    bar = trimesh.creation.cylinder(bar_r, length, sections=16)
    bar.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [0, 1, 0]))
    spheres = rng.random() < 0.4
    r = rng.uniform(0.2, 0.3)
    parts: list[Part] = [(bar, "secondary")]
    for side in (-1, 1):
        if spheres:
            parts.append((sphere(r, x=side * length / 2), "primary"))
            continue
        count = rng.choice((1, 2, 3))
        for k in range(count):
            disk = trimesh.creation.cylinder(r * (1 - 0.12 * k), 0.08, sections=32)
            disk.apply_transform(trimesh.transformations.rotation_matrix(math.pi / 2, [0, 1, 0]))
            parts.append((_at(disk, x=side * (length / 2 - 0.05 - 0.085 * k)), "primary"))
    lift = max(r, bar_r)
    return [(_at(m, y=lift), role) for m, role in parts]


BUILDERS = {
    "cube": cube,
    "sphere": sphere_shape,
    "cylinder": cylinder,
    "cone": cone,
    "torus": torus,
    "pyramid": pyramid,
    "capsule": capsule,
    "chair": chair,
    "table": table,
    "mug": mug,
    "lamp": lamp,
    "snowman": snowman,
    "dumbbell": dumbbell,
}


def union_parts(parts: list[tuple[trimesh.Trimesh, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean union of closed parts (manifold3d): a watertight mesh and each face's part label.

    Args:
        parts: ``(mesh, label)`` pairs.

    Returns:
        vertices ``[V, 3]``, faces ``[F, 3]``, face labels ``[F]``.
    """
    import manifold3d as m3d

    manifolds, labels = [], {}
    for mesh, label in parts:
        m = m3d.Manifold(
            m3d.Mesh(
                vert_properties=np.asarray(mesh.vertices, np.float32),
                tri_verts=np.asarray(mesh.faces, np.uint32),
            )
        ).as_original()
        manifolds.append(m)
        labels[m.original_id()] = label
    union = m3d.Manifold.batch_boolean(manifolds, m3d.OpType.Add) if len(manifolds) > 1 else manifolds[0]
    out = union.to_mesh()
    faces = np.asarray(out.tri_verts, np.int64)
    run_index = np.asarray(out.run_index) // 3
    face_labels = np.empty(len(faces), np.int64)
    for start, stop, orig in zip(run_index[:-1], run_index[1:], out.run_original_id):
        face_labels[start:stop] = labels[int(orig)]
    return np.asarray(out.vert_properties[:, :3], np.float64), faces, face_labels
