"""Image training data for ``images.base`` and ``images.sr``: renders of world objects with their captions.

Each object is rendered once from the default camera (the objects carry their
own random yaw, so views vary) at ``size`` pixels and cached as
``{cache_dir}/world-renders-{split}-{M}x{size}.npy`` (uint8 ``[M, 3, S, S]``).
A base stage is trained on the renders resized to its size; a
super-resolution stage on renders at its size, conditioned on the same render
shrunk to its ``low_size`` and resized back up (what it sees at sampling
time). Captions come from the embeddings file the point stages use (a random
caption variant per example).

``low_res`` (optional) names a cache of other low-resolution inputs, one per object, made by
``tools/redraw_low_res.py``: each object's low-resolution render re-drawn by the trained base stage (SDEdit:
noised part of the way and denoised by the base stage, guided by one of the object's captions), so it carries
the base stage's own errors while keeping the object's layout. A fraction ``low_res_prob`` of the examples is
conditioned on it instead of the render's own low-resolution image: the super-resolution stage then learns
from inputs like those it is given at sampling time, which is what Gaussian conditioning augmentation
approximates (Ho et al. 2021).

``two_colour_weight`` (1 by default: objects drawn uniformly) draws objects of two colours that many times as
often as objects of one colour. They are a fifth of the world's objects, spread over 6 categories x 132
ordered colour pairs, and the stage must learn from the caption which part takes which colour.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from pydantic import Field

from cdm3d.core import Conditioning, DiffusionStage
from cdm3d.core.config import StrictConfig
from cdm3d.errors import InputError
from cdm3d.training.data.registry import DATASETS
from cdm3d.training.data.world import CaptionedData, load_embeddings, load_renders


class WorldImagesConfig(StrictConfig):
    type: Literal["world.images"] = "world.images"
    split: Literal["train", "val", "test"] = "train"
    objects: int = Field(8000, ge=1)
    size: int = Field(64, ge=8)  # render size cached; stages resize from it
    embeddings: str
    cache_dir: str = "runs/cache"
    workers: int = Field(2, ge=1)
    low_res: str | None = None  # a uint8 [M, 3, low_size, low_size] .npy (tools/redraw_low_res.py)
    low_res_prob: float = Field(0.5, ge=0.0, le=1.0)
    two_colour_weight: float = Field(1.0, ge=1.0)  # how much more often a two-colour object is drawn


def load_low_res(path: str, objects: int, size: int) -> torch.Tensor:
    """``[objects, 3, size, size]`` uint8 low-resolution inputs from ``path`` (see the module docstring)."""
    try:
        arr = np.load(path, allow_pickle=False, mmap_mode="r")
    except FileNotFoundError:
        raise InputError(f"data.low_res {path} does not exist (make it with tools/redraw_low_res.py)") from None
    except (OSError, ValueError) as err:
        raise InputError(f"data.low_res {path} is not a readable .npy array ({err})") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1:] != (3, size, size):
        raise InputError(
            f"data.low_res {path} holds {arr.dtype} {tuple(arr.shape)}; expected uint8 [M, 3, {size}, {size}] "
            "(the stage's low_size)"
        )
    if len(arr) < objects:
        raise InputError(f"data.low_res {path} covers {len(arr)} objects, fewer than data.objects = {objects}")
    return torch.from_numpy(np.array(arr[:objects]))  # a writable copy


@torch.no_grad()
def redraw_with_base(
    base: DiffusionStage,
    low: torch.Tensor,
    text: torch.Tensor,
    null_text: torch.Tensor,
    strengths: tuple[float, ...],
    seed: int = 0,
    batch: int = 100,
    progress: bool = True,
) -> torch.Tensor:
    """Each image of ``low`` (uint8 ``[M, 3, s, s]``, the base stage's size) re-drawn by ``base`` (SDEdit at
    ``strengths[j % len(strengths)]`` for image ``j``, the stage's other sampling settings its own), guided by
    a random one of its caption embeddings ``text [M, V, D]``; uint8 ``[M, 3, s, s]``."""
    from tqdm.auto import tqdm

    if low.shape[-1] != base.config.size:
        raise InputError(f"low-resolution images of {low.shape[-1]} px; the base stage draws {base.config.size} px")
    generator = torch.Generator().manual_seed(seed)
    variant = torch.randint(0, text.shape[1], (len(low),), generator=generator)
    out = torch.empty_like(low)
    jobs = [
        (s, idx[i : i + batch])
        for k, s in enumerate(strengths)
        for idx in [torch.arange(k, len(low), len(strengths))]
        for i in range(0, len(idx), batch)
    ]
    for strength, idx in tqdm(jobs, desc="redraw", disable=not progress):
        guess = low[idx].float() / 127.5 - 1
        cond = Conditioning({"text": text[idx, variant[idx]].float()}, {"text": null_text})
        base.init_sample = lambda prev, g=guess: g  # the base stage has no input; start it from the guess
        try:
            pixels = base.sample(None, cond, generator=generator, sampling={"strength": strength}).pixels
        finally:
            del base.init_sample
        out[idx] = (pixels.clamp(0, 1) * 255).round().to(torch.uint8)
    return out


class WorldImagesData(CaptionedData):
    """Batches ``(x0 [B, 3, S, S], cond, cond_input [B, 3, S, S] | None)`` in [-1, 1]."""

    def __init__(self, config: WorldImagesConfig, stage: DiffusionStage) -> None:
        self.config, self.stage, self.image_prob = config, stage, 0.0
        size = getattr(stage.config, "size", None)
        if stage.produces != "Images" or size is None:
            raise InputError(f"world.images data trains image stages, not {stage.config.type!r}")
        if size > config.size:
            raise InputError(f"the stage makes {size}-pixel images; the data renders {config.size} (raise data.size)")
        self.text, _, self.null_text = load_embeddings(config.embeddings, config.split, config.objects)
        self.image = None
        self.renders = load_renders(config.split, config.objects, config.size, config.cache_dir, config.workers)
        self.low_res = None
        if config.low_res is not None:
            low = getattr(stage.config, "low_size", None)
            if low is None:
                raise InputError("data.low_res is for a super-resolution stage (one with a low_size)")
            self.low_res = load_low_res(config.low_res, config.objects, low)
        self.weights = None
        if config.two_colour_weight != 1.0:
            from cdm3d.data.world import World

            world = World(config.split)
            two = torch.tensor([len(world.labels(i).colors) > 1 for i in range(len(self.renders))])
            self.weights = torch.where(two, config.two_colour_weight, 1.0).double()

    def draw(self, size: int, generator: torch.Generator) -> torch.Tensor:
        """``[size]`` object indices: uniform, or two-colour objects ``two_colour_weight`` times as often."""
        if self.weights is None:
            return torch.randint(0, len(self.renders), (size,), generator=generator)
        return torch.multinomial(self.weights, size, replacement=True, generator=generator)

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, Conditioning, torch.Tensor | None]:
        from cdm3d.stages.images.sr import resize_images

        idx = self.draw(size, generator)
        images = self.renders[idx].float() / 127.5 - 1
        cfg = self.stage.config
        x0 = resize_images(images, cfg.size)
        cond_input = None
        if self.stage.consumes is not None:
            low = resize_images(images, cfg.low_size)
            if self.low_res is not None:
                use = torch.rand(size, generator=generator) < self.config.low_res_prob
                low = torch.where(use[:, None, None, None], self.low_res[idx].float() / 127.5 - 1, low)
            cond_input = resize_images(low, cfg.size)
        return x0, self.conditioning(idx, generator), cond_input


DATASETS.register("world.images")((WorldImagesConfig, WorldImagesData))
