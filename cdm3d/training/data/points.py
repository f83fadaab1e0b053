"""Point-cloud training data from the procedural world: ``points.coarse`` and ``points.select`` learn from
whole clouds, ``points.upsample`` from (coarse, more points) pairs of the same cloud."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from cdm3d.core import Conditioning, DiffusionStage, SelectorStage
from cdm3d.core.config import StrictConfig
from cdm3d.errors import InputError
from cdm3d.training.data.registry import DATASETS
from cdm3d.training.data.world import CaptionedData, load_embeddings, load_geometry


class WorldPointsConfig(StrictConfig):
    type: Literal["world.points"] = "world.points"
    split: Literal["train", "val", "test"] = "train"
    objects: int = Field(16000, ge=1)
    points: int = Field(4096, ge=2)  # points cached per object; stages draw random subsets
    embeddings: str  # path of the embeddings file (tools/embed_world.py)
    image_prob: float = Field(0.5, ge=0.0, le=1.0)
    cache_dir: str = "runs/cache"
    workers: int = Field(2, ge=1)


class PointCloudData(CaptionedData):
    """Batches for ``points.coarse``, ``points.upsample`` and ``points.select`` from clouds and embeddings in
    memory. Subclasses set ``points [M, P, 6]`` and what :class:`CaptionedData` needs."""

    stage: DiffusionStage
    points: torch.Tensor

    def _check_sizes(self) -> None:
        cfg = self.stage.config
        need = cfg.num_points + getattr(cfg, "coarse_points", 0) if self._pairs() else cfg.num_points
        if need > self.points.shape[1]:
            raise InputError(f"the stage needs {need} points per object; the data holds {self.points.shape[1]}")

    def _pairs(self) -> bool:
        """Whether the stage learns (coarse cloud -> more points) pairs: an upsampler. A first stage and
        a selector (``points.select``, which reads whole clouds) take clouds alone."""
        return self.stage.consumes is not None and not isinstance(self.stage, SelectorStage)

    def to(self, device: torch.device | str) -> PointCloudData:
        """Keep the clouds on ``device`` (a GPU): batches are then gathered and shuffled there. The random keys
        still come from the CPU generator and the shuffle is a stable sort, so a run draws the same batches
        wherever the clouds are (an unstable sort broke ties between equal keys differently on the GPU)."""
        self.points = self.points.to(device)
        return self

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, Conditioning, torch.Tensor | None]:
        """``(x0, cond, cond_input)`` for a batch of ``size`` examples (on the clouds' device, see :meth:`to`;
        the conditioning on the CPU)."""
        device = self.points.device
        idx = torch.randint(0, len(self.points), (size,), generator=generator)
        pts = self.points[idx.to(device)].float()
        order = torch.rand(size, pts.shape[1], generator=generator).to(device).argsort(dim=1, stable=True)
        pts = torch.gather(pts, 1, order[..., None].expand(-1, -1, 6))
        cfg = self.stage.config
        cond_input = None
        if not self._pairs():
            x0 = pts[:, : cfg.num_points]
        elif getattr(cfg, "anchored", False):
            cond_input = pts[:, : cfg.coarse_points]
            x0 = anchored_children(cond_input, pts[:, cfg.coarse_points :], cfg.num_points, generator)
        else:
            cond_input = pts[:, : cfg.coarse_points]
            x0 = pts[:, cfg.coarse_points : cfg.coarse_points + cfg.num_points]
        return x0, self.conditioning(idx, generator), cond_input


def anchored_children(anchors: torch.Tensor, pool: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """``[B, n, C]`` new points for an anchored upsampler: point ``j`` lies in the Voronoi cell of anchor
    ``j mod M`` within ``pool`` (a denser sample of the same surface), drawn at random without repeats where
    the cell holds enough points (an empty cell lends the anchor its nearest pool point).

    Args:
        anchors: ``[B, M, C]`` coarse points; pool: ``[B, P, C]`` other surface points.
    """
    b, m, c = anchors.shape
    p = pool.shape[1]
    per = -(-n // m)
    dist = torch.cdist(pool[..., :3], anchors[..., :3])  # [B, P, M]
    cell = dist.argmin(-1)  # the anchor of each pool point
    # Sort pool points by (cell, random key): each cell's points become a contiguous, shuffled run.
    key = cell.double() + torch.rand(b, p, generator=generator, dtype=torch.float64).to(pool.device)
    order = key.argsort(dim=-1, stable=True)
    sorted_cell = torch.gather(cell, 1, order)
    ids = torch.arange(m, device=pool.device).expand(b, m).contiguous()
    start = torch.searchsorted(sorted_cell.contiguous(), ids)
    count = torch.searchsorted(sorted_cell.contiguous(), ids, right=True) - start
    r = torch.arange(per, device=pool.device).view(1, per, 1)
    pos = start[:, None] + r % count.clamp(min=1)[:, None]  # [B, per, M]
    chosen = torch.gather(order, 1, pos.reshape(b, -1).clamp(max=p - 1))
    nearest = dist.argmin(1)  # [B, M]: each anchor's nearest pool point, for empty cells
    empty = (count == 0)[:, None].expand(b, per, m).reshape(b, -1)
    chosen = torch.where(empty, nearest.repeat(1, per), chosen)
    children = torch.gather(pool, 1, chosen[..., None].expand(-1, -1, c))
    return children[:, :n]


class WorldPointsData(PointCloudData):
    """World clouds (cached geometry) with precomputed text and image embeddings."""

    def __init__(self, config: WorldPointsConfig, stage: DiffusionStage) -> None:
        self.config = config
        self.stage = stage
        self.image_prob = config.image_prob
        self.text, self.image, self.null_text = load_embeddings(config.embeddings, config.split, config.objects)
        self.points = load_geometry(config.split, config.objects, config.points, config.cache_dir, config.workers)
        self._check_sizes()


DATASETS.register("world.points")((WorldPointsConfig, WorldPointsData))
