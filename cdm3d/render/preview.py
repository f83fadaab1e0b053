"""Preview files: PNG images and turntable GIFs of meshes and point clouds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from cdm3d.core.checkpoint import atomic_path
from cdm3d.render.camera import Camera

RenderFn = Callable[[Camera], torch.Tensor]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[H, W, 3]`` floats in [0, 1] -> uint8 array."""
    return (image.detach().clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)


def save_png(image: torch.Tensor, path: str | Path) -> Path:
    from PIL import Image

    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(to_uint8(image)).save(tmp, format="PNG")
    return path


def turntable(render: RenderFn, frames: int = 24, elevation: float = 25.0, start: float = 30.0) -> list[torch.Tensor]:
    """Views every ``360 / frames`` degrees around the up axis."""
    return [render(Camera(azimuth=start + 360.0 * k / frames, elevation=elevation)) for k in range(frames)]


def save_gif(images: list[torch.Tensor], path: str | Path, fps: float = 12.0) -> Path:
    from PIL import Image

    path = Path(path)
    frames = [Image.fromarray(to_uint8(img)) for img in images]
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path
