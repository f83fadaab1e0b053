"""A point-cloud classifier of the world's category and (primary) colour, to measure prompt fidelity.

A PointNet (shared per-point MLP, max and mean pooling, two heads) trained on
world clouds of 1024 points with jitter, so it also reads generated clouds.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cdm3d.core.checkpoint import load_state_into, load_tensors, save_tensors
from cdm3d.data.vocab import CATEGORIES, COLORS
from cdm3d.errors import CheckpointError

CLASSIFIER_POINTS = 1024


class PointClassifier(nn.Module):
    """``x [B, N, 6]`` (xyz, rgb in [-1, 1]) -> (category logits ``[B, C]``, colour logits ``[B, K]``)."""

    def __init__(self, width: int = 128, categories: int = len(CATEGORIES), colors: int = len(COLORS)) -> None:
        super().__init__()
        self.width = width
        self.point_mlp = nn.Sequential(
            nn.Linear(6, width // 2),
            nn.GELU(),
            nn.Linear(width // 2, width),
            nn.GELU(),
            nn.Linear(width, 2 * width),
            nn.GELU(),
            nn.Linear(2 * width, 4 * width),
        )
        self.head = nn.Sequential(nn.LayerNorm(8 * width), nn.Linear(8 * width, 2 * width), nn.GELU())
        self.category = nn.Linear(2 * width, categories)
        self.color = nn.Linear(2 * width, colors)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.point_mlp(x)
        h = self.head(torch.cat([h.amax(1), h.mean(1)], -1))
        return self.category(h), self.color(h)

    @torch.no_grad()
    def predict(
        self, x: torch.Tensor, points: int = CLASSIFIER_POINTS, seed: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Category and colour indices of clouds ``x [B, N, 6]`` (random subsets of ``points``)."""
        self.eval()
        if x.shape[1] > points:
            g = torch.Generator().manual_seed(seed)
            idx = torch.rand(x.shape[0], x.shape[1], generator=g).argsort(1)[:, :points].to(x.device)
            x = torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))
        cat, col = self(x.float())
        return cat.argmax(-1), col.argmax(-1)

    def save(self, path: str | Path) -> None:
        meta = {"categories": list(CATEGORIES), "colors": list(COLORS), "width": self.width}
        save_tensors(path, self.state_dict(), {"cdm3d.kind": "classifier", "cdm3d.config": json.dumps(meta)})

    @classmethod
    def load(cls, path: str | Path) -> PointClassifier:
        tensors, meta = load_tensors(path)
        if meta.get("cdm3d.kind") != "classifier":
            raise CheckpointError(f"{path} is not a cdm3d point classifier")
        cfg = json.loads(meta["cdm3d.config"])
        if cfg["categories"] != list(CATEGORIES) or cfg["colors"] != list(COLORS):
            raise CheckpointError(f"{path} was trained on another world vocabulary")
        model = cls(cfg["width"])
        load_state_into(model, tensors, path)
        return model.eval()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Jitter positions and colours, as a generated cloud would be."""
    scale = torch.rand(x.shape[0], 1, 1, generator=generator) * 0.03
    noise = torch.randn(x.shape, generator=generator) * scale
    return x + noise.to(x.device)


def train_classifier(
    points: torch.Tensor,
    categories: torch.Tensor,
    colors: torch.Tensor,
    steps: int = 3000,
    batch: int = 64,
    lr: float = 1e-3,
    device: str = "cpu",
    seed: int = 0,
    progress: bool = True,
) -> PointClassifier:
    """Train on clouds ``points [M, P, 6]`` with label indices ``[M]``."""
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = PointClassifier().to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for _ in tqdm(range(steps), desc="classifier", disable=not progress):
        idx = torch.randint(0, len(points), (batch,), generator=g)
        sub = torch.rand(batch, points.shape[1], generator=g).argsort(1)[:, :CLASSIFIER_POINTS]
        x = torch.gather(points[idx].float(), 1, sub[..., None].expand(-1, -1, 6))
        x = augment(x, g).to(device)
        cat, col = model(x)
        loss = F.cross_entropy(cat, categories[idx].to(device)) + F.cross_entropy(col, colors[idx].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval().cpu()


def world_labels(split: str, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Category and primary-colour indices of the first ``count`` objects of a split."""
    from cdm3d.data.world import World

    world = World(split)
    cats, cols = list(CATEGORIES), list(COLORS)
    labels = [world.labels(i) for i in range(count)]
    return (
        torch.tensor([cats.index(x.category) for x in labels]),
        torch.tensor([cols.index(x.colors[0]) for x in labels]),
    )
