"""Image stages: ``images.base`` (CLIP -> low-resolution image) and ``images.sr`` (super-resolution with
conditioning augmentation)."""

from cdm3d.stages.images.base import BaseImageConfig, BaseImageStage
from cdm3d.stages.images.sr import SuperResConfig, SuperResStage

__all__ = ["BaseImageConfig", "BaseImageStage", "SuperResConfig", "SuperResStage"]
