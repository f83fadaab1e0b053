"""Real data: point-cloud shards made by ``tools/prepare_dataset.py``, conditioned on the CLIP embeddings
of their captions."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch

from cdm3d.core import Conditioning, DiffusionStage
from cdm3d.core.config import StrictConfig
from cdm3d.errors import InputError
from cdm3d.training.data.points import PointCloudData
from cdm3d.training.data.registry import DATASETS


class ShardPointsConfig(StrictConfig):
    """Real data: shards from tools/prepare_dataset.py, conditioned on their captions' CLIP embeddings."""

    type: Literal["shards.points"] = "shards.points"
    path: str  # folder of shard-*.npz files
    # The CLIP whose text embeddings the stage is trained on: a cdm3d CLIP file, or a cascade folder (its CLIP:
    # a converted Point-E folder names OpenAI's ViT-L/14).
    clip: str
    # Read one shard per batch instead of every shard at the start (data larger than memory).
    stream: bool = False


class ShardPointsData(PointCloudData):
    """Shard clouds with text embeddings of their captions (no image slot).

    Unreadable shards (at the start, or mid-epoch when streaming) and records
    with non-finite points are skipped and counted; :meth:`report` lists them and
    the trainer writes that list to ``data_report.json`` at the end of the run.
    Training stops with a clear error only when no shard is left.
    """

    def __init__(self, config: ShardPointsConfig, stage: DiffusionStage) -> None:
        from cdm3d.core import ClipEncoder, load_cascade_clip
        from cdm3d.data.shards import shard_paths

        self.config, self.stage, self.image_prob, self.image = config, stage, 0.0, None
        self.paths = shard_paths(config.path)
        self.clip = load_cascade_clip(config.clip) if Path(config.clip).is_dir() else ClipEncoder.load(config.clip)
        self.null_text = self.clip.null_text().float()
        self.skipped: dict[str, str] = {}
        self.records_skipped = 0
        self._text_cache: dict[Path, torch.Tensor] = {}
        if config.stream:
            first = torch.Generator().manual_seed(0)
            while not self._load(self._pick(first)):
                pass
            return
        loaded = [got for got in map(self._read, self.paths) if got is not None]
        if not loaded:
            raise InputError(f"no shard in {config.path} is readable: {self._skipped_summary()}")
        sizes = {pts.shape[1] for pts, _ in loaded}
        if len(sizes) != 1:
            raise InputError(
                f"shards in {config.path} mix point counts {sorted(sizes)}; prepare them with one --points"
            )
        self.points = torch.cat([pts for pts, _ in loaded])
        self.text = torch.cat([text for _, text in loaded])
        self._check_sizes()

    def _skip(self, path: Path, reason: str) -> None:
        import warnings

        if str(path) not in self.skipped:
            self.skipped[str(path)] = reason
            warnings.warn(f"skipping unreadable shard {path}: {reason}", stacklevel=3)

    def _skipped_summary(self) -> str:
        return "; ".join(f"{p}: {r}" for p, r in self.skipped.items())

    def _read(self, path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(points [S, N, 6] float16, text [S, 1, D] float16)`` of one shard, or None when unreadable."""
        from cdm3d.data.shards import read_shard

        try:
            data = read_shard(path)
            xyz, rgb = np.asarray(data["xyz"], np.float32), np.asarray(data["rgb"], np.float32) / 255
            if xyz.ndim != 3 or xyz.shape[-1] != 3 or rgb.shape != xyz.shape or len(data["caption"]) != len(xyz):
                raise InputError(f"arrays of inconsistent shapes (xyz {xyz.shape}, rgb {rgb.shape})")
        except (InputError, ValueError, KeyError) as err:
            self._skip(path, str(err))
            return None
        good = np.isfinite(xyz).all(axis=(1, 2))
        self.records_skipped += int((~good).sum()) if path not in self._text_cache else 0
        if not good.any():
            self._skip(path, "no record with finite points")
            return None
        points = torch.from_numpy(np.concatenate([xyz[good], rgb[good] * 2 - 1], 2).astype(np.float16))
        if path not in self._text_cache:
            captions = [str(c) for c, ok in zip(data["caption"], good) if ok]
            with torch.no_grad():
                text = torch.cat([self.clip.encode_text(captions[i : i + 256]) for i in range(0, len(captions), 256)])
            self._text_cache[path] = text[:, None].half()
        return points, self._text_cache[path]

    def _pick(self, generator: torch.Generator) -> Path:
        alive = [p for p in self.paths if str(p) not in self.skipped]
        if not alive:
            from cdm3d.errors import TrainingError

            raise TrainingError(f"every shard in {self.config.path} is unreadable: {self._skipped_summary()}")
        return alive[int(torch.randint(0, len(alive), (1,), generator=generator))]

    def _load(self, path: Path) -> bool:
        got = self._read(path)
        if got is None:
            return False
        self.points, self.text = got
        try:
            self._check_sizes()
        except InputError as err:
            self._skip(path, str(err))
            return False
        return True

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, Conditioning, torch.Tensor | None]:
        if self.config.stream:  # one shard per batch, read now: a file that broke mid-epoch is skipped
            while not self._load(self._pick(generator)):
                pass
        return super().batch(size, generator)

    def report(self) -> dict[str, object]:
        """What was skipped so far: unreadable shard files (with reasons) and non-finite records."""
        return {
            "shards": len(self.paths),
            "shards_skipped": len(self.skipped),
            "skipped": dict(self.skipped),
            "records_skipped": self.records_skipped,
        }


DATASETS.register("shards.points")((ShardPointsConfig, ShardPointsData))
