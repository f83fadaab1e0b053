"""Reframing conditioning images to the framing a CLIP's image tower was trained on.

A CLIP trained on renders from a fixed camera distance sees objects at a given
size; the same object seen from further away (smaller in the frame) is encoded
worse. :func:`reframe` finds each image's object (the pixels that differ from
the background colour, estimated from the border) and enlarges the image about
its centre until the object's bounding box spans ``fill`` of the frame, the
median fill of the CLIP's training images (:func:`object_fill` measures it;
``benchmarks/framing.py`` reports both and what reframing does).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from cdm3d.errors import InputError


def _background(images: torch.Tensor) -> torch.Tensor:
    """``[B, 3]``: the median colour of each image's one-pixel border."""
    border = torch.cat(
        [images[..., 0, :], images[..., -1, :], images[..., 1:-1, 0], images[..., 1:-1, -1]], dim=-1
    )  # [B, 3, P]
    return border.median(dim=-1).values


def foreground_boxes(images: torch.Tensor, tol: float = 0.05) -> tuple[torch.Tensor, torch.Tensor]:
    """Bounding boxes ``[B, 4]`` (x0, y0, x1, y1 in pixels, ends exclusive) of the pixels of ``images
    [B, 3, H, W]`` that differ from the background colour by more than ``tol`` in some channel, and
    ``[B]`` whether an image has any such pixel (its box is the whole image otherwise)."""
    boxes, found, _ = _boxes(images, tol)
    return boxes, found


def _boxes(images: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`foreground_boxes` and the background colours ``[B, 3]`` it measured them against."""
    bg = _background(images)
    mask = (images - bg[:, :, None, None]).abs().amax(dim=1) > tol  # [B, H, W]
    height, width = mask.shape[-2:]
    found = mask.flatten(1).any(1)
    rows, cols = mask.any(2), mask.any(1)  # [B, H], [B, W]

    def span(hit: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.arange(size, device=hit.device).expand_as(hit)
        lo = torch.where(hit, idx, size).amin(1)
        hi = torch.where(hit, idx + 1, 0).amax(1)
        return torch.where(found, lo, 0), torch.where(found, hi, size)

    y0, y1 = span(rows, height)
    x0, x1 = span(cols, width)
    return torch.stack([x0, y0, x1, y1], 1), found, bg


def _fill(boxes: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """``[B]``: the longer side of each box as a fraction of the images' longer side."""
    return (boxes[:, 2:] - boxes[:, :2]).amax(1).float() / max(images.shape[-2:])


def object_fill(images: torch.Tensor, tol: float = 0.05) -> torch.Tensor:
    """``[B]``: the longer side of each image's object box as a fraction of the image's longer side
    (NaN for an image without an object)."""
    boxes, found = foreground_boxes(images, tol)
    return torch.where(found, _fill(boxes, images), torch.nan)


def reframe(images: torch.Tensor, fill: float, max_zoom: float = 1.6, tol: float = 0.05) -> torch.Tensor:
    """``images [B, 3, H, W]`` in [0, 1], each enlarged about its centre until its object's box spans
    ``fill`` of the frame (by at most ``max_zoom``, and no further than keeps the box inside the frame).
    Images whose object already spans ``fill`` or more, and images without an object, are returned as
    they are: reframing only undoes "photographed from further away".

    The object is not re-centred: a CLIP trained on renders sees objects centred on their origin, not on
    their bounding box, and re-centring (or shrinking large objects) costs more accuracy than it gains.
    """
    if not 0.05 <= fill <= 1.0:
        raise InputError(f"reframing fill must lie in [0.05, 1], got {fill}")
    if max_zoom < 1.0:
        raise InputError(f"max_zoom must be at least 1, got {max_zoom}")
    images = images.float()
    batch, _, height, width = images.shape
    boxes, found, bg = _boxes(images, tol)
    zoom = (fill / _fill(boxes, images).clamp_min(1e-6)).clamp(1.0, max_zoom)
    boxes = boxes.float()
    # Keep the box inside the frame: its farthest edge from the centre may move at most to the border.
    half = torch.tensor([width / 2, height / 2], device=images.device)
    reach = torch.maximum((half - boxes[:, :2]).abs(), (boxes[:, 2:] - half).abs()) / half  # [B, 2] in (0, 1]
    zoom = torch.minimum(zoom, 1 / reach.amax(1).clamp_min(1e-6)).clamp_min(1.0)
    zoom = torch.where(found, zoom, torch.ones_like(zoom))
    if bool((zoom == 1).all()):
        return images
    theta = torch.zeros(batch, 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1 / zoom
    grid = F.affine_grid(theta, [batch, 3, height, width], align_corners=False)
    bg = bg[:, :, None, None]
    out = F.grid_sample(images - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + bg
    # Images left at zoom 1 come back bit for bit.
    return torch.where((zoom == 1).view(-1, 1, 1, 1), images, out.clamp(0, 1))
