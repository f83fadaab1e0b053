"""Training recipes: what to train (a stage, or a CLIP), on which data, with which settings; and the one
learning-rate schedule every run follows.

A recipe YAML::

    stage: ../../stages/points/coarse.yaml   # a stage config (a file, relative to the recipe, or inline)
    # clip: {model: {...}, objective: contrastive}   # or a CLIP to train instead of a stage
    data: {type: world.points, ...}          # a data source from cdm3d.training.data
    train: {steps: 4000, batch_size: 64, lr: 3.0e-4, ...}
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from cdm3d.core.config import StrictConfig, load_yaml, validate
from cdm3d.errors import ConfigError


class TrainSettings(StrictConfig):
    steps: int = Field(1000, ge=1)
    batch_size: int = Field(32, ge=1)  # global batch, split over data-parallel processes
    lr: float = Field(3e-4, gt=0)
    # The learning rate at the end of the cosine decay, as a fraction of ``lr``.
    final_lr: float = Field(0.1, ge=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    # Weight decay on every parameter; false: on weight matrices only (not on norms, biases, embeddings,
    # the temperature), as CLIP is trained.
    decay_all: bool = True
    betas: list[float] = Field([0.9, 0.999], min_length=2, max_length=2)  # AdamW's
    warmup: int = Field(100, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    # EMA of the weights (the inference weights); 0 keeps the trained weights themselves.
    ema_decay: float = Field(0.999, ge=0, lt=1)
    seed: int = 0
    checkpoint_every: int = Field(200, ge=1)
    log_every: int = Field(10, ge=1)
    # Non-finite losses are skipped with a warning; this many in a row stop training.
    max_bad_steps: int = Field(5, ge=1)
    amp: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    # Warm start: a stage weights file of the same type whose tensors initialise the network; tensors the
    # network has and the file lacks (layers added to a trained model) keep their fresh initialisation.
    init_from: str | None = None


class ClipTraining(StrictConfig):
    """A CLIP to train (a recipe's ``clip`` section), through the same trainer as the stages."""

    # An open_clip CLIP config: embed_dim, vision_cfg, text_cfg.
    model: dict[str, Any]
    # Start from a trained cdm3d CLIP file of this config instead of random weights.
    init: str | None = None
    # Keep the text tower (and so every text embedding) fixed: improves the image tower of a CLIP whose text
    # embeddings other stages were already trained on.
    freeze_text: bool = False
    # "contrastive": CLIP's loss; the run writes clip.safetensors. "text_prior": train a text prior for the
    # ``init`` CLIP: a copy of its image tower, the text tower frozen, with ``prior_cosine`` x (1 - cosine)
    # between each image's embedding and its caption's added to the loss; the run writes
    # text_prior.safetensors (ClipEncoder.text_prior) and leaves the CLIP itself unchanged.
    objective: Literal["contrastive", "text_prior"] = "contrastive"
    prior_cosine: float = Field(4.0, ge=0.0)

    @model_validator(mode="after")
    def _check_init(self) -> ClipTraining:
        if self.objective == "text_prior" and self.init is None:
            raise ValueError("objective 'text_prior' needs init: the CLIP file whose text prior to train")
        return self


class ClassifierTraining(StrictConfig):
    """A fidelity classifier of the world's category and colour to train (a recipe's ``classifier`` section):
    an instrument of the evaluation (cdm3d/eval/classifier.py)."""

    kind: Literal["points", "images"]
    width: int | None = Field(None, ge=8)  # default: the classifier's own


class TrainRecipe(StrictConfig):
    # Exactly one of: a stage config (its ``type`` selects the stage), a CLIP, or a fidelity classifier.
    stage: dict[str, Any] | None = None
    clip: ClipTraining | None = None
    classifier: ClassifierTraining | None = None
    data: dict[str, Any]
    train: TrainSettings = TrainSettings()

    @model_validator(mode="after")
    def _check_one(self) -> TrainRecipe:
        if sum(x is not None for x in (self.stage, self.clip, self.classifier)) != 1:
            raise ValueError("a recipe trains exactly one thing: give one 'stage', 'clip' or 'classifier' section")
        return self


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainRecipe:
    """A recipe YAML; ``stage`` may name a stage config file relative to the recipe, or a stage weights file
    (``.safetensors``, relative to the recipe or the working folder): its own config, and its weights to start
    from (fine-tuning, unless ``train.init_from`` says otherwise). ``overrides`` set fields as
    ``{"train.steps": 200}``."""
    path = Path(path)
    data = load_yaml(path)
    if isinstance(data.get("stage"), str):
        data = _resolve_stage(data, path)
    for key, value in (overrides or {}).items():
        section, _, field = key.partition(".")
        if section not in data or not isinstance(data[section], dict) or not field:
            raise ConfigError(f"override {key!r} must look like section.field (train.steps)")
        data[section] = {**data[section], field: value}
    return validate(TrainRecipe, data, str(path))


def lr_at(step: int, s: TrainSettings, horizon: int | None = None) -> float:
    """Linear warm-up, then cosine decay to ``final_lr`` x ``lr`` at ``horizon`` (default: ``s.steps``),
    then flat."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    progress = (step - s.warmup) / max(1, (horizon or s.steps) - s.warmup)
    return s.lr * (s.final_lr + (1 - s.final_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def check_recipe(recipe: TrainRecipe) -> None:
    """Validate what a recipe's sections name without building anything: the stage config against its
    stage type, the data section against its source's config (a ``ConfigError`` naming the field)."""
    from cdm3d.core.stage_io import stage_config
    from cdm3d.stages import load_builtin as load_stages
    from cdm3d.training.data import DATASETS, load_builtin

    if recipe.stage is not None:
        load_stages()
        stage_config(recipe.stage, "recipe stage")
    data_type = recipe.data.get("type")
    if not isinstance(data_type, str):
        raise ConfigError("the recipe's data section needs a 'type'")
    load_builtin()
    data_cfg_cls, _ = DATASETS.get(data_type)
    validate(data_cfg_cls, recipe.data, "recipe data")


def _resolve_stage(data: dict[str, Any], path: Path) -> dict[str, Any]:
    """The recipe with its ``stage`` file read: a config YAML, or a weights file's embedded config (which the
    recipe then fine-tunes)."""
    name = data["stage"]
    if not name.endswith(".safetensors"):
        return {**data, "stage": load_yaml((path.parent / name).resolve())}
    from cdm3d.core.checkpoint import config_from_metadata, read_metadata

    weights = next((p for p in (path.parent / name, Path(name)) if p.is_file()), path.parent / name)
    meta = read_metadata(weights)
    train = dict(data.get("train") or {})
    train.setdefault("init_from", str(weights))
    return {**data, "stage": config_from_metadata(weights, meta, "stage"), "train": train}
