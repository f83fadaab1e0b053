"""The evaluation's fidelity classifiers (cdm3d/eval/classifier.py) as something the trainer trains:
cross-entropy on the world's category and primary colour."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cdm3d.core.stage import split_part
from cdm3d.eval.classifier import ImageClassifier, PointClassifier
from cdm3d.training.recipe import ClassifierTraining


class ClassifierTrainee(nn.Module):
    """The trainer's view of a classifier: ``net``, :meth:`loss` on ``(inputs, categories, colours)`` and
    :meth:`save_weights`."""

    def __init__(self, config: ClassifierTraining) -> None:
        super().__init__()
        self.config = config
        cls = PointClassifier if config.kind == "points" else ImageClassifier
        self.net = cls() if config.width is None else cls(config.width)
        self.weights_file = f"{config.kind[:-1]}_classifier.safetensors"  # point_, image_

    def loss(
        self,
        inputs: torch.Tensor,
        categories: torch.Tensor,
        colors: torch.Tensor,
        generator: torch.Generator | None = None,
        part: tuple[int, int] | None = None,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        if part is not None:
            sl = split_part(len(inputs), part)
            inputs, categories, colors = inputs[sl], categories[sl], colors[sl]
        cat, col = (net or self.net)(inputs)
        return F.cross_entropy(cat, categories) + F.cross_entropy(col, colors)

    def save_weights(self, path: str | Path) -> None:
        self.net.save(path)
