"""What every world data source shares: the objects' surface clouds and the CLIP embeddings of their
captions and views, and the conditioning of a batch drawn from those.

Two caches, built once:

* geometry: ``[M, P, 6]`` float16 points (xyz, rgb in [-1, 1]) of the first ``M``
  objects of a split; needs trimesh and manifold3d, not CLIP;
* embeddings (a safetensors file): ``text [M, V, D]`` CLIP embeddings of ``V``
  caption variants, ``image [M, R, D]`` of ``R`` rendered views, and
  ``null_text [D]``; needs the CLIP, not the geometry.

Each example of a batch is conditioned on text or on an image (chosen at random,
``image_prob``), the other slot holding its null embedding.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from cdm3d.core import Conditioning, TrainableStage
from cdm3d.core.checkpoint import load_tensors, save_tensors
from cdm3d.errors import InputError
from cdm3d.training.data.cache import build_cache, cached_objects


def _object_points(job: tuple[str, int, int]) -> np.ndarray:
    from cdm3d.data.world import World

    split, index, points = job
    xyz, rgb = World(split)[index].points(points)
    return np.concatenate([xyz, rgb * 2 - 1], axis=1).astype(np.float16)


def build_geometry(split: str, objects: int, points: int, path: Path, workers: int = 2) -> torch.Tensor:
    jobs = [(split, i, points) for i in range(objects)]
    return build_cache(_object_points, jobs, (points, 6), np.float16, path, workers, "geometry", 64)


def load_geometry(split: str, objects: int, points: int, cache_dir: str, workers: int) -> torch.Tensor:
    """``[objects, points, 6]`` float16 surface clouds, from a cache (any covering one) or built and cached."""
    found = cached_objects(cache_dir, f"world-{split}", objects, (points, 6))
    if found is not None:
        return found
    return build_geometry(split, objects, points, Path(cache_dir) / f"world-{split}-{objects}x{points}.npy", workers)


def build_world_embeddings(
    clip, split: str, objects: int, path: str | Path, text_variants: int = 8, image_views: int = 4, seed: int = 0
) -> None:
    """CLIP embeddings of caption variants and rendered views of the first ``objects`` objects."""
    from tqdm.auto import tqdm

    from cdm3d.data.world import World
    from cdm3d.render.camera import random_camera

    world, rng = World(split), random.Random(seed)
    text = torch.empty(objects, text_variants, clip.embed_dim, dtype=torch.float16)
    image = torch.empty(objects, image_views, clip.embed_dim, dtype=torch.float16)
    chunk = 64
    for start in tqdm(range(0, objects, chunk), desc="embeddings"):
        ids = range(start, min(objects, start + chunk))
        captions = [world.caption(i, v) for i in ids for v in range(text_variants)]
        text[ids.start : ids.stop] = clip.encode_text(captions).view(len(ids), text_variants, -1).half()
        if image_views:
            views = []
            for i in ids:
                obj = world[i]
                views += [
                    obj.render(random_camera(rng), size=clip.image_size).permute(2, 0, 1) for _ in range(image_views)
                ]
            image[ids.start : ids.stop] = clip.encode_image(torch.stack(views)).view(len(ids), image_views, -1).half()
    tensors = {"text": text, "null_text": clip.null_text().half()}
    if image_views:
        tensors["image"] = image
    save_tensors(path, tensors, {"cdm3d.kind": "embeddings", "split": split, "clip": clip.name})


def load_embeddings(path: str, split: str, objects: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """``(text [M, V, D], image [M, R, D] | None, null_text [D])`` of the first ``objects`` objects of a split."""
    tensors, meta = load_tensors(path)
    if meta.get("cdm3d.kind") != "embeddings" or "text" not in tensors or "null_text" not in tensors:
        raise InputError(f"{path} is not a cdm3d embeddings file (make one with tools/embed_world.py)")
    if meta.get("split") != split:
        raise InputError(f"embeddings {path} are of split {meta.get('split')!r}, not {split!r}")
    text, image = tensors["text"], tensors.get("image")
    if len(text) < objects:
        raise InputError(f"embeddings {path} cover {len(text)} objects, fewer than {objects}")
    return text[:objects], None if image is None else image[:objects], tensors["null_text"].float()


def _render(job: tuple[str, int, int]) -> np.ndarray:
    from cdm3d.data.world import World

    split, index, size = job
    img = World(split)[index].render(size=size)
    return (img.permute(2, 0, 1).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def build_renders(split: str, objects: int, size: int, path: Path, workers: int = 2) -> torch.Tensor:
    jobs = [(split, i, size) for i in range(objects)]
    return build_cache(_render, jobs, (3, size, size), np.uint8, path, workers, "renders")


def load_renders(split: str, objects: int, size: int, cache_dir: str, workers: int) -> torch.Tensor:
    """``[objects, 3, size, size]`` uint8 renders, from a cache (any covering one) or rendered and cached."""
    found = cached_objects(cache_dir, f"world-renders-{split}", objects, (3, size, size), tag=size)
    if found is not None:
        return found
    path = Path(cache_dir) / f"world-renders-{split}-{objects}x{size}.npy"
    return build_renders(split, objects, size, path, workers)


class CaptionedData:
    """A data source whose examples are world objects conditioned on their captions' (or views') CLIP
    embeddings. Subclasses set ``stage``, ``text [M, V, D]``, ``image [M, R, D] | None``, ``null_text [D]``
    and ``image_prob``."""

    stage: TrainableStage
    text: torch.Tensor
    image: torch.Tensor | None
    null_text: torch.Tensor
    image_prob: float

    def conditioning(self, idx: torch.Tensor, generator: torch.Generator) -> Conditioning:
        """The conditioning of examples ``idx``: a random caption variant, or (``image_prob``) a random view."""
        size, cfg = len(idx), self.stage.config
        text = self.text[idx, torch.randint(0, self.text.shape[1], (size,), generator=generator)].float()
        use_image = torch.rand(size, generator=generator) < self.image_prob
        embeddings = {"text": text}
        null = {"text": self.null_text, "image": torch.zeros_like(self.null_text)}
        if self.image is not None and "image" in cfg.cond_keys:
            image = self.image[idx, torch.randint(0, self.image.shape[1], (size,), generator=generator)].float()
            embeddings["text"] = torch.where(use_image[:, None], self.null_text.expand(size, -1), text)
            embeddings["image"] = torch.where(use_image[:, None], image, torch.zeros_like(image))
        return Conditioning(embeddings, null)
