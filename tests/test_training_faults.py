"""Training faults: SIGKILL and --resume, non-finite losses, a failed save, unreadable data mid-epoch."""

from __future__ import annotations

import errno
import os
import random
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cdm3d.core import ClipEncoder
from cdm3d.errors import TrainingError
from cdm3d.training.trainer import Trainer, TrainRecipe

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import kill_resume


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory) -> Path:
    return kill_resume.prepare(tmp_path_factory.mktemp("kill"), steps=300)


def _recipe(path: Path, **train) -> TrainRecipe:
    import yaml

    data = yaml.safe_load(path.read_text())
    data["train"].update(train)
    return TrainRecipe.model_validate(data)


def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(recipe_path, tmp_path) -> None:
    kill_resume.train_straight(recipe_path, tmp_path / "straight")
    # Two kills inside training (once the log shows steps 57 and 183), then a run to the end.
    fired = kill_resume.train_under_fire(
        recipe_path, tmp_path / "killed", random.Random(1), (0, 0), kill_at_steps=[57, 183]
    )
    assert fired["kills"] == 2
    result = kill_resume.compare(tmp_path / "straight", tmp_path / "killed")
    assert result["step"] == 300
    assert result["ema_weights_identical"] and result["weights_identical"] and result["logged_losses_identical"]
    assert result["optimizer_and_generator_identical"]
    assert not list((tmp_path / "killed").glob(".*.tmp"))


def _nan_trainer(recipe_path: Path, out: Path, steps: int, bad_steps: set[int], monkeypatch) -> Trainer:
    trainer = Trainer(_recipe(recipe_path, steps=steps, max_bad_steps=3), out)
    real = trainer.trainee.loss

    def loss(*args, **kwargs):
        value = real(*args, **kwargs)
        return value * float("nan") if trainer.step in bad_steps else value

    monkeypatch.setattr(trainer.trainee, "loss", loss)
    return trainer


def test_non_finite_losses_are_skipped_then_stop_training(recipe_path, tmp_path, monkeypatch) -> None:
    import cdm3d.training.data.points  # noqa: F401

    trainer = _nan_trainer(recipe_path, tmp_path / "run", 12, {4, 5}, monkeypatch)
    with pytest.warns(UserWarning, match="non-finite loss skipped"):
        losses = trainer.fit(progress=False)
    assert trainer.step == 12 and len(losses) == 10 and all(np.isfinite(losses))
    for p in trainer.trainee.parameters():
        assert torch.isfinite(p).all()

    # Now every step is bad: three in a row stop the run, naming the step and the last good checkpoint.
    trainer = _nan_trainer(recipe_path, tmp_path / "run", 30, set(range(12, 40)), monkeypatch)
    with (
        pytest.raises(TrainingError, match="3 non-finite losses or gradients in a row at step 14"),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("ignore")
        trainer.fit(resume=True, progress=False)


def test_non_finite_gradients_are_skipped(recipe_path, tmp_path) -> None:
    import cdm3d.training.data.points  # noqa: F401

    trainer = Trainer(_recipe(recipe_path, steps=6), tmp_path / "run")
    param = next(trainer.trainee.net.parameters())
    param.register_hook(lambda grad: grad * float("nan") if trainer.step == 2 else grad)
    with pytest.warns(UserWarning, match="step 2: non-finite gradients skipped"):
        losses = trainer.fit(progress=False)
    assert len(losses) == 5 and all(torch.isfinite(p).all() for p in trainer.trainee.parameters())


def test_a_failed_save_keeps_the_previous_checkpoint(recipe_path, tmp_path, monkeypatch) -> None:
    import cdm3d.training.data.points  # noqa: F401

    out = tmp_path / "run"
    Trainer(_recipe(recipe_path, steps=20, checkpoint_every=10), out).fit(progress=False, until=10)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".pt", ".safetensors")}

    real_save = torch.save

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(TrainingError, match=r"step 20.*No space left.*previous checkpoint is intact"):
        Trainer(_recipe(recipe_path, steps=20, checkpoint_every=10), out).fit(resume=True, progress=False)
    monkeypatch.setattr(torch, "save", real_save)
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".pt", ".safetensors")}
    assert after == before
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    resumed = Trainer(_recipe(recipe_path, steps=20, checkpoint_every=10), out)
    assert len(resumed.fit(resume=True, progress=False)) == 10 and resumed.step == 20


def test_a_damaged_checkpoint_is_refused_not_half_read(recipe_path, tmp_path) -> None:
    import cdm3d.training.data.points  # noqa: F401

    out = tmp_path / "run"
    Trainer(_recipe(recipe_path, steps=10, checkpoint_every=5), out).fit(progress=False, until=5)
    state = out / "state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(TrainingError, match="cannot resume.*unreadable"):
        Trainer(_recipe(recipe_path, steps=10), out).fit(resume=True, progress=False)


def test_streamed_shards_survive_a_file_broken_mid_epoch(recipe_path, tmp_path) -> None:
    import cdm3d.training.data.points  # noqa: F401
    from cdm3d.data.prepare import PrepareOptions, prepare_world

    shards = tmp_path / "shards"
    prepare_world("val", 12, shards, PrepareOptions(points=128), shard_size=4, progress=False)
    paths = sorted(shards.glob("shard-*.npz"))
    assert len(paths) == 3
    ClipEncoder.from_config(kill_resume.TINY_CLIP).save(tmp_path / "clip.safetensors")
    recipe = _recipe(recipe_path, steps=30)
    recipe = TrainRecipe.model_validate(
        {
            **recipe.model_dump(),
            "data": {
                "type": "shards.points",
                "path": str(shards),
                "clip": str(tmp_path / "clip.safetensors"),
                "stream": True,
            },
        }
    )
    trainer = Trainer(recipe, tmp_path / "run")
    trainer.fit(progress=False, until=10)
    paths[1].write_bytes(b"PK\x03\x04 broken while training")  # mid-epoch
    with pytest.warns(UserWarning, match="skipping unreadable shard"):
        losses = trainer.fit(resume=True, progress=False)
    assert trainer.step == 30 and len(losses) == 20 and all(np.isfinite(losses))
    report = trainer.data.report()
    assert report["shards_skipped"] == 1 and str(paths[1]) in report["skipped"]
    import json

    assert json.loads((tmp_path / "run" / "data_report.json").read_text())["shards_skipped"] == 1

    for p in paths:
        p.write_bytes(b"")
    with pytest.raises(TrainingError, match="every shard .* is unreadable"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Trainer(recipe, tmp_path / "run2")


def test_clip_training_resumes_exactly(tmp_path) -> None:
    """The CLIP trains through the same trainer as the stages: a run killed after its checkpoint resumes to
    exactly the weights of an uninterrupted run."""
    import cdm3d.training.clip as clip_trainer

    data = {"type": "world.views", "objects": 12, "views": 1, "size": 32, "caption_variants": 4}
    recipe = TrainRecipe.model_validate(
        {
            "clip": {"model": kill_resume.TINY_CLIP},
            "data": data | {"cache_dir": str(tmp_path / "cache"), "workers": 1},
            "train": {"steps": 6, "batch_size": 4, "warmup": 1, "checkpoint_every": 3, "log_every": 1},
        }
    )
    straight = Trainer(recipe, tmp_path / "a")
    straight.fit(progress=False)
    real, calls = clip_trainer.clip_loss, []

    def crash_on_the_fifth_step(*args):
        calls.append(1)
        if len(calls) == 5:  # the checkpoint is at step 3; step 4 was logged, then the "kill"
            raise KeyboardInterrupt
        return real(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(clip_trainer, "clip_loss", crash_on_the_fifth_step)
        with pytest.raises(KeyboardInterrupt):
            Trainer(recipe, tmp_path / "b").fit(progress=False)
    resumed = Trainer(recipe, tmp_path / "b")
    resumed.fit(resume=True, progress=False)
    for (name, a), (_, b) in zip(straight.ema.state_dict().items(), resumed.ema.state_dict().items()):
        assert torch.equal(a, b), name
    assert (tmp_path / "a" / "clip.safetensors").read_bytes() == (tmp_path / "b" / "clip.safetensors").read_bytes()
    rows = (tmp_path / "b" / "log.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == list("123456")
    (tmp_path / "b" / "state.pt").write_bytes(b"\x80\x04 damaged")
    with pytest.raises(TrainingError, match="cannot resume"):
        Trainer(recipe, tmp_path / "b").fit(resume=True, progress=False)
