"""The generic trainer: the loss falls, --resume is exact, DDP (2 gloo processes) matches one process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as tmp_mp

from cdm3d.core import ClipEncoder
from cdm3d.errors import TrainingError
from cdm3d.training.data.world import build_world_embeddings
from cdm3d.training.trainer import Trainer, TrainRecipe, load_recipe

TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
OBJECTS = 24


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("data")
    clip = ClipEncoder.from_config(TINY_CLIP)
    build_world_embeddings(clip, "train", OBJECTS, d / "emb.safetensors", text_variants=2, image_views=1)
    return d


def _recipe(data_dir: Path, stage: str = "points.coarse", anchored: bool = False, **train) -> TrainRecipe:
    net = {"width": 16} if stage == "points.select" else {"width": 32, "layers": 1, "heads": 2}
    stage_cfg = {"type": stage, "embed_dim": 16, "num_points": 64, "network": net}
    if stage == "points.upsample":
        stage_cfg["coarse_points"] = 32
        # 32 anchors on these tiny 128-point clouds sit about 0.2 apart: offsets divided by that are of unit size.
        stage_cfg.update(anchored=anchored, anchor_scale=0.2)
    return TrainRecipe.model_validate(
        {
            "stage": stage_cfg,
            "data": {
                "type": "world.points",
                "objects": OBJECTS,
                "points": 128,
                "workers": 1,
                "embeddings": str(data_dir / "emb.safetensors"),
                "cache_dir": str(data_dir / "cache"),
            },
            "train": {
                "steps": 40,
                "batch_size": 8,
                "lr": 2e-3,
                "warmup": 5,
                "checkpoint_every": 10,
                "log_every": 1,
                **train,
            },
        }
    )


def test_tiny_training_lowers_the_loss(data_dir, tmp_path) -> None:
    import cdm3d.training.data.points  # noqa: F401

    losses = Trainer(_recipe(data_dir, steps=120), tmp_path / "run").fit(progress=False)
    assert len(losses) == 120
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.8 * first, (first, last)
    assert (tmp_path / "run" / "stage.safetensors").exists() and (tmp_path / "run" / "recipe.json").exists()
    lines = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert lines[0] == "step,loss,lr,seconds" and len(lines) == 121


def test_upsample_stage_trains(data_dir, tmp_path) -> None:
    losses = Trainer(_recipe(data_dir, "points.upsample", steps=60), tmp_path / "up").fit(progress=False)
    assert sum(losses[-10:]) < sum(losses[:10])


def test_anchored_upsample_stage_trains(data_dir, tmp_path) -> None:
    losses = Trainer(_recipe(data_dir, "points.upsample", anchored=True, steps=60), tmp_path / "up").fit(progress=False)
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10])


def test_point_selector_trains_through_the_same_trainer(data_dir, tmp_path) -> None:
    """points.select's critic: the contrastive loss falls and the run folder holds a stage that scores clouds."""
    from cdm3d.core import load_stage
    from cdm3d.types import PointClouds

    losses = Trainer(_recipe(data_dir, "points.select", steps=60, lr=3e-3), tmp_path / "sel").fit(progress=False)
    assert sum(losses[-10:]) < 0.8 * sum(losses[:10]), (losses[:10], losses[-10:])
    stage = load_stage(tmp_path / "sel" / "stage.safetensors", expected_type="points.select")
    cond = ClipEncoder.from_config(TINY_CLIP).encode(["a red cube", "a blue sphere"])
    clouds = PointClouds(torch.rand(2, 100, 3) - 0.5, torch.rand(2, 100, 3))
    scores = stage.score(clouds, cond, torch.Generator().manual_seed(0))
    assert scores.shape == (2,) and torch.isfinite(scores).all() and (scores.abs() <= 1 + 1e-5).all()


def test_resume_continues_with_the_same_losses_and_weights(data_dir, tmp_path) -> None:
    straight = Trainer(_recipe(data_dir, steps=20), tmp_path / "a")
    losses_a = straight.fit(progress=False)
    # Interrupted after step 13; the last checkpoint is step 10, so steps 11-13 are redone.
    Trainer(_recipe(data_dir, steps=20), tmp_path / "b").fit(progress=False, until=13)
    resumed = Trainer(_recipe(data_dir, steps=20), tmp_path / "b")
    losses_b = resumed.fit(resume=True, progress=False)
    assert resumed.step == 20 and len(losses_b) == 10
    assert losses_b == losses_a[10:]
    # Rows logged after the checkpoint (steps 11-13) are dropped, not repeated.
    steps = [int(line.split(",")[0]) for line in (tmp_path / "b" / "log.csv").read_text().splitlines()[1:]]
    assert steps == list(range(1, 21))
    for (k, v), (_, w) in zip(straight.ema.state_dict().items(), resumed.ema.state_dict().items()):
        assert torch.equal(v, w), k
    with pytest.raises(TrainingError, match="different recipe"):
        Trainer(_recipe(data_dir, steps=30, lr=1e-3), tmp_path / "b").fit(resume=True, progress=False)
    # Training longer is allowed.
    longer = Trainer(_recipe(data_dir, steps=25), tmp_path / "b")
    assert len(longer.fit(resume=True, progress=False)) == 5


def test_fit_schedule_ends_the_decay_where_the_time_limit_runs_out(data_dir, tmp_path, monkeypatch) -> None:
    import cdm3d.training.trainer as trainer_module
    from cdm3d.training.trainer import lr_at

    class Clock:  # one simulated second per reading of the clock, however fast this machine is
        now = 0.0

        def time(self) -> float:
            self.now += 1.0
            return self.now

    clock = Clock()
    monkeypatch.setattr(trainer_module.time, "time", clock.time)
    recipe = _recipe(data_dir, steps=10_000, warmup=5, checkpoint_every=1000, log_every=50)
    fitted = Trainer(recipe, tmp_path / "fit")
    losses = fitted.fit(progress=False, time_limit=400.0, fit_schedule=True)
    # It stopped where the cosine decay ended, inside the limit and far short of train.steps...
    assert 25 <= fitted.step == fitted.lr_horizon < 400 and len(losses) == fitted.step
    assert clock.now < 400
    # ...at the schedule's floor (a tenth of the peak), with a checkpoint of that step.
    assert lr_at(fitted.step - 1, recipe.train, fitted.lr_horizon) == pytest.approx(0.1 * recipe.train.lr, rel=0.02)
    saved = torch.load(tmp_path / "fit" / "state.pt", weights_only=True)
    assert int(saved["step"]) == int(saved["lr_horizon"]) == fitted.step
    # Without the flag the same time limit just stops the run, the schedule untouched.
    clock.now = 0.0
    plain = Trainer(recipe, tmp_path / "plain")
    plain.fit(progress=False, time_limit=400.0)
    assert plain.lr_horizon == 10_000 and plain.step < 10_000
    with pytest.raises(TrainingError, match="time limit"):
        Trainer(recipe, tmp_path / "none").fit(progress=False, fit_schedule=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batches_gathered_on_the_gpu_are_the_cpu_batches(data_dir, tmp_path) -> None:
    on_cpu = Trainer(_recipe(data_dir), tmp_path / "cpu").data
    on_gpu = Trainer(_recipe(data_dir), tmp_path / "gpu", "cuda").data
    assert on_gpu.points.is_cuda
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):
        (x_cpu, c_cpu, _), (x_gpu, c_gpu, _) = on_cpu.batch(8, a), on_gpu.batch(8, b)
        assert x_gpu.is_cuda and torch.equal(x_cpu, x_gpu.cpu())
        assert all(torch.equal(c_cpu.embeddings[k], c_gpu.embeddings[k]) for k in c_cpu.embeddings)


def test_existing_run_needs_resume(data_dir, tmp_path) -> None:
    Trainer(_recipe(data_dir, steps=10), tmp_path / "r").fit(progress=False)
    with pytest.raises(TrainingError, match="--resume"):
        Trainer(_recipe(data_dir, steps=10), tmp_path / "r").fit(progress=False)


def test_recipe_overrides_and_errors(tmp_path) -> None:
    from cdm3d.errors import ConfigError

    path = tmp_path / "r.yaml"
    path.write_text("stage: {type: points.coarse}\ndata: {type: world.points, embeddings: x}\ntrain: {steps: 5}\n")
    assert load_recipe(path, {"train.steps": 7}).train.steps == 7
    with pytest.raises(ConfigError, match="train.stepz"):
        load_recipe(path, {"train.stepz": 7})
    with pytest.raises(ConfigError):
        load_recipe(path, {"steps": 7})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import cdm3d.training.data.points  # noqa: F401

        trainer = Trainer(_recipe(Path(data_dir), steps=6, ema_decay=0.0), out)
        trainer.fit(progress=False)
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_with_two_gloo_processes_matches_one_process(data_dir, tmp_path) -> None:
    single = Trainer(_recipe(data_dir, steps=6, ema_decay=0.0), tmp_path / "single")
    single.fit(progress=False)
    tmp_mp.spawn(_ddp_worker, args=(2, _free_port(), str(data_dir), str(tmp_path / "ddp")), nprocs=2, join=True)
    from cdm3d.core import load_stage

    ddp = load_stage(tmp_path / "ddp" / "stage.safetensors")
    for (k, v), (_, w) in zip(single.ema.state_dict().items(), ddp.state_dict().items()):
        torch.testing.assert_close(v, w, rtol=1e-4, atol=1e-5, msg=k)


def _ddp_fitted_worker(rank: int, world: int, port: int, data_dir: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import cdm3d.training.data.points  # noqa: F401
        import cdm3d.training.trainer as trainer_module

        clock = [0.0]

        def tick() -> float:  # rank 1's clock runs three times faster: alone, it would stop much earlier
            clock[0] += 1.0 + 2.0 * rank
            return clock[0]

        trainer_module.time.time = tick
        recipe = _recipe(Path(data_dir), steps=10_000, warmup=5, checkpoint_every=1000, log_every=50)
        trainer = Trainer(recipe, out)
        trainer.fit(progress=False, time_limit=600.0, fit_schedule=True)
        Path(out, f"rank{rank}.txt").write_text(f"{trainer.step} {trainer.lr_horizon}")
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_processes_agree_on_the_fitted_schedule(data_dir, tmp_path) -> None:
    out = tmp_path / "ddp"
    tmp_mp.spawn(_ddp_fitted_worker, args=(2, _free_port(), str(data_dir), str(out)), nprocs=2, join=True)
    ends = {(out / f"rank{r}.txt").read_text() for r in range(2)}
    assert len(ends) == 1, ends  # both stopped at the same step, with the same horizon
    step, horizon = map(int, ends.pop().split())
    assert 25 <= step == horizon < 10_000


def test_real_data_shards_train_through_the_same_trainer(data_dir, tmp_path) -> None:
    import cdm3d.training.data.points  # noqa: F401
    from cdm3d.data.prepare import PrepareOptions, prepare_world

    prepare_world("val", 6, tmp_path / "shards", PrepareOptions(points=128), progress=False)
    ClipEncoder.from_config(TINY_CLIP).save(tmp_path / "clip.safetensors")
    recipe = _recipe(data_dir, steps=5)
    recipe = TrainRecipe.model_validate(
        {
            **recipe.model_dump(),
            "data": {
                "type": "shards.points",
                "path": str(tmp_path / "shards"),
                "clip": str(tmp_path / "clip.safetensors"),
            },
        }
    )
    losses = Trainer(recipe, tmp_path / "run").fit(progress=False)
    assert len(losses) == 5 and all(torch.isfinite(torch.tensor(losses)))


def test_warm_start_loads_a_trained_stage_into_a_network_with_added_layers(data_dir, tmp_path) -> None:
    from cdm3d.core import load_stage
    from cdm3d.errors import CheckpointError, ConfigError

    Trainer(_recipe(data_dir, steps=10), tmp_path / "plain").fit(progress=False)
    weights = tmp_path / "plain" / "stage.safetensors"
    recipe = _recipe(data_dir, steps=10, init_from=str(weights))
    recipe.stage["network"] = {**recipe.stage["network"], "local_k": 4, "local_width": 8}
    trainer = Trainer(recipe, tmp_path / "local")
    trained = load_stage(weights).state_dict()
    for k, v in trained.items():
        assert torch.equal(trainer.trainee.state_dict()[k], v), k
        assert torch.equal(trainer.ema.state_dict()[k], v), k
    assert any(k.startswith("net.local_blocks.") for k in set(trainer.trainee.state_dict()) - set(trained))
    assert len(trainer.fit(progress=False)) == 10
    # A file of another stage type, a changed network, or no file: each a clear error.
    up = tmp_path / "up"
    Trainer(_recipe(data_dir, "points.upsample", steps=2), up).fit(progress=False)
    with pytest.raises(ConfigError, match="points.upsample"):
        Trainer(_recipe(data_dir, steps=2, init_from=str(up / "stage.safetensors")), tmp_path / "x")
    wide = _recipe(data_dir, steps=2, init_from=str(weights))
    wide.stage["network"] = {"width": 48, "layers": 1, "heads": 2}
    with pytest.raises(ConfigError, match="does not fit"):
        Trainer(wide, tmp_path / "y")
    with pytest.raises(CheckpointError):
        Trainer(_recipe(data_dir, steps=2, init_from=str(tmp_path / "missing.safetensors")), tmp_path / "z")
