"""The trainer: one loop for everything cdm3d trains (every trainable stage, the CLIP and its text prior, the
evaluation's classifiers).

EMA weights, bf16 autocast on CUDA, gradient clipping, periodic atomic
checkpoints, exact ``--resume`` (model, EMA, optimizer, step and the random
generator all restored), CSV and TensorBoard logs, the resolved recipe saved in
the run folder, and data parallelism through ``torchrun`` (DDP; gloo on CPU).

What it trains (a *trainee*) is a module with ``net`` (what data parallelism wraps) and
``loss(*batch, generator=, part=, net=)``, where ``batch`` is what the recipe's data source draws: a
:class:`~cdm3d.core.TrainableStage` (a batch ``(x0, cond, cond_input)``), a
:class:`~cdm3d.training.clip.ClipTrainee` (``(pixels, tokens)``) or a
:class:`~cdm3d.training.classifier.ClassifierTrainee` (``(inputs, categories, colours)``).

A run folder holds::

    recipe.json        the resolved recipe
    state.pt           training state (weights, EMA, optimizer, step, RNG); torch.load(weights_only=True)
    stage.safetensors  EMA weights with the stage config inside: the inference weights
                       (a CLIP run: clip.safetensors or text_prior.safetensors; a classifier run:
                       point_classifier.safetensors or image_classifier.safetensors)
    log.csv            step, loss, learning rate, seconds
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cdm3d.core import TrainableStage
from cdm3d.core.checkpoint import atomic_path, config_from_metadata, load_state_into, load_tensors, write_text
from cdm3d.core.config import validate
from cdm3d.core.stage_io import build_stage, save_stage
from cdm3d.errors import CheckpointError, ConfigError, StorageError, TrainingError
from cdm3d.training.data import DATASETS, load_builtin
from cdm3d.training.recipe import TrainRecipe, TrainSettings, load_recipe, lr_at

__all__ = ["STATE_FILE", "TrainRecipe", "TrainSettings", "Trainer", "load_recipe", "lr_at", "warm_start"]

STATE_FILE = "state.pt"
STAGE_WEIGHTS = "stage.safetensors"


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def build_trainee(recipe: TrainRecipe) -> nn.Module:
    """What the recipe trains: its stage, its CLIP, or its classifier."""
    if recipe.clip is not None:
        from cdm3d.training.clip import ClipTrainee

        return ClipTrainee(recipe.clip, seed=recipe.train.seed)
    if recipe.classifier is not None:
        from cdm3d.training.classifier import ClassifierTrainee

        return ClassifierTrainee(recipe.classifier)
    stage = build_stage(recipe.stage, "recipe stage")
    if not isinstance(stage, TrainableStage):
        raise ConfigError(f"stage type {recipe.stage['type']!r} has nothing to train")
    return stage


def weights_file(trainee: nn.Module) -> str:
    """The name of a run's inference weights file."""
    return STAGE_WEIGHTS if isinstance(trainee, TrainableStage) else trainee.weights_file


def save_weights(trainee: nn.Module, path: Path) -> None:
    """A trainee's inference weights: a stage file (config inside), or the trainee's own format."""
    if isinstance(trainee, TrainableStage):
        save_stage(trainee, path)
    else:
        trainee.save_weights(path)


def param_groups(trainee: nn.Module, s: TrainSettings) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: weight decay on every trained parameter, or (``decay_all`` off)
    on weight matrices only."""
    params = [(n, p) for n, p in trainee.named_parameters() if p.requires_grad]
    if s.decay_all:
        return [{"params": [p for _, p in params], "weight_decay": s.weight_decay}]

    def decayed(name: str, p: torch.Tensor) -> bool:
        return p.ndim >= 2 and "embedding" not in name

    return [
        {"params": [p for n, p in params if decayed(n, p)], "weight_decay": s.weight_decay},
        {"params": [p for n, p in params if not decayed(n, p)], "weight_decay": 0.0},
    ]


class Trainer:
    """Trains what ``recipe`` names (a stage or a CLIP) on ``recipe.data`` into the run folder ``out``."""

    def __init__(self, recipe: TrainRecipe, out: str | Path, device: str | torch.device = "cpu") -> None:
        self.recipe = recipe
        self.out = Path(out)
        self.device = torch.device(device)
        self.rank, self.world = _dist()
        torch.manual_seed(recipe.train.seed)
        self.trainee = build_trainee(recipe)
        self.weights_file = weights_file(self.trainee)
        self.data = _data_source(recipe, self.trainee)
        if self.device.type == "cuda" and hasattr(self.data, "to"):
            self.data.to(self.device)  # batches gathered on the GPU (same random draws as on the CPU)
        if recipe.train.init_from is not None:
            warm_start(self.trainee, recipe.train.init_from)
        self.trainee.to(self.device).train()
        self.ema = copy.deepcopy(self.trainee).eval().requires_grad_(False)
        self.model: nn.Module = self.trainee.net
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.trainee.net, device_ids=ids)
        s = recipe.train
        self.opt = torch.optim.AdamW(param_groups(self.trainee, s), lr=s.lr, betas=tuple(s.betas))
        self.generator = torch.Generator().manual_seed(s.seed)
        self.step = 0
        self.bad_steps = 0
        # The step count the learning-rate schedule decays over; kept when a resumed run trains longer.
        self.lr_horizon = s.steps

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "stage": self.trainee.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.opt.state_dict(),
            "step": torch.tensor(self.step),
            "generator": self.generator.get_state(),
            "recipe": self.recipe.model_dump_json(),
            "lr_horizon": torch.tensor(self.lr_horizon),
        }

    def load_state(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            saved_recipe = json.loads(state["recipe"])
        except Exception as err:
            raise TrainingError(f"cannot resume: {path} is unreadable ({type(err).__name__}: {err})") from None
        # Through the recipe's own validation, so fields added since it was saved take their defaults (a recipe of
        # another format stays as it is, and is refused below).
        with contextlib.suppress(Exception):
            saved_recipe = json.loads(TrainRecipe.model_validate(saved_recipe).model_dump_json())
        if _comparable(saved_recipe) != _comparable(json.loads(self.recipe.model_dump_json())):
            raise TrainingError(f"cannot resume: {path} was written by a different recipe; use a new run folder")
        try:
            self.trainee.load_state_dict(state["stage"])
            self.ema.load_state_dict(state["ema"])
            self.opt.load_state_dict(state["optimizer"])
            self.step = int(state["step"])
            self.generator.set_state(state["generator"])
            self.lr_horizon = int(state.get("lr_horizon", saved_recipe["train"]["steps"]))
        except Exception as err:
            raise TrainingError(f"cannot resume: {path} is damaged ({type(err).__name__}: {err})") from None

    def save(self) -> None:
        """Checkpoint atomically: a crash mid-save leaves the previous checkpoint intact."""
        if self.rank != 0:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            # Both files are written in full to temporary files first (a failure leaves both old ones),
            # then renamed weights first: a kill between the renames leaves an older state, whose resumed
            # run recomputes the same weights; never a final state beside stale weights.
            state_path, weights_path = self.out / STATE_FILE, self.out / self.weights_file
            with atomic_path(state_path) as state_tmp, atomic_path(weights_path) as weights_tmp:
                save_weights(self.ema, weights_tmp)
                torch.save(self.state_dict(), state_tmp)
        except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError
            if isinstance(err, RuntimeError) and "write" not in str(err).lower() and "file" not in str(err).lower():
                raise
            raise TrainingError(
                f"could not save the checkpoint of step {self.step} in {self.out} ({err}); the previous "
                "checkpoint is intact: free space (or fix the folder) and continue with --resume"
            ) from err

    # -- one step ---------------------------------------------------------------------------
    def _update_ema(self) -> None:
        decay = min(self.recipe.train.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.trainee.parameters()), 1 - decay)

    def train_step(self) -> float | None:
        s = self.recipe.train
        batch = _to(self.data.batch(s.batch_size, self.generator), self.device)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(self.step, s, self.lr_horizon)
        autocast = torch.autocast("cuda", torch.bfloat16, enabled=s.amp and self.device.type == "cuda")
        part = (self.rank, self.world) if self.world > 1 else None
        with autocast:
            # Through the DDP wrapper, so its gradient hooks run.
            loss = self.trainee.loss(*batch, generator=self.generator, part=part, net=self.model)
        self.opt.zero_grad(set_to_none=True)
        finite = torch.isfinite(loss.detach()).float()
        if self.world > 1:  # every process skips, or none does: they must stay in step
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        if not bool(finite):
            return self._bad_step("non-finite loss")
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.trainee.parameters(), s.grad_clip)
        if not torch.isfinite(norm):  # a finite loss can still have non-finite gradients
            self.opt.zero_grad(set_to_none=True)
            return self._bad_step("non-finite gradients")
        self.bad_steps = 0
        self.opt.step()
        self._update_ema()
        self.step += 1
        return loss.item()

    def _bad_step(self, what: str) -> None:
        """Skip this step (no update), warn, and stop after ``max_bad_steps`` in a row."""
        self.bad_steps += 1
        warnings.warn(f"step {self.step}: {what} skipped ({self.bad_steps} in a row)", stacklevel=3)
        if self.bad_steps >= self.recipe.train.max_bad_steps:
            raise TrainingError(
                f"{self.bad_steps} non-finite losses or gradients in a row at step {self.step}; lower the learning "
                f"rate or check the data (last good checkpoint: {self.out / STATE_FILE})"
            )
        self.step += 1
        return None

    # -- the loop ---------------------------------------------------------------------------
    def fit(
        self,
        resume: bool = False,
        progress: bool = True,
        until: int | None = None,
        time_limit: float | None = None,
        fit_schedule: bool = False,
    ) -> list[float]:
        """Train to ``train.steps``; returns the losses of this call.

        ``until`` stops after that step, ``time_limit`` after that many seconds
        (with a checkpoint), as a budget guard on shared machines. With
        ``fit_schedule`` the learning-rate schedule is fitted to the time limit
        instead: from the measured speed the trainer sets the step the cosine
        decay ends at (never past ``train.steps``) and stops there, so a lent
        GPU's minutes give a fully decayed run; the step it chose is in
        ``state.pt`` (``lr_horizon``, printed by tools/train.py). Repeating the
        run with ``train.steps`` set to it gives nearly the same schedule
        without a clock (the horizon is re-estimated as the run goes, so the
        early learning rates differ slightly). Under DDP every process takes
        the earliest horizon any of them measured.
        """
        if fit_schedule and time_limit is None:
            raise TrainingError("fitting the schedule to the time needs a time limit")
        from tqdm.auto import tqdm

        s = self.recipe.train
        self._open_run(resume)
        log = _RunLog(self.out) if self.rank == 0 else None
        losses: list[float] = []
        bar = tqdm(total=s.steps, initial=self.step, desc="train", disable=not progress or self.rank != 0)
        start, first = time.time(), self.step
        try:
            while self.step < min(s.steps, until or s.steps, self.lr_horizon if fit_schedule else s.steps):
                loss = self.train_step()
                bar.update(1)
                if fit_schedule and self.step >= s.warmup + 20 and self.step % 20 == 0:
                    self._fit_horizon(time_limit, time.time() - start, self.step - first)
                if loss is not None:
                    losses.append(loss)
                    if log is not None and (self.step % s.log_every == 0 or self.step == s.steps):
                        log.write(self.step, loss, self.opt.param_groups[0]["lr"], time.time() - start)
                        bar.set_postfix(loss=f"{loss:.4f}")
                out_of_time = time_limit is not None and time.time() - start > time_limit
                done = self.step == s.steps or (fit_schedule and self.step == self.lr_horizon)
                if self.step % s.checkpoint_every == 0 or done or out_of_time:
                    self.save()
                if out_of_time:
                    break
        finally:
            bar.close()
            if log is not None:
                log.close()
            self._write_data_report()
        return losses

    def _open_run(self, resume: bool) -> None:
        """Make the run folder, clear interrupted writes, and resume its state (or refuse to overwrite it)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StorageError(f"cannot create the run folder {self.out}: {err.strerror or err}") from None
        if not os.access(self.out, os.W_OK):
            raise StorageError(f"the run folder {self.out} is not writable")
        state_path = self.out / STATE_FILE
        if self.rank == 0:  # temporary files of writes that a kill interrupted: never read, just removed
            ours = (STATE_FILE, self.weights_file, "log.csv", "recipe.json", "data_report.json")
            for stale in self.out.glob(".*.tmp"):
                if stale.name.lstrip(".").startswith(ours):
                    stale.unlink(missing_ok=True)
        if resume and state_path.exists():
            self.load_state(state_path)
        elif state_path.exists():
            raise TrainingError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        if self.rank == 0:
            write_text(self.out / "recipe.json", self.recipe.model_dump_json(indent=2))
            truncate_log(self.out / "log.csv", self.step)

    def _fit_horizon(self, time_limit: float, elapsed: float, steps_done: int) -> None:
        """End the schedule where the remaining time runs out at the speed measured so far (5% kept spare
        for the last checkpoint); the horizon only moves earlier, never past ``train.steps``."""
        left = max(0.0, 0.95 * time_limit - elapsed)
        reachable = self.step + int(left * steps_done / max(elapsed, 1e-6))
        horizon = max(self.step, min(self.lr_horizon, self.recipe.train.steps, reachable))
        if self.world > 1:  # processes that stopped at different steps would wait on each other for ever
            agreed = torch.tensor([horizon], device=self.device)
            torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
            horizon = int(agreed.item())
        self.lr_horizon = horizon

    def _write_data_report(self) -> None:
        """``data_report.json``: the files the data source skipped (unreadable, non-finite), if it counts them."""
        report = getattr(self.data, "report", None)
        if report is None or self.rank != 0:
            return
        info = report()
        write_text(self.out / "data_report.json", json.dumps(info, indent=2))
        if info.get("shards_skipped") or info.get("records_skipped"):
            warnings.warn(
                f"data: skipped {info.get('shards_skipped', 0)} unreadable files and {info.get('records_skipped', 0)} "
                f"records with non-finite points; see {self.out / 'data_report.json'}",
                stacklevel=2,
            )


class _RunLog:
    """``log.csv`` (step, loss, learning rate, seconds), and TensorBoard when it is installed."""

    def __init__(self, out: Path) -> None:
        self.file = (out / "log.csv").open("a")
        if self.file.tell() == 0:
            self.file.write("step,loss,lr,seconds\n")
        self.writer = _tensorboard(out)

    def write(self, step: int, loss: float, lr: float, seconds: float) -> None:
        self.file.write(f"{step},{loss:.6f},{lr:.3e},{seconds:.1f}\n")
        self.file.flush()
        if self.writer is not None:
            self.writer.add_scalar("loss", loss, step)
            self.writer.add_scalar("lr", lr, step)

    def close(self) -> None:
        self.file.close()
        if self.writer is not None:
            self.writer.close()


def _data_source(recipe: TrainRecipe, trainee: nn.Module) -> Any:
    """The recipe's data source, built for ``trainee``."""
    data_type = recipe.data.get("type")
    if not isinstance(data_type, str):
        raise ConfigError("the recipe's data section needs a 'type'")
    load_builtin()
    data_cfg_cls, data_cls = DATASETS.get(data_type)
    return data_cls(validate(data_cfg_cls, recipe.data, "recipe data"), trainee)


def _to(batch: tuple[Any, ...], device: torch.device) -> tuple[Any, ...]:
    """A batch's tensors (and conditionings) on ``device``; ``None`` entries stay."""
    return tuple(None if x is None else x.to(device) for x in batch)


def warm_start(stage: nn.Module, path: str | Path) -> None:
    """Initialise ``stage`` from the weights file ``path``.

    The file must hold a stage of the same type, and every tensor in it must exist in ``stage`` with the
    same shape: only additions to the network are allowed, never a changed or removed tensor.
    """
    if not isinstance(stage, TrainableStage):
        raise ConfigError("train.init_from warm-starts stages; a CLIP recipe starts from clip.init")
    tensors, meta = load_tensors(path)
    config = config_from_metadata(path, meta, "stage")
    if config.get("type") != stage.config.type:
        raise ConfigError(
            f"train.init_from: {path} holds a {config.get('type')!r} stage, the recipe trains {stage.config.type!r}"
        )
    try:
        load_state_into(stage, tensors, path, allow_missing=True)
    except CheckpointError as err:
        raise ConfigError(f"train.init_from: {err}; only added layers may differ") from None


def truncate_log(path: Path, step: int) -> None:
    """Drop ``step,...`` rows past ``step`` (logged after the checkpoint a resumed run starts from).

    A header line (one not starting with a step number) is kept; so are rows up to ``step``.
    """
    if not path.exists():
        return
    lines = path.read_text().splitlines()
    header = lines[:1] if lines and not lines[0].split(",", 1)[0].isdigit() else []
    kept = [line for line in lines if line.split(",", 1)[0].isdigit() and int(line.split(",", 1)[0]) <= step]
    write_text(path, "".join(f"{line}\n" for line in header + kept))


def _comparable(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe without the fields a resumed run may change (the step count, to train longer)."""
    return {**recipe, "train": {k: v for k, v in recipe["train"].items() if k != "steps"}}


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional (pip install cdm3d[train])
        return None
    return SummaryWriter(str(out / "tb"))


def init_distributed(device: str) -> str:
    """Join the process group when launched by torchrun; returns this process's device."""
    if "RANK" not in os.environ:
        return device
    backend = "nccl" if device.startswith("cuda") else "gloo"
    torch.distributed.init_process_group(backend)
    if device.startswith("cuda"):
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return f"cuda:{local}"
    return device
