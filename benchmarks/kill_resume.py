"""Kill-and-resume benchmark: SIGKILL training at random moments, resume, compare with an uninterrupted run.

    bash tools/env.sh python benchmarks/kill_resume.py --repeats 5 --out benchmarks/results/kill_resume.json

A tiny points.coarse recipe (tiny CLIP embeddings, 1000 steps, a checkpoint every
5) is trained once without interruption, then ``--repeats`` times under fire:
``tools/train.py --resume`` is started, killed with SIGKILL after a random delay,
and started again, until a run finishes by itself. After every kill the
checkpoint on disk must load (never a half-written file). Every other kill is
aimed at a checkpoint being written (the moment its temporary file appears). At
the end the EMA weights (stage.safetensors), the weights, the optimizer state,
the random generator and the logged losses must equal the uninterrupted run's
bit for bit (CPU, one thread, fixed seed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def prepare(work: Path, steps: int = 60, objects: int = 24) -> Path:
    """Embeddings of a few world objects and a tiny recipe in ``work``; returns the recipe path."""
    from cdm3d.core import ClipEncoder
    from cdm3d.training.data.world import build_world_embeddings

    work.mkdir(parents=True, exist_ok=True)
    emb = work / "emb.safetensors"
    if not emb.exists():
        clip = ClipEncoder.from_config(TINY_CLIP)
        build_world_embeddings(clip, "train", objects, emb, text_variants=2, image_views=1)
    recipe = {
        "stage": {
            "type": "points.coarse",
            "embed_dim": 16,
            "num_points": 64,
            "network": {"width": 32, "layers": 2, "heads": 2},
        },
        "data": {
            "type": "world.points",
            "objects": objects,
            "points": 128,
            "workers": 1,
            "embeddings": str(emb),
            "cache_dir": str(work / "cache"),
        },
        "train": {"steps": steps, "batch_size": 8, "lr": 2e-3, "warmup": 5, "checkpoint_every": 5, "log_every": 1},
    }
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _command(recipe: Path, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "tools" / "train.py"), "--config", str(recipe), "--out", str(out)]


def _env() -> dict[str, str]:
    # One thread: the interrupted and the uninterrupted runs must do the same arithmetic.
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def train_straight(recipe: Path, out: Path) -> None:
    subprocess.run([*_command(recipe, out), "--no-progress"], check=True, env=_env(), capture_output=True)


def _checkpoint_loads(out: Path) -> bool:
    state = out / "state.pt"
    if not state.exists():
        return True  # killed before the first checkpoint: a fresh start, nothing corrupt
    torch.load(state, map_location="cpu", weights_only=True)  # raises on a half-written file
    return True


def train_under_fire(
    recipe: Path,
    out: Path,
    rng: random.Random,
    delay: tuple[float, float],
    max_kills: int = 8,
    kill_at_steps: list[int] | None = None,
) -> dict[str, object]:
    """Start, SIGKILL, resume; until a run ends by itself. Returns what happened.

    Kills come after a random delay, or (``kill_at_steps``) as soon as the log
    shows each of those steps, which puts them inside training on any machine.
    """
    kills, moments = 0, []
    targets = list(kill_at_steps or [])
    while True:
        proc = subprocess.Popen(
            [*_command(recipe, out), "--resume", "--no-progress"],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        during_save = False
        if kill_at_steps is not None:
            fired = bool(targets) and _wait_for_step(proc, out, targets[0])
            wait = None
        elif kills % 2 == 1 and kills < max_kills:  # every other kill aims at a checkpoint being written
            wait = rng.uniform(*delay)
            fired = _wait_for_save(proc, out, wait)
            during_save = fired
        else:
            wait = rng.uniform(*delay) if kills < max_kills else None
            try:
                proc.wait(timeout=wait)
                fired = False
            except subprocess.TimeoutExpired:
                fired = True
        if fired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills += 1
            if targets:
                targets.pop(0)
            leftovers = [p.name for p in out.glob(".*.tmp")]
            moments.append(
                {
                    "after_s": None if wait is None else round(wait, 2),
                    "aimed_at_a_save": during_save,
                    "temporary_files_left": leftovers,
                    "checkpoint_step": _step_of(out),
                }
            )
            _checkpoint_loads(out)
            continue
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError(f"resumed training failed: {err.decode(errors='replace')[-2000:]}")
        return {"kills": kills, "moments": moments}


def _wait_for_save(proc: subprocess.Popen, out: Path, after: float) -> bool:
    """After ``after`` seconds, poll until a checkpoint's temporary file appears (True) or the run ends."""
    time.sleep(after)
    while proc.poll() is None:
        if any(out.glob(".*.tmp")):
            return True
        time.sleep(0.0005)
    return False


def _wait_for_step(proc: subprocess.Popen, out: Path, step: int) -> bool:
    """Poll the run's log until it reaches ``step`` (True) or the process ends (False)."""
    log = out / "log.csv"
    while proc.poll() is None:
        try:
            rows = log.read_text().splitlines()
            last = rows[-1].split(",", 1)[0] if len(rows) > 1 else ""
            if last.isdigit() and int(last) >= step:
                return True
        except OSError:
            pass
        time.sleep(0.005)
    return False


def _step_of(out: Path) -> int | None:
    state = out / "state.pt"
    if not state.exists():
        return None
    return int(torch.load(state, map_location="cpu", weights_only=True)["step"])


def compare(a: Path, b: Path) -> dict[str, object]:
    """Bitwise comparison of two run folders' EMA weights and training states."""
    from safetensors.torch import load_file

    wa, wb = load_file(str(a / "stage.safetensors")), load_file(str(b / "stage.safetensors"))
    weights_equal = wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = torch.load(a / "state.pt", map_location="cpu", weights_only=True)
    sb = torch.load(b / "state.pt", map_location="cpu", weights_only=True)
    stage_equal = all(torch.equal(sa["stage"][k], sb["stage"][k]) for k in sa["stage"])
    state_equal = _same(sa["optimizer"], sb["optimizer"]) and torch.equal(sa["generator"], sb["generator"])
    log_a = (a / "log.csv").read_text().splitlines()
    log_b = (b / "log.csv").read_text().splitlines()
    losses_equal = [r.split(",")[:2] for r in log_a] == [r.split(",")[:2] for r in log_b]
    return {
        "step": int(sb["step"]),
        "ema_weights_identical": weights_equal,
        "weights_identical": stage_equal,
        "optimizer_and_generator_identical": state_equal,
        "logged_losses_identical": losses_equal,
    }


def _same(a: object, b: object) -> bool:
    """Deep equality of nested dicts/lists of tensors and numbers (an optimizer state)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(_same, a, b))
    return a == b


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--work", type=Path, default=Path("runs/kill_resume"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/kill_resume.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-delay", type=float, default=1.0, help="seconds before a kill, at least")
    parser.add_argument("--max-delay", type=float, default=5.0, help="seconds before a kill, at most")
    args = parser.parse_args(argv)

    import shutil

    recipe = prepare(args.work, args.steps)
    reference = args.work / "reference"
    shutil.rmtree(reference, ignore_errors=True)
    start = time.time()
    train_straight(recipe, reference)
    straight_s = time.time() - start
    rng = random.Random(args.seed)
    results = []
    for i in range(args.repeats):
        out = args.work / f"run{i}"
        shutil.rmtree(out, ignore_errors=True)
        start = time.time()
        fired = train_under_fire(recipe, out, rng, (args.min_delay, args.max_delay))
        result = {"repeat": i, **fired, "seconds": round(time.time() - start, 1), **compare(reference, out)}
        result["temporary_files_at_end"] = [p.name for p in out.glob(".*.tmp")]
        print(json.dumps({k: v for k, v in result.items() if k != "moments"}))
        results.append(result)
    summary = {
        "what": "SIGKILL at random moments during tools/train.py, then --resume; compared with one uninterrupted run",
        "command": "python benchmarks/kill_resume.py --repeats 5",
        "recipe": yaml.safe_load(recipe.read_text()),
        "uninterrupted_seconds": round(straight_s, 1),
        "repeats": args.repeats,
        "total_kills": sum(r["kills"] for r in results),
        "kills_aimed_at_saves": sum(m["aimed_at_a_save"] for r in results for m in r["moments"]),
        "kills_inside_training": sum(
            m["checkpoint_step"] is not None and m["checkpoint_step"] < args.steps
            for r in results
            for m in r["moments"]
        ),
        "all_identical": all(
            r["ema_weights_identical"]
            and r["weights_identical"]
            and r["optimizer_and_generator_identical"]
            and r["logged_losses_identical"]
            and not r["temporary_files_at_end"]
            for r in results
        ),
        "runs": results,
        "torch": torch.__version__,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    from cdm3d.core.checkpoint import write_text

    write_text(args.out, json.dumps(summary, indent=2))
    print(f"{summary['total_kills']} kills over {args.repeats} repeats; identical: {summary['all_identical']}")
    return 0 if summary["all_identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
