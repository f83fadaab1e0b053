"""The modality-agnostic core of cdm3d.

Nothing here imports a modality library (PIL, trimesh, open3d) or
``cdm3d.stages`` at import time; plugins register through the ``STAGES``
registry.
"""

from cdm3d.core.cascade import Cascade, CascadeOutput
from cdm3d.core.clip import ClipEncoder
from cdm3d.core.conditioning import Conditioning
from cdm3d.core.config import StrictConfig, load_yaml, updated, validate
from cdm3d.core.folder import load_cascade_clip
from cdm3d.core.registry import STAGES, Registry
from cdm3d.core.selection import SelectionConfig, SelectorStage, SelectorStageConfig
from cdm3d.core.stage import (
    DiffusionConfig,
    DiffusionStage,
    DiffusionStageConfig,
    SamplingConfig,
    Stage,
    StageConfig,
    TrainableStage,
    TrainableStageConfig,
)
from cdm3d.core.stage_io import build_stage, load_stage, save_stage

__all__ = [
    "STAGES",
    "Cascade",
    "CascadeOutput",
    "ClipEncoder",
    "Conditioning",
    "DiffusionConfig",
    "DiffusionStage",
    "DiffusionStageConfig",
    "Registry",
    "SamplingConfig",
    "SelectionConfig",
    "SelectorStage",
    "SelectorStageConfig",
    "Stage",
    "StageConfig",
    "StrictConfig",
    "TrainableStage",
    "TrainableStageConfig",
    "build_stage",
    "load_cascade_clip",
    "load_stage",
    "load_yaml",
    "save_stage",
    "updated",
    "validate",
]
