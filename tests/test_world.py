"""The procedural world: determinism, splits, captions, watertight meshes, surface points, SDF."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from cdm3d.data.vocab import ATTRIBUTES, CATEGORIES, COLORS, COMPOSITES, SECONDARY_PART, TEMPLATES
from cdm3d.data.world import World, make_object, sample_seed, signed_distance
from cdm3d.errors import InputError


@pytest.fixture(scope="module")
def one_per_category() -> dict:
    found, world, i = {}, World("train"), 0
    while len(found) < len(CATEGORIES):
        obj = world[i]
        found.setdefault(obj.labels.category, obj)
        i += 1
    return found


def test_vocabulary_is_rich_enough() -> None:
    assert len(CATEGORIES) >= 12 and len(COLORS) >= 8 and len(TEMPLATES) >= 10
    assert {"height", "width", "size"} <= set(ATTRIBUTES)
    assert set(SECONDARY_PART) == set(COMPOSITES)


def test_samples_are_deterministic_by_seed() -> None:
    a, b, c = World("train")[5], World("train")[5], World("train")[6]
    assert a.caption == b.caption and a.labels == b.labels
    np.testing.assert_array_equal(a.vertices, b.vertices)
    np.testing.assert_array_equal(a.face_colors, b.face_colors)
    np.testing.assert_array_equal(a.points(256)[0], b.points(256)[0])
    assert not (a.caption == c.caption and a.vertices.shape == c.vertices.shape)
    # Labels and captions are cheap to get and agree with the full object.
    assert World("train").labels(5) == a.labels and World("train").caption(5) == a.caption


def test_splits_are_disjoint() -> None:
    seeds = {s: {sample_seed(s, i) for i in range(3000)} for s in ("train", "val", "test")}
    assert not seeds["train"] & seeds["val"] and not seeds["train"] & seeds["test"] and not seeds["val"] & seeds["test"]
    with pytest.raises(InputError):
        World("holdout")


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z ]", " ", text.lower()) + " "


def test_captions_agree_with_labels() -> None:
    world = World("val")
    for i in range(300):
        labels = world.labels(i)
        for variant in (0, 3):
            text = _words(world.caption(i, variant))
            assert any(f" {syn} " in text for syn in CATEGORIES[labels.category]), (text, labels)
            for color in labels.colors:
                assert any(f" {syn} " in text for syn in COLORS[color][1]), (text, labels)
            others = {c for c in COLORS if c not in labels.colors}
            for other in others:
                assert not any(f" {syn} " in text for syn in COLORS[other][1]), (text, labels)
            for name, value in labels.attributes.items():
                syns = ATTRIBUTES[name][value][1]
                if value != "normal":
                    assert any(f" {syn} " in text for syn in syns), (text, labels)


def test_captions_use_many_templates_and_synonyms() -> None:
    world = World("train")
    captions = {world.caption(i, v) for i in range(50) for v in range(10)}
    assert len(captions) > 250


def test_every_category_appears_with_watertight_coloured_meshes(one_per_category) -> None:
    for category, obj in one_per_category.items():
        mesh = obj.mesh
        assert mesh.is_watertight and mesh.is_volume, category
        assert len(mesh.visual.vertex_colors) == len(mesh.vertices)
        assert np.abs(obj.vertices).max() <= 0.95, category


def test_two_tone_objects_use_both_colours() -> None:
    world = World("train")
    two_tone = [world[i] for i in range(200) if len(world.labels(i).colors) == 2][:10]
    assert two_tone
    for obj in two_tone:
        distinct = np.unique(obj.face_colors.round(3), axis=0)
        assert len(distinct) == 2, obj.caption


def test_attributes_change_the_geometry() -> None:
    world = World("train")
    heights = {"tall": [], "short": []}
    for i in range(600):
        labels = world.labels(i)
        if labels.category in ("cylinder", "cube") and labels.attributes["height"] in heights:
            obj = world[i]
            ext = obj.vertices.max(0) - obj.vertices.min(0)
            heights[labels.attributes["height"]].append(ext[1] / max(ext[0], ext[2]))
    assert np.mean(heights["tall"]) > 1.5 * np.mean(heights["short"])


def test_surface_points_lie_on_the_surface(one_per_category) -> None:
    import open3d as o3d

    for category, obj in one_per_category.items():
        xyz, rgb = obj.points(2048)
        assert xyz.shape == (2048, 3) and rgb.shape == (2048, 3)
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(obj.vertices), o3d.core.Tensor(obj.faces.astype(np.uint32)))
        dist = scene.compute_distance(o3d.core.Tensor(xyz)).numpy()
        diag = np.linalg.norm(obj.vertices.max(0) - obj.vertices.min(0))
        assert dist.mean() < 1e-3 * diag, (category, dist.mean())


def test_sdf_samples_have_the_right_sign(one_per_category) -> None:
    obj = one_per_category["sphere"]
    q, sdf = obj.sdf_samples(4000)
    assert q.shape == (4000, 3) and sdf.shape == (4000,)
    assert np.abs(sdf[:3200]).mean() < 0.05  # near the surface
    radius = np.abs(obj.vertices).max(0).mean()
    expected = np.linalg.norm(q, axis=1) - radius  # the sphere is centred (icosphere: a little inside)
    assert np.abs(sdf - expected).max() < 0.03
    assert signed_distance(obj.vertices, obj.faces, np.zeros((1, 3)))[0] < 0


def test_renders_show_the_object_in_its_colour() -> None:
    world = World("train")
    for i in range(40):
        obj = world[i]
        if len(obj.labels.colors) == 1 and obj.labels.colors[0] not in ("white", "black", "gray"):
            break
    img = obj.render(size=64)
    assert img.shape == (64, 64, 3) and img.min() >= 0 and img.max() <= 1
    fg = (img < 0.98).any(-1)
    assert 0.02 < fg.float().mean() < 0.9
    mean = img[fg].mean(0)
    target = torch.tensor(COLORS[obj.labels.colors[0]][0])
    assert torch.nn.functional.cosine_similarity(mean, target, dim=0) > 0.9


def test_make_object_is_pure() -> None:
    a = make_object(123)
    b = make_object(123)
    assert a.caption == b.caption
    np.testing.assert_array_equal(a.faces, b.faces)
