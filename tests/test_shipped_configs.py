"""The recipes under configs/ reproduce the shipped weights: every config validates, every warm start names a
run an earlier step of tools/reproduce_default.py makes, and each shipped stage file carries exactly the
config of the recipe that made it (with the sampling settings the cascade was assembled with)."""

import json
import sys
from pathlib import Path

import pytest

import cdm3d.stages  # noqa: F401  (registers the stage plugins)
from cdm3d.core.checkpoint import config_from_metadata, load_tensors
from cdm3d.core.config import load_yaml, updated
from cdm3d.core.stage_io import stage_config
from cdm3d.paths import DEFAULT_IMAGE_MODEL, DEFAULT_MODEL
from cdm3d.pipelines import parse_sampling_items
from cdm3d.training.recipe import check_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
STAGE_FILES = sorted((CONFIGS / "stages").rglob("*.yaml"))
RECIPES = sorted((CONFIGS / "train").rglob("*.yaml"))
sys.path.insert(0, str(ROOT / "tools"))
import reproduce_default  # noqa: E402


def _name(path: Path) -> str:
    return str(path.relative_to(CONFIGS))


def test_there_are_configs():
    assert len(STAGE_FILES) >= 10 and len(RECIPES) >= 15


@pytest.mark.parametrize("path", STAGE_FILES, ids=_name)
def test_stage_config_validates(path):
    raw = load_yaml(path)
    _, config = stage_config(raw, str(path))
    assert config.type == raw["type"]


@pytest.mark.parametrize("path", RECIPES, ids=_name)
def test_training_recipe_validates(path):
    check_recipe(load_recipe(path))


def test_every_warm_start_is_made_by_an_earlier_step_of_the_reproduction():
    steps = reproduce_default.STEPS + reproduce_default.ABLATIONS + reproduce_default.INSTRUMENTS
    made: list[str] = []
    for step in steps:
        if step.recipe is not None:
            recipe = load_recipe(ROOT / step.recipe)
            for needed in (recipe.train.init_from, recipe.clip.init if recipe.clip else None):
                assert needed is None or needed in made, f"{step.recipe} starts from {needed}, made by no earlier step"
            for path in (recipe.data.get("embeddings"),):
                assert path is None or path in made, f"{step.recipe} needs {path}, made by no earlier step"
        made.append(step.result)
    shipped = {str(p.relative_to(CONFIGS / "train"))[:-5] for p in RECIPES}
    reproduced = {s.name for s in steps if s.recipe is not None}
    gpu = {n for n in shipped if n.endswith("_gpu")}
    assert shipped - gpu == reproduced, "every CPU recipe is a step of tools/reproduce_default.py"


def _assembly_sampling(argv: list[str]) -> dict[str, dict]:
    items = [argv[i + 1] for i, a in enumerate(argv) if a == "--sampling"]
    return parse_sampling_items(items, sorted({i.split(".")[0] for i in items}))


@pytest.mark.parametrize(
    "shipped, recipe, assembly",
    [
        (DEFAULT_MODEL / "coarse.safetensors", "points/coarse", "coarse"),
        (DEFAULT_MODEL / "coarse.expert.safetensors", "points/coarse_expert", None),
        (DEFAULT_MODEL / "upsample.safetensors", "points/upsample", "upsample"),
        (DEFAULT_MODEL / "select.safetensors", "points/select", "select"),
        (DEFAULT_MODEL / "mesh.safetensors", "mesh/sdf", "mesh"),
        (DEFAULT_MODEL / "mesh_select.safetensors", "points/select", "mesh_select"),
        (DEFAULT_IMAGE_MODEL / "base.safetensors", "images/base", "base"),
        (DEFAULT_IMAGE_MODEL / "sr.safetensors", "images/sr", "sr"),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else str(v),
)
def test_each_shipped_stage_carries_its_recipes_config(shipped, recipe, assembly):
    _, meta = load_tensors(shipped)
    raw = config_from_metadata(shipped, meta, "stage")
    stage = dict(load_recipe(CONFIGS / "train" / f"{recipe}.yaml").stage)
    steps = {s.result.split("/")[1]: s.argv for s in reproduce_default.STEPS if s.recipe is None}
    argv = steps["default" if shipped.parent == DEFAULT_MODEL else "images"]
    if assembly is not None:
        stage["type"] = raw["type"]  # mesh_select: the select critic read as mesh.select
        _, expected = stage_config(stage)
        expected = updated(expected.sampling, _assembly_sampling(argv).get(assembly, {}), "assembly")
        _, got = stage_config(raw)
        assert got.sampling == expected
        assert got.model_copy(update={"sampling": None}) == stage_config(stage)[1].model_copy(update={"sampling": None})
    else:
        _, got = stage_config(raw)
        _, expected_cfg = stage_config(stage)
        assert json.loads(got.model_dump_json()) == json.loads(expected_cfg.model_dump_json())


def test_the_reproduction_dry_run_lists_every_step_and_checks_each_recipe(capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # it works from anywhere and writes nothing
    assert reproduce_default.main(["--dry-run", "--ablations", "--instruments"]) == 0
    out = capsys.readouterr().out
    steps = reproduce_default.STEPS + reproduce_default.ABLATIONS + reproduce_default.INSTRUMENTS
    assert out.count("python tools/") == len(steps)
    assert "python tools/train.py --config configs/train/clip/clip.yaml --out runs/clip/clip" in out
    assert list(tmp_path.iterdir()) == []


def test_the_reproduction_dry_run_stops_at_a_broken_recipe(monkeypatch, tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("stage: {type: points.coarse, num_points: -1}\ndata: {type: world.points, embeddings: x}\n")
    first = reproduce_default.STEPS[4]
    monkeypatch.setattr(first, "argv", ["train.py", "--config", str(broken), "--out", "runs/x"])
    with pytest.raises(SystemExit, match="num_points"):
        reproduce_default.main(["--dry-run"])
