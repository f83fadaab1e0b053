"""Every config under configs/ validates, and every warm start names a run that configs/README.md makes."""

import re
from pathlib import Path

import pytest

import cdm3d.stages  # noqa: F401  (registers the stage plugins)
from cdm3d.core.config import load_yaml, validate
from cdm3d.core.stage_io import stage_config
from cdm3d.training.clip_trainer import load_recipe as load_clip_recipe
from cdm3d.training.data import DATASETS, load_builtin
from cdm3d.training.trainer import load_recipe

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
STAGE_FILES = sorted((CONFIGS / "stages").glob("*.yaml"))
RECIPES = sorted((CONFIGS / "train").glob("*.yaml"))


def test_there_are_configs():
    assert len(STAGE_FILES) >= 10 and len(RECIPES) >= 10


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: p.name)
def test_stage_config_validates(path):
    raw = load_yaml(path)
    _, config = stage_config(raw, str(path))
    assert config.type == raw["type"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_training_recipe_validates(path):
    recipe = load_recipe(path)
    stage_config(recipe.stage, f"{path} stage")
    load_builtin()
    data_cfg_cls, _ = DATASETS.get(recipe.data["type"])
    validate(data_cfg_cls, recipe.data, f"{path} data")


def test_clip_recipe_validates():
    load_clip_recipe(CONFIGS / "clip" / "small.yaml")


def test_every_warm_start_is_a_documented_run():
    readme = (CONFIGS / "README.md").read_text()
    made = set(re.findall(r"--out (runs/[\w.-]+)", readme))
    for path in RECIPES:
        init = load_recipe(path).train.init_from
        if init is None:
            continue
        run = str(Path(init).parent)
        assert run in made, f"{path.name} starts from {init}, but configs/README.md has no command writing {run}"
        # ... and the recipe itself is documented (its own --out is what a later warm start would name).
        assert path.name in readme, f"{path.name} warm-starts from {run} but configs/README.md never runs it"
