"""Reframing conditioning images to a CLIP's training framing (cdm3d.core.framing)."""

from __future__ import annotations

import pytest
import torch

from cdm3d.core import ClipEncoder
from cdm3d.core.framing import foreground_boxes, object_fill, reframe
from cdm3d.errors import InputError

TINY = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def _square_on_grey(size: int = 64, x0: int = 6, y0: int = 38, side: int = 10) -> torch.Tensor:
    img = torch.full((1, 3, size, size), 0.8)
    img[0, :, y0 : y0 + side, x0 : x0 + side] = torch.tensor([0.9, 0.1, 0.1]).view(3, 1, 1)
    return img


def test_boxes_and_fill_of_an_object() -> None:
    img = _square_on_grey()
    boxes, found = foreground_boxes(img)
    assert found.tolist() == [True] and boxes.tolist() == [[6, 38, 16, 48]]
    assert object_fill(img).item() == pytest.approx(10 / 64)
    assert torch.isnan(object_fill(torch.full((1, 3, 16, 16), 0.5))).all()


def test_reframe_enlarges_a_small_object_about_the_image_centre_to_the_fill() -> None:
    img = _square_on_grey(x0=22, y0=26, side=16)  # box centre (30, 34), fill 0.25
    out = reframe(img, 0.5, max_zoom=3.0)
    assert out.shape == img.shape
    boxes, found = foreground_boxes(out, tol=0.3)
    x0, y0, x1, y1 = boxes[0].tolist()
    assert found.item() and abs((x1 - x0) - 32) <= 2 and abs((y1 - y0) - 32) <= 2
    # Enlarged about the image centre (32, 32), not re-centred: the box centre moves away from it.
    assert abs((x0 + x1) / 2 - (32 + 2 * (30 - 32))) <= 1.5 and abs((y0 + y1) / 2 - (32 + 2 * (34 - 32))) <= 1.5
    assert torch.allclose(out[0, :, 32, 32], torch.tensor([0.9, 0.1, 0.1]), atol=1e-4)  # the object's colour
    assert torch.allclose(out[0, :, 1, 1], torch.tensor([0.8, 0.8, 0.8]), atol=1e-4)  # background, not black
    # max_zoom bounds the enlargement; an object near the border stays inside the frame.
    capped = foreground_boxes(reframe(img, 0.5, max_zoom=1.5), tol=0.3)[0][0]
    assert abs((capped[2] - capped[0]).item() - 24) <= 2
    near_edge = reframe(_square_on_grey(x0=2, y0=30, side=8), 0.5, max_zoom=3.0)
    edge_box = foreground_boxes(near_edge, tol=0.3)[0][0].tolist()
    assert edge_box[0] >= 0 and edge_box[2] - edge_box[0] >= 9  # enlarged, yet whole


def test_reframe_leaves_large_objects_and_empty_images_as_they_are() -> None:
    large = _square_on_grey(x0=8, y0=8, side=48)
    blank = torch.full((1, 3, 24, 24), 0.3)
    assert torch.equal(reframe(large, 0.5), large) and torch.equal(reframe(blank, 0.7), blank)
    both = reframe(torch.cat([large, _square_on_grey()]), 0.5)
    assert torch.equal(both[:1], large) and not torch.equal(both[1:], _square_on_grey())
    with pytest.raises(InputError, match="fill must lie in"):
        reframe(blank, 1.5)
    with pytest.raises(InputError, match="max_zoom"):
        reframe(blank, 0.5, max_zoom=0.5)


def test_clip_encode_reframes_conditioning_images_when_the_fill_is_set() -> None:
    clip = ClipEncoder.from_config(TINY, seed=0)
    img = _square_on_grey()
    as_given = clip.encode(images=img).embeddings["image"]
    clip.image_fill = 0.6
    reframed = clip.encode(images=img).embeddings["image"]
    assert torch.allclose(reframed, clip.encode_image(reframe(img, 0.6)))
    assert not torch.allclose(reframed, as_given, atol=1e-3)
    assert torch.equal(clip.encode(images=img, reframe=False).embeddings["image"], as_given)
