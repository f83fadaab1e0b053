"""``Images``: a batch of RGB images."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from cdm3d.errors import InputError
from cdm3d.types.points import check_writable, save_batch

IMAGE_FORMATS = (".png",)


@dataclass
class Images:
    """A batch of images.

    Attributes:
        pixels: ``[B, 3, H, W]`` float32 RGB in [0, 1].
    """

    pixels: torch.Tensor

    def __post_init__(self) -> None:
        if not isinstance(self.pixels, torch.Tensor) or self.pixels.ndim != 4 or self.pixels.shape[1] != 3:
            shape = tuple(self.pixels.shape) if isinstance(self.pixels, torch.Tensor) else type(self.pixels).__name__
            raise InputError(f"images must be a [B, 3, H, W] tensor, got {shape}")

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def size(self) -> int:
        return self.pixels.shape[-1]

    def __getitem__(self, index: int | slice) -> Images:
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Images(self.pixels[index])

    def to(self, device: torch.device | str) -> Images:
        return Images(self.pixels.to(device))

    def to_tensor(self) -> torch.Tensor:
        """``[B, 3, H, W]`` in [-1, 1] (the diffusion representation)."""
        return self.pixels * 2 - 1

    @classmethod
    def from_tensor(cls, x: torch.Tensor) -> Images:
        """Inverse of :meth:`to_tensor`; values are clamped to [0, 1]."""
        return cls(((x.float() + 1) / 2).clamp(0, 1).contiguous())

    def preview(self, index: int = 0, size: int | None = None, camera: Any = None) -> torch.Tensor:
        """Image ``index`` as ``[H, W, 3]`` (nearest-neighbour enlarged to ``size`` if given)."""
        img = self.pixels[index : index + 1]
        if size is not None and size != img.shape[-1]:
            img = torch.nn.functional.interpolate(img, size=(size, size), mode="nearest")
        return img[0].permute(1, 2, 0).cpu()

    def save(self, path: str | Path, index: int = 0, force: bool = False) -> Path:
        """Write image ``index`` as a PNG."""
        from cdm3d.render.preview import save_png

        path = Path(path)
        if path.suffix.lower() not in IMAGE_FORMATS:
            raise InputError(f"unknown image format {path.suffix!r}; use one of {', '.join(IMAGE_FORMATS)}")
        check_writable(path, force)
        if not -len(self) <= index < len(self):
            raise InputError(f"index {index} is out of range for a batch of {len(self)}")
        if not bool(torch.isfinite(self.pixels[index]).all()):
            raise InputError(f"item {index} holds NaN or Inf values; refusing to write {path.name}")
        return save_png(self.preview(index), path)

    def save_all(
        self, directory: str | Path, stem: str, force: bool = False, formats: tuple[str, ...] = (".png",)
    ) -> list[Path]:
        """Every image of the batch as ``{stem}_{i}.png`` in ``directory``."""
        return save_batch(self, directory, stem, force, formats)
