"""Reproduce cdm3d's shipped default weights from scratch: the small CLIP and its text prior, the point stages,
the mesh stage and the image stages, then the two cascade folders (into runs/, not over the shipped ones).

    bash tools/env.sh python tools/reproduce_default.py --dry-run   # list the steps, check every recipe
    bash tools/env.sh python tools/reproduce_default.py             # run them (about 9 hours on 2 CPU cores)
    bash tools/env.sh python tools/reproduce_default.py --ablations # also the two no-augmentation ablations
    bash tools/env.sh python tools/reproduce_default.py --instruments  # also the evaluation's classifiers

Every step writes its run folder under runs/ and is skipped once it has finished (a training run that reached
its last step), so an interrupted reproduction continues where it stopped: a training step resumes its run
from the last checkpoint (--resume). The
times are those of the shipped runs on 2 CPU cores. Training is deterministic for a seed and a thread count,
so a rerun matches the recipe, not necessarily the shipped files to the last bit.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EMB = "runs/data/world_train_emb.safetensors"
EMB_24K = "runs/data/world_train_emb24k.safetensors"
CLIP = "runs/clip/clip/clip.safetensors"


@dataclass
class Step:
    name: str
    minutes: int
    argv: list[str]  # a script under tools/ and its arguments
    result: str  # the file the step writes (its weights; a cascade folder's cascade.yaml)

    @property
    def recipe(self) -> str | None:
        return self.argv[self.argv.index("--config") + 1] if "--config" in self.argv else None

    def done(self) -> bool:
        """Whether the step has finished: a training run has reached its last step (its weights file exists
        from its first checkpoint on), any other step has written its result."""
        if self.recipe is None:
            return (ROOT / self.result).exists()
        state = ROOT / self.argv[self.argv.index("--out") + 1] / "state.pt"
        if not state.is_file():
            return False
        import torch

        from cdm3d.training.recipe import load_recipe

        last = self.argv[self.argv.index("--stop-at-step") + 1] if "--stop-at-step" in self.argv else None
        target = int(last) if last is not None else load_recipe(ROOT / self.recipe).train.steps
        return int(torch.load(state, map_location="cpu", weights_only=True)["step"]) >= target


def train(recipe: str, minutes: int, *extra: str) -> Step:
    run = f"runs/{recipe}"
    config = f"configs/train/{recipe}.yaml"
    weights = "clip.safetensors" if recipe == "clip/clip" else "stage.safetensors"
    weights = "text_prior.safetensors" if recipe == "clip/text_prior" else weights
    weights = f"{Path(recipe).name}.safetensors" if recipe.startswith("eval/") else weights
    return Step(recipe, minutes, ["train.py", "--config", config, "--out", run, "--resume", *extra], f"{run}/{weights}")


def embed(out: str, objects: int, minutes: int, *extra: str) -> Step:
    argv = ["embed_world.py", "--clip", CLIP, "--split", "train", "--objects", str(objects), *extra, "--out", out]
    return Step(Path(out).stem, minutes, argv, out)


DEFAULT_SAMPLING = [
    "coarse.scheduler=dpm++", "coarse.steps=24", "coarse.guidance_scale=2.0", "coarse.expert_guidance_scale=3.0",
    "upsample.scheduler=unipc", "upsample.steps=4", "upsample.aug_level=0.1",
    "select.candidates=8", "select.keep=2", "mesh.grid=64", "mesh.smooth=5", "mesh_select.candidates=1",
]  # fmt: skip
ASSEMBLE_DEFAULT = [
    "assemble_cascade.py", "--clip", CLIP, "--clip-image-fill", "0.75",
    "--clip-text-prior", "runs/clip/text_prior/text_prior.safetensors",
    "--stage", "coarse=runs/points/coarse/stage.safetensors",
    "--expert", "coarse=runs/points/coarse_expert/stage.safetensors",
    "--stage", "upsample=runs/points/upsample/stage.safetensors",
    "--stage", "select=runs/points/select/stage.safetensors",
    "--stage", "mesh=runs/mesh/sdf/stage.safetensors",
    "--stage", "mesh_select=runs/points/select/stage.safetensors", "--as-type", "mesh_select=mesh.select",
    *[arg for item in DEFAULT_SAMPLING for arg in ("--sampling", item)],
    "--out", "runs/default",
]  # fmt: skip
ASSEMBLE_IMAGES = [
    "assemble_cascade.py", "--clip", CLIP,
    "--stage", "base=runs/images/base/stage.safetensors", "--stage", "sr=runs/images/sr/stage.safetensors",
    "--sampling", "sr.aug_level=0.0", "--sampling", "sr.adain_fix=1.0", "--out", "runs/images",
]  # fmt: skip

STEPS = [
    train("clip/clip", 40),
    train("clip/text_prior", 13),
    embed(EMB, 16000, 5),
    embed(EMB_24K, 24000, 6, "--image-views", "1"),
    train("points/coarse_pretrain", 105, "--stop-at-step", "4500"),
    train("points/coarse_local", 85),
    train("points/coarse", 33),
    train("points/coarse_expert_pretrain", 30),
    train("points/coarse_expert_k24", 39),
    train("points/coarse_expert", 50),
    train("points/upsample", 23),
    train("points/select", 13),
    train("mesh/sdf_pretrain", 21, "--stop-at-step", "1500"),
    train("mesh/sdf", 8),
    train("images/base_pretrain", 15),
    train("images/base_continue", 13),
    train("images/base", 29),
    train("images/sr", 9),
    Step("default cascade", 1, ASSEMBLE_DEFAULT, "runs/default/cascade.yaml"),
    Step("image cascade", 1, ASSEMBLE_IMAGES, "runs/images/cascade.yaml"),
]
ABLATIONS = [train("points/upsample_noaug", 23), train("images/sr_noaug", 9)]
# The evaluation's instruments (cdm3d/weights/eval): the point and render classifiers.
INSTRUMENTS = [train("eval/point_classifier", 20), train("eval/image_classifier", 5)]


def check_recipe(path: str) -> None:
    """Resolve a recipe as ``tools/train.py --dry-run`` does: its stage (or CLIP) and its data section."""
    from cdm3d.errors import Cdm3dError, one_line
    from cdm3d.training.recipe import check_recipe as check
    from cdm3d.training.recipe import load_recipe

    try:
        check(load_recipe(ROOT / path))
    except Cdm3dError as err:
        raise SystemExit(one_line("reproduce_default", err)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="list the steps and check their recipes; run nothing")
    parser.add_argument("--ablations", action="store_true", help="also train the no-augmentation ablations")
    parser.add_argument("--instruments", action="store_true", help="also train the evaluation's classifiers")
    args = parser.parse_args(argv)
    steps = STEPS + (ABLATIONS if args.ablations else []) + (INSTRUMENTS if args.instruments else [])
    total = sum(s.minutes for s in steps)
    print(f"{len(steps)} steps, about {total // 60} h {total % 60} min on 2 CPU cores")
    for i, step in enumerate(steps, 1):
        done = step.done()
        print(f"[{i}/{len(steps)}] {step.name} (~{step.minutes} min){' done' if done else ''}: "
              f"python tools/{' '.join(step.argv)}")  # fmt: skip
        if args.dry_run:
            if step.recipe is not None:
                check_recipe(step.recipe)
            continue
        if done:
            continue
        (ROOT / step.result).parent.mkdir(parents=True, exist_ok=True)
        if subprocess.run([sys.executable, str(ROOT / "tools" / step.argv[0]), *step.argv[1:]], cwd=ROOT).returncode:
            print(f"reproduce_default: step {step.name} failed; fix it and run this script again", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
