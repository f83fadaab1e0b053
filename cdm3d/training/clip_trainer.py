"""Contrastive training of the small CLIP on rendered views and captions of the world, and of a CLIP's text
prior (``train.objective: text_prior``): a copy of its image tower tuned, text tower frozen, to land on the
text embedding of an image's caption (:attr:`cdm3d.core.ClipEncoder.text_prior`)."""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch.nn import functional as F

from cdm3d.core import ClipEncoder
from cdm3d.core.checkpoint import atomic_path, write_text
from cdm3d.core.config import StrictConfig, load_yaml, validate
from cdm3d.core.framing import reframe
from cdm3d.data.world import World, caption_of
from cdm3d.errors import ConfigError, StorageError, TrainingError
from cdm3d.eval.classifier import augment_images
from cdm3d.render import Camera
from cdm3d.training.trainer import truncate_log


class ClipDataConfig(StrictConfig):
    objects: int = Field(8000, ge=1)
    views: int = Field(4, ge=1)
    image_size: int = Field(64, ge=16)
    caption_variants: int = Field(64, ge=1)
    # Reframe the training views so their object spans this fraction of the frame (a text prior learns on
    # images framed as a cascade with this clip.image_fill shows them); None: as rendered.
    image_fill: float | None = Field(None, ge=0.05, le=1.0)
    # Degrade views as generated images are (half through half resolution, pixel noise, a small shift).
    augment: bool = False
    # Each object's first view from the default camera (the view the image stages learn and generate).
    default_view: bool = False


class ClipTrainConfig(StrictConfig):
    steps: int = Field(2500, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 100
    seed: int = 0
    checkpoint_every: int = Field(250, ge=1)
    # Start from a trained cdm3d CLIP file instead of random weights.
    init: str | None = None
    # Keep the text tower (and so every text embedding) fixed: improves the image tower of a CLIP
    # whose text embeddings other stages were already trained on.
    freeze_text: bool = False
    # "contrastive": CLIP's loss. "text_prior": train a text prior for the ``init`` CLIP: its text tower is
    # frozen, the loss adds ``prior_cosine`` x (1 - cosine) between each image's embedding and its caption's,
    # and the run writes the tuned image tower as text_prior.safetensors (the CLIP itself is unchanged).
    objective: Literal["contrastive", "text_prior"] = "contrastive"
    prior_cosine: float = Field(4.0, ge=0.0)


class ClipEvalConfig(StrictConfig):
    objects: int = Field(500, ge=100)


class ClipRecipe(StrictConfig):
    model: dict[str, Any]
    data: ClipDataConfig = ClipDataConfig()
    train: ClipTrainConfig = ClipTrainConfig()
    eval: ClipEvalConfig = ClipEvalConfig()


def load_recipe(path: str | Path) -> ClipRecipe:
    return validate(ClipRecipe, load_yaml(path), str(path))


def random_camera(rng: random.Random) -> Camera:
    return Camera(azimuth=rng.uniform(0, 360), elevation=rng.uniform(10, 40), distance=2.7)


def render_dataset(
    split: str, count: int, views: int, size: int, seed: int, progress: bool = True, default_view: bool = False
):
    """uint8 images ``[count * views, size, size, 3]`` and the object index of each; random cameras, or with
    ``default_view`` the first view of each object from the default camera."""
    from tqdm.auto import tqdm

    world = World(split)
    rng = random.Random(seed)
    images = torch.empty(count * views, size, size, 3, dtype=torch.uint8)
    owner = torch.arange(count).repeat_interleave(views)
    for i in tqdm(range(count), desc=f"render {split}", disable=not progress):
        obj = world[i]
        for v in range(views):
            camera = Camera() if default_view and v == 0 else random_camera(rng)
            img = obj.render(camera, size=size)
            images[i * views + v] = (img * 255).round().to(torch.uint8)
    return images, owner


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2).float() / 255


def lr_at(step: int, cfg: ClipTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def clip_loss(model: Any, images: torch.Tensor, tokens: torch.Tensor, cosine: float = 0.0) -> torch.Tensor:
    """CLIP's symmetric InfoNCE, plus ``cosine`` x the mean (1 - cosine) of matching pairs (a text prior's)."""
    img = model.encode_image(images, normalize=True)
    txt = model.encode_text(tokens, normalize=True)
    logits = model.logit_scale.exp().clamp(max=100) * img @ txt.T
    labels = torch.arange(len(images))
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    if cosine:
        loss = loss + cosine * (1 - (img * txt).sum(-1)).mean()
    return loss


def train_clip(recipe: ClipRecipe, out: Path, resume: bool = True, progress: bool = True) -> ClipEncoder:
    """Train the small CLIP; checkpoints under ``out`` and ``out/clip.safetensors`` at the end. With the
    "text_prior" objective: the ``init`` CLIP with its trained :attr:`~cdm3d.core.ClipEncoder.text_prior`,
    written to ``out/text_prior.safetensors``."""
    from tqdm.auto import tqdm

    prior = recipe.train.objective == "text_prior"
    if prior and recipe.train.init is None:
        raise ConfigError("train.objective 'text_prior' needs train.init: the CLIP file whose text prior to train")

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise StorageError(f"cannot create the run folder {out}: {err.strerror or err}") from None
    write_text(out / "recipe.json", recipe.model_dump_json(indent=2))
    torch.manual_seed(recipe.train.seed)
    if recipe.train.init is not None:
        encoder = ClipEncoder.load(recipe.train.init)
        if encoder.custom_config != recipe.model:
            raise ConfigError(f"{recipe.train.init} is not a CLIP of this recipe's model config")
    else:
        encoder = ClipEncoder.from_config(recipe.model, seed=recipe.train.seed)
    model = encoder.model.train().requires_grad_(True)
    if prior:  # the prior is a copy of the image tower; the CLIP's own stays as it was
        import copy

        base = copy.deepcopy(model).eval().requires_grad_(False)
    if recipe.train.freeze_text or prior:
        for name, p in model.named_parameters():
            if not name.startswith("visual.") and name != "logit_scale":
                p.requires_grad_(False)
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in trainable if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in trainable if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.train.lr,
        betas=(0.9, 0.98),
    )
    state_path = out / "train_state.pt"
    step = 0
    state = None
    if resume and state_path.exists():
        try:
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            step = int(state["step"])
        except Exception as err:
            raise TrainingError(
                f"cannot resume: {state_path} is unreadable or damaged ({type(err).__name__})"
            ) from None
        if "recipe" in state and json.loads(state["recipe"])["model"] != json.loads(recipe.model_dump_json())["model"]:
            raise TrainingError(f"cannot resume: {state_path} was written for another model; use a new --out")
    cache = out / "renders.pt"
    d = recipe.data
    images = None
    if cache.exists():
        try:
            images, owner = torch.load(cache, weights_only=True).values()
        except Exception as err:  # a damaged cache is rebuilt, never half-read
            warnings.warn(f"render cache {cache} is unreadable ({type(err).__name__}); rebuilding it", stacklevel=2)
    if images is None:
        images, owner = render_dataset(
            "train", d.objects, d.views, d.image_size, recipe.train.seed, progress, d.default_view
        )
        if d.image_fill is not None:
            images = _reframed(images, d.image_fill)
        with atomic_path(cache) as tmp:
            torch.save({"images": images, "owner": owner}, tmp)
    world = World("train")
    labels = [world.labels(i) for i in range(d.objects)]
    seeds = [world.seed(i) for i in range(d.objects)]
    g = torch.Generator().manual_seed(recipe.train.seed * 1000 + step)
    rng = random.Random(recipe.train.seed * 1000 + step)
    if state is not None and "generator" in state:  # the exact random streams of the interrupted run
        g.set_state(state["generator"])
        rng.setstate(_tuples(state["rng"]))
    truncate_log(out / "log.csv", step)
    log = (out / "log.csv").open("a")
    bad_steps = 0
    bar = tqdm(total=recipe.train.steps, initial=step, desc="clip", disable=not progress)
    start = time.time()
    while step < recipe.train.steps:
        # One view of distinct objects per batch, so no caption matches two images.
        objs = torch.randperm(d.objects, generator=g)[: recipe.train.batch_size]
        views = torch.randint(0, d.views, (len(objs),), generator=g)
        # The encoder's own preprocessing, so training and use see the same inputs.
        pixels = to_float(images[objs * d.views + views])
        if d.augment:
            pixels = augment_images(pixels, g)
        batch = encoder.preprocess(pixels)
        texts = [caption_of(seeds[i], labels[i], rng.randrange(d.caption_variants)) for i in objs.tolist()]
        tokens = encoder.tokenizer(texts)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, recipe.train)
        loss = clip_loss(model, batch, tokens, recipe.train.prior_cosine if prior else 0.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if not (torch.isfinite(loss) and torch.isfinite(norm)):
            bad_steps += 1
            warnings.warn(f"step {step}: non-finite loss or gradients skipped ({bad_steps} in a row)", stacklevel=2)
            if bad_steps >= 5:
                raise TrainingError(f"5 non-finite steps in a row at step {step}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            step += 1
            continue
        bad_steps = 0
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        log.write(f"{step},{loss.item():.5f},{time.time() - start:.1f}\n")
        if step % recipe.train.checkpoint_every == 0 or step == recipe.train.steps:
            log.flush()
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step,
                "generator": g.get_state(),
                "rng": rng.getstate(),
                "recipe": recipe.model_dump_json(),
            }
            with atomic_path(state_path) as tmp:
                torch.save(state, tmp)
    bar.close()
    log.close()
    if prior:
        # The init CLIP as it was, with the tuned copy of its image tower as its text prior.
        encoder = ClipEncoder(
            base, encoder.tokenizer, encoder.name, encoder.custom_config, encoder.image_mean, encoder.image_std
        )
        encoder.text_prior = model.visual.eval().requires_grad_(False)
        encoder.save_text_prior(out / "text_prior.safetensors")
        write_text(out / "train_time.json", json.dumps({"seconds": time.time() - start, "steps": step}))
        return encoder
    encoder = ClipEncoder(
        model,
        encoder.tokenizer,
        "cdm3d-small-clip",
        custom_config=recipe.model,
        image_mean=encoder.image_mean,
        image_std=encoder.image_std,
    )
    encoder.save(out / "clip.safetensors")
    write_text(out / "train_time.json", json.dumps({"seconds": time.time() - start, "steps": step}))
    return encoder


def _reframed(images: torch.Tensor, fill: float) -> torch.Tensor:
    """uint8 ``[N, S, S, 3]`` views reframed so their object spans ``fill`` of the frame."""
    out = torch.empty_like(images)
    for i in range(0, len(images), 512):
        x = reframe(to_float(images[i : i + 512]), fill)
        out[i : i + 512] = (x.permute(0, 2, 3, 1) * 255).round().clamp(0, 255).to(torch.uint8)
    return out


def _tuples(value):
    """``random.Random`` state back from its saved form (tuples may come back as lists)."""
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value
