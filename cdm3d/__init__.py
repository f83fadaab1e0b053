"""cdm3d: cascaded diffusion across modalities (images and 3D) on one core.

Heavy modules load lazily, so ``import cdm3d`` and ``cdm3d --help`` stay fast.
"""

from __future__ import annotations

from typing import Any

from cdm3d.errors import (
    Cdm3dError,
    CheckpointError,
    ConfigError,
    InputError,
    SamplingError,
    UnavailableError,
)

__version__ = "0.1.0"

_LAZY = {
    "TextTo3D": "cdm3d.pipelines",
    "ImageTo3D": "cdm3d.pipelines",
    "TextToImage": "cdm3d.pipelines",
    "TextToImageTo3D": "cdm3d.pipelines",
    "Cascade": "cdm3d.core",
    "ClipEncoder": "cdm3d.core",
    "Conditioning": "cdm3d.core",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cdm3d' has no attribute {name!r}")


__all__ = [
    "Cascade",
    "Cdm3dError",
    "CheckpointError",
    "ClipEncoder",
    "Conditioning",
    "ConfigError",
    "ImageTo3D",
    "InputError",
    "SamplingError",
    "TextTo3D",
    "TextToImage",
    "TextToImageTo3D",
    "UnavailableError",
    "__version__",
]
