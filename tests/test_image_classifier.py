"""The render classifier (the image stages' second fidelity instrument) reads the world's renders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cdm3d.data.vocab import CATEGORIES, COLORS
from cdm3d.data.world import World
from cdm3d.errors import CheckpointError
from cdm3d.eval.classifier import ImageClassifier, PointClassifier

SHIPPED = Path(__file__).resolve().parents[1] / "benchmarks" / "assets" / "image_classifier.safetensors"


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


def test_both_classifiers_learn_their_training_objects() -> None:
    from cdm3d.eval.classifier import train_classifier, train_image_classifier, world_labels

    world, n = World("train"), 26
    cats, cols = world_labels("train", n)
    renders = torch.stack([(world[i].render(size=32).permute(2, 0, 1) * 255).round().to(torch.uint8) for i in range(n)])
    images = train_image_classifier(renders, cats, cols, steps=100, batch=16, progress=False)
    pc, pk = images.predict(renders.float() / 255)
    assert (pc == cats).float().mean() > 0.5 and (pk == cols).float().mean() > 0.5
    clouds = []
    for i in range(n):
        xyz, rgb = world[i].points(256, seed=0)
        clouds.append(torch.cat([torch.from_numpy(xyz), torch.from_numpy(rgb) * 2 - 1], -1).float())
    points = train_classifier(torch.stack(clouds), cats, cols, steps=100, batch=16, progress=False)
    pc, pk = points.predict(torch.stack(clouds))
    assert (pc == cats).float().mean() > 0.5 and (pk == cols).float().mean() > 0.5
