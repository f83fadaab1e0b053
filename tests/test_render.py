"""The headless rasterizer: geometry lands where the camera says, depth order, points, files."""

from __future__ import annotations

import numpy as np
import torch
import trimesh

from cdm3d.render import Camera, render_mesh, render_points
from cdm3d.render.preview import save_gif, save_png, turntable


def _box(size: float, offset=(0.0, 0.0, 0.0)):
    m = trimesh.creation.box((size, size, size))
    m.apply_translation(offset)
    return torch.tensor(m.vertices, dtype=torch.float32), torch.tensor(m.faces)


def test_centred_box_covers_the_image_centre_only() -> None:
    v, f = _box(0.5)
    img = render_mesh(v, f, torch.tensor([[1.0, 0, 0]]).expand(len(f), 3), Camera(0, 0), size=64)
    assert img.shape == (64, 64, 3)
    centre, corner = img[32, 32], img[2, 2]
    assert torch.allclose(corner, torch.ones(3))
    assert centre[0] > 0.3 and centre[1] < 0.05 and centre[2] < 0.05


def test_nearer_geometry_hides_farther_geometry() -> None:
    near_v, near_f = _box(0.4, (0, 0, 0.8))  # camera at azimuth 0 looks from +z
    far_v, far_f = _box(0.8, (0, 0, -0.5))
    v = torch.cat([far_v, near_v])
    f = torch.cat([far_f, near_f + len(far_v)])
    blue, green = torch.tensor([[0.0, 0, 1]]), torch.tensor([[0.0, 1, 0]])
    colors = torch.cat([blue.expand(len(far_f), 3), green.expand(len(near_f), 3)])
    for order in (torch.arange(len(f)), torch.arange(len(f)).flip(0)):  # draw order must not matter
        img = render_mesh(v, f[order], colors[order], Camera(0, 0), size=64)
        assert img[32, 32, 1] > 0.3 and img[32, 32, 2] < 0.05


def test_vertex_colours_are_interpolated() -> None:
    v, f = _box(1.0)
    colors = (v + 0.5).clamp(0, 1)
    img = render_mesh(v, f, colors, Camera(0, 0), size=64)
    left, right = img[32, 22], img[32, 42]
    assert right[0] > left[0]  # x grows to the right, and so does red


def test_points_render_with_their_colours() -> None:
    pts = torch.rand(2000, 3) - 0.5
    img = render_points(pts, torch.tensor([[0.0, 0.8, 0.0]]).expand(2000, 3), Camera(), size=64)
    fg = (img < 0.98).any(-1)
    assert fg.float().mean() > 0.05
    assert img[fg][:, 1].mean() > img[fg][:, 0].mean() + 0.2


def test_preview_files(tmp_path) -> None:
    from PIL import Image

    v, f = _box(0.6)
    colors = torch.tensor([[0.9, 0.5, 0.1]]).expand(len(f), 3)
    png = save_png(render_mesh(v, f, colors, size=32), tmp_path / "p.png")
    assert Image.open(png).size == (32, 32)
    frames = turntable(lambda cam: render_mesh(v, f, colors, cam, size=32), frames=6)
    gif = save_gif(frames, tmp_path / "t.gif")
    with Image.open(gif) as im:
        assert im.n_frames == 6
    assert not np.array_equal(np.asarray(frames[0]), np.asarray(frames[1]))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "t.gif"]  # no temporary files left
