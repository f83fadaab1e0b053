"""The render classifier (the image stages' second fidelity instrument) reads the world's renders."""

from __future__ import annotations

import pytest
import torch

from cdm3d.data.vocab import CATEGORIES, COLORS
from cdm3d.data.world import World
from cdm3d.errors import CheckpointError
from cdm3d.eval.classifier import ImageClassifier, PointClassifier
from cdm3d.paths import IMAGE_CLASSIFIER

SHIPPED = IMAGE_CLASSIFIER


def test_shipped_render_classifier_reads_held_out_renders_at_64_and_32_px() -> None:
    model = ImageClassifier.load(SHIPPED)
    world, n = World("val"), 52
    pixels = torch.stack([world[i].render(size=64).permute(2, 0, 1) for i in range(n)])
    cats = torch.tensor([list(CATEGORIES).index(world.labels(i).category) for i in range(n)])
    cols = torch.tensor([list(COLORS).index(world.labels(i).colors[0]) for i in range(n)])
    for size in (64, 32):
        x = torch.nn.functional.interpolate(pixels, size=size, mode="bilinear", antialias=True)
        pc, pk = model.predict(x)
        assert (pc == cats).float().mean() >= 0.85, size
        assert (pk == cols).float().mean() >= 0.85, size
    # Noise is not a render: its predictions do not follow the labels.
    pc, _ = model.predict(torch.rand(n, 3, 64, 64, generator=torch.Generator().manual_seed(0)))
    assert (pc == cats).float().mean() < 0.4


def test_image_classifier_round_trip_and_wrong_files(tmp_path) -> None:
    model = ImageClassifier()
    model.save(tmp_path / "c.safetensors")
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(ImageClassifier.load(tmp_path / "c.safetensors")(x), model.eval()(x))
    PointClassifier().save(tmp_path / "p.safetensors")
    with pytest.raises(CheckpointError, match="image classifier"):
        ImageClassifier.load(tmp_path / "p.safetensors")
    with pytest.raises(CheckpointError):
        ImageClassifier.load(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("kind", ["points", "images"])
def test_both_classifiers_learn_their_training_objects_through_the_trainer(kind, tmp_path) -> None:
    from cdm3d.eval.classifier import world_labels
    from cdm3d.training.trainer import Trainer, TrainRecipe

    n = 26
    data = {"type": f"world.labelled_{kind if kind == 'points' else 'renders'}", "objects": n, "workers": 1}
    data |= {"points": 256, "read": 128} if kind == "points" else {"size": 32}
    recipe = TrainRecipe.model_validate(
        {
            "classifier": {"kind": kind},
            "data": data | {"cache_dir": str(tmp_path / "cache")},
            "train": {"steps": 100, "batch_size": 16, "lr": 2e-3, "final_lr": 0.0, "warmup": 30, "ema_decay": 0.0},
        }
    )
    trainer = Trainer(recipe, tmp_path / "run")
    trainer.fit(progress=False)
    cls = PointClassifier if kind == "points" else ImageClassifier
    model = cls.load(tmp_path / "run" / f"{kind[:-1]}_classifier.safetensors")
    x = trainer.data.points.float() if kind == "points" else trainer.data.renders.float() / 255
    pc, pk = model.predict(x)
    cats, cols = world_labels("train", n)
    assert (pc == cats).float().mean() > 0.5 and (pk == cols).float().mean() > 0.5
