"""``ClipEncoder``: a frozen open_clip model that encodes prompts and images once.

The encoder is a plain class, not an ``nn.Module`` attribute of any stage, so
its weights never enter a stage's weights. open_clip (and with it torchvision
and PIL) is imported on first use only.

Three ways to get one:

* ``ClipEncoder.from_pretrained("ViT-B-32", "openai")``: an open_clip model with a
  pretrained tag, from the local cache (offline unless ``allow_download``);
* ``ClipEncoder.from_checkpoint(path, "ViT-B-32")``: a local open_clip checkpoint;
* ``ClipEncoder.from_config({...})`` / ``ClipEncoder.load(path)``: a custom small CLIP,
  the kind cdm3d ships, saved as safetensors with its config inside.
"""

from __future__ import annotations

import contextlib
import os
import unicodedata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from cdm3d.core.checkpoint import config_from_metadata, load_state_into, load_tensors, save_tensors
from cdm3d.core.conditioning import Conditioning
from cdm3d.core.framing import reframe as reframe_images
from cdm3d.errors import CheckpointError, ConfigError, InputError, UnavailableError

MAX_PROMPT_CHARS = 2000
_ALTERNATIVES = (
    "alternatives: a local open_clip checkpoint (ClipEncoder.from_checkpoint(path, model_name)), "
    "a custom small CLIP (ClipEncoder.from_config(cfg) or ClipEncoder.load(path)), "
    "or the CLIP shipped inside a cdm3d cascade folder"
)


def check_prompts(prompts: Any) -> list[str]:
    """Validated prompts: a non-empty list of non-empty, printable strings."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, (bytes, bytearray)):
        raise InputError("prompts are bytes, not a string; decode them first (e.g. p.decode('utf-8'))")
    if not isinstance(prompts, (list, tuple)) or not prompts:
        got = "an empty list" if isinstance(prompts, (list, tuple)) else type(prompts).__name__
        raise InputError(f"prompts must be a string or a non-empty list of strings, got {got}")
    out = []
    for i, p in enumerate(prompts):
        if isinstance(p, (bytes, bytearray)):
            raise InputError(f"prompt {i} is bytes, not a string; decode it first (e.g. p.decode('utf-8'))")
        if not isinstance(p, str):
            raise InputError(f"prompt {i} must be a string, got {type(p).__name__}")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError:
            raise InputError(
                f"prompt {i} is not valid UTF-8 text (it holds lone surrogates, as from undecodable bytes); "
                "decode the input with errors='replace' or fix its encoding"
            ) from None
        if any(unicodedata.category(ch) == "Cc" and ch not in "\t\n" for ch in p):
            raise InputError(f"prompt {i} contains control characters; remove them")
        if not p.strip():
            raise InputError(f"prompt {i} is empty; describe the object to generate")
        if len(p) > MAX_PROMPT_CHARS:
            raise InputError(f"prompt {i} has {len(p)} characters; at most {MAX_PROMPT_CHARS} are accepted: shorten it")
        out.append(" ".join(p.split()))
    return out


def check_images(images: Any) -> torch.Tensor:
    """Validated images: a float tensor ``[B, 3, H, W]`` with values in [0, 1]."""
    if not isinstance(images, torch.Tensor):
        raise InputError(f"images must be a tensor [B, 3, H, W] in [0, 1], got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3 or images.shape[0] == 0:
        raise InputError(f"images must have shape [B, 3, H, W], got {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InputError(f"images must be floating point in [0, 1], got {images.dtype}; use images.float() / 255")
    if not torch.isfinite(images).all():
        raise InputError("images hold NaN or Inf values; give finite pixel values in [0, 1]")
    if images.min() < -1e-3 or images.max() > 1 + 1e-3:
        raise InputError("image values must lie in [0, 1]; divide 8-bit pixel values by 255")
    if min(images.shape[-2:]) < 8:
        raise InputError(f"images of {images.shape[-2]}x{images.shape[-1]} px are too small; give at least 8x8 px")
    return images


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    if not offline:
        yield
        return
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        from huggingface_hub import constants
    except ImportError:
        constants = None
    old_const = getattr(constants, "HF_HUB_OFFLINE", None)
    if constants is not None:
        constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if constants is not None:
            constants.HF_HUB_OFFLINE = old_const
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


class ClipEncoder:
    """A frozen CLIP text/image encoder producing :class:`Conditioning`.

    Args:
        model: an ``open_clip`` CLIP model.
        tokenizer: its tokenizer (callable on a list of strings).
        name: a short description for messages and metadata.
        custom_config: the open_clip model config when the model is a custom one
            (needed to save it); ``None`` for named architectures.
        image_mean, image_std: per-channel input normalisation. Named open_clip
            models use OpenAI's statistics; cdm3d's custom CLIPs see images in
            [0, 1] as they are (mean 0, std 1), in training and in use alike.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        name: str,
        custom_config: dict[str, Any] | None = None,
        image_mean: tuple[float, float, float] | None = None,
        image_std: tuple[float, float, float] | None = None,
    ):
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.custom_config = custom_config
        if image_mean is None or image_std is None:
            if custom_config is not None:
                image_mean, image_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
            else:
                from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

                image_mean, image_std = tuple(OPENAI_DATASET_MEAN), tuple(OPENAI_DATASET_STD)
        self.image_mean, self.image_std = tuple(image_mean), tuple(image_std)
        # Conditioning images are reframed so their object spans this fraction of the frame (the framing of
        # the CLIP's training images; see cdm3d.core.framing); None: used as given. A cascade folder sets it.
        self.image_fill: float | None = None
        # A copy of the image tower tuned to map an image to the text embedding of its caption (trained by
        # configs/train/clip/text_prior.yaml): with it, images alone fill the "text" slot
        # too. A small CLIP's image embeddings carry less of an object's category than its text embeddings;
        # the stages read both. None: no prior. A cascade folder sets it (clip.text_prior).
        self.text_prior: torch.nn.Module | None = None
        self._null_text: torch.Tensor | None = None
        # Named ViT CLIPs also give the image tower's patch tokens (before its final LayerNorm, class token
        # dropped) as the "image_grid" slot: Point-E's image-conditioned models read that grid.
        self.grid = custom_config is None and hasattr(getattr(model, "visual", None), "transformer")

    # -- construction -----------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, model_name: str, pretrained: str, *, allow_download: bool = False, cache_dir: str | None = None
    ) -> ClipEncoder:
        import open_clip

        if model_name not in open_clip.list_models():
            raise ConfigError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        try:
            with _hub_offline(not allow_download):
                model = open_clip.create_model(model_name, pretrained=pretrained, cache_dir=cache_dir)
        except Exception as err:
            raise UnavailableError(
                f"CLIP weights {model_name}/{pretrained} are not available offline here ({err}); {_ALTERNATIVES}"
            ) from None
        return cls(model, open_clip.get_tokenizer(model_name), f"{model_name}/{pretrained}")

    @classmethod
    def from_checkpoint(cls, path: str | Path, model_name: str) -> ClipEncoder:
        import open_clip

        path = Path(path)
        if not path.is_file():
            raise InputError(f"CLIP checkpoint not found: {path}")
        if model_name not in open_clip.list_models():
            raise ConfigError(f"unknown open_clip model {model_name!r}; see open_clip.list_models()")
        if _is_torchscript(path):
            raise CheckpointError(
                f"{path} is a TorchScript archive (OpenAI's own ViT-L-14.pt is one): loading it would run its code, "
                "so cdm3d refuses it. Use open_clip's copy of the same weights instead: the file "
                "open_clip_model.safetensors (or open_clip_pytorch_model.bin) of the Hugging Face repository "
                "timm/vit_large_patch14_clip_224.openai, with model ViT-L-14-quickgelu"
            )
        try:
            # open_clip loads .safetensors directly and other files with weights_only=True.
            model = open_clip.create_model(model_name, pretrained=str(path))
        except Exception as err:
            raise UnavailableError(f"cannot load CLIP checkpoint {path} as {model_name}: {err}") from None
        return cls(model, open_clip.get_tokenizer(model_name), f"{model_name}/{path.name}")

    @classmethod
    def from_config(cls, config: dict[str, Any], seed: int = 0) -> ClipEncoder:
        """A custom CLIP, randomly initialised (train it, or :meth:`load` trained weights)."""
        import open_clip

        if not isinstance(config, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(config):
            raise ConfigError("a custom CLIP config needs 'embed_dim', 'vision_cfg' and 'text_cfg'")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                model = open_clip.CLIP(**config)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"invalid custom CLIP config: {err}") from None
        context = int(config["text_cfg"].get("context_length", 77))
        tokenizer = open_clip.SimpleTokenizer(context_length=context)
        return cls(model, tokenizer, "custom", custom_config=config)

    @classmethod
    def load(cls, path: str | Path) -> ClipEncoder:
        """A custom CLIP saved by :meth:`save` (safetensors, config inside)."""
        import json

        tensors, meta = load_tensors(path)
        config = config_from_metadata(path, meta, "clip")
        try:
            enc = cls.from_config(config)
        except ConfigError as err:
            raise CheckpointError(f"{path}: {err}") from None
        load_state_into(enc.model, tensors, path)
        enc.name = meta.get("cdm3d.name", Path(path).stem)
        if "cdm3d.preprocess" in meta:
            try:
                norm = json.loads(meta["cdm3d.preprocess"])
                mean, std = tuple(float(x) for x in norm["mean"]), tuple(float(x) for x in norm["std"])
            except (ValueError, KeyError, TypeError) as err:
                raise CheckpointError(f"{path}: malformed image normalisation metadata ({err})") from None
            if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
                raise CheckpointError(f"{path}: image normalisation needs 3 means and 3 positive stds")
            enc.image_mean, enc.image_std = mean, std
        return enc

    def save(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Save a custom CLIP (config and normalisation inside); ``dtype=torch.float16`` halves the file."""
        import json

        if self.custom_config is None:
            raise InputError(
                f"CLIP '{self.name}' is a named open_clip model; cascades refer to it by name "
                "instead of copying its weights"
            )
        save_tensors(
            path,
            {
                k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
                for k, v in self.model.state_dict().items()
            },
            {
                "cdm3d.kind": "clip",
                "cdm3d.name": self.name,
                "cdm3d.config": json.dumps(self.custom_config),
                "cdm3d.preprocess": json.dumps({"mean": self.image_mean, "std": self.image_std}),
            },
        )

    def _identity(self) -> str:
        """What a text prior must have been trained from: the custom config, or the named model."""
        import json

        return json.dumps(self.custom_config, sort_keys=True) if self.custom_config is not None else self.name

    def save_text_prior(self, path: str | Path, dtype: torch.dtype | None = None) -> None:
        """Save :attr:`text_prior` (the tuned image tower's weights only; the CLIP it belongs to named inside)."""
        if self.text_prior is None:
            raise InputError(f"CLIP '{self.name}' has no text prior to save")
        tensors = {
            k: v.to(dtype) if dtype is not None and v.is_floating_point() else v
            for k, v in self.text_prior.state_dict().items()
        }
        save_tensors(path, tensors, {"cdm3d.kind": "clip_text_prior", "cdm3d.clip": self._identity()})

    def load_text_prior(self, path: str | Path) -> None:
        """Load a text prior saved by :meth:`save_text_prior` for this CLIP."""
        import copy

        tensors, meta = load_tensors(path)
        if meta.get("cdm3d.kind") != "clip_text_prior":
            found = meta.get("cdm3d.kind", "no cdm3d metadata")
            raise CheckpointError(f"{path} is not a cdm3d CLIP text prior (found: {found})")
        if meta.get("cdm3d.clip") != self._identity():
            raise CheckpointError(f"{path} is a text prior of another CLIP than '{self.name}'; train one for it")
        tower = copy.deepcopy(self.model.visual)
        load_state_into(tower, tensors, path)
        self.text_prior = tower.float().eval().requires_grad_(False)

    # -- properties -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embed_dim(self) -> int:
        return (
            int(self.model.text_projection.shape[-1])
            if hasattr(self.model, "text_projection")
            else int(self.model.visual.output_dim)
        )

    @property
    def image_size(self) -> int:
        size = self.model.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    def to(self, device: torch.device | str) -> ClipEncoder:
        self.model.to(device)
        if self.text_prior is not None:
            self.text_prior.to(device)
        self._null_text = None
        return self

    # -- encoding ---------------------------------------------------------------------
    @torch.no_grad()
    def encode_text(self, prompts: Sequence[str]) -> torch.Tensor:
        """``[B, D]`` unit-norm text embeddings (prompts are not validated here)."""
        tokens = self.tokenizer(list(prompts)).to(self.device)
        emb = self.model.encode_text(tokens).float()
        return torch.nn.functional.normalize(emb, dim=-1)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """The model's input for ``images [B, 3, H, W]`` in [0, 1]: resized and normalised. A named CLIP gets its
        own preprocessing (the shortest side resized bicubically to its input size, then a centre crop); cdm3d's
        small CLIPs a plain resize, as in their training.

        Training uses this too, so a CLIP sees the same inputs in training and in use.
        """
        images = images.to(self.device, torch.float32)
        size = self.image_size
        if self.custom_config is None:
            images = _resize_shortest_and_crop(images, size)
        elif images.shape[-2:] != (size, size):
            images = torch.nn.functional.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        mean = torch.tensor(self.image_mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std, device=self.device).view(1, 3, 1, 1)
        return (images - mean) / std

    @staticmethod
    @torch.no_grad()
    def _embed(tower: Any, pixels: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` unit-norm embeddings of preprocessed ``pixels`` by an image tower."""
        return torch.nn.functional.normalize(tower(pixels).float(), dim=-1)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` unit-norm image embeddings of ``images [B, 3, H, W]`` in [0, 1]."""
        return self._embed(self.model.encode_image, self.preprocess(check_images(images)))

    @property
    def grid_shape(self) -> tuple[int, int]:
        """``(L, W)``: the image tower's patch tokens and their width (the "image_grid" slot)."""
        visual = self.model.visual
        return int(visual.grid_size[0] * visual.grid_size[1]), int(visual.transformer.width)

    @torch.no_grad()
    def _embed_with_grid(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``([B, D] unit-norm embeddings, [B, L, W] patch tokens)`` of preprocessed ``pixels`` in one pass: the
        tokens are the image transformer's output (before its final LayerNorm), the class token dropped."""
        seen: list[torch.Tensor] = []
        hook = self.model.visual.transformer.register_forward_hook(lambda m, i, out: seen.append(out))
        try:
            emb = self._embed(self.model.encode_image, pixels)
        finally:
            hook.remove()
        return emb, seen[-1][:, 1:].float()

    def encode_image_grid(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, L, W]`` patch tokens of ``images [B, 3, H, W]`` in [0, 1] (a named ViT CLIP's "image_grid")."""
        if not self.grid:
            raise InputError(f"CLIP '{self.name}' gives no image grid (named open_clip ViT models do)")
        return self._embed_with_grid(self.preprocess(check_images(images)))[1]

    def _text_prior(self) -> torch.nn.Module:
        if self.text_prior is None:
            raise InputError(f"CLIP '{self.name}' has no text prior (see ClipEncoder.text_prior)")
        return self.text_prior

    def encode_image_as_text(self, images: torch.Tensor) -> torch.Tensor:
        """``[B, D]`` unit-norm predictions of the text embedding of ``images``' captions (the text prior)."""
        return self._embed(self._text_prior(), self.preprocess(check_images(images)))

    def null_text(self) -> torch.Tensor:
        if self._null_text is None:
            self._null_text = self.encode_text([""])[0]
        return self._null_text

    def encode(
        self, prompts: Any = None, images: torch.Tensor | None = None, reframe: bool = True, text_prior: bool = True
    ) -> Conditioning:
        """Conditioning for a batch of prompts, images, or both (same batch size).

        Returns a :class:`Conditioning` with slots "text" and/or "image" (and "image_grid", a named ViT
        CLIP's patch tokens) and the null embeddings of all (CLIP's empty prompt for text, zeros for images). Images are
        reframed first when :attr:`image_fill` is set, unless ``reframe`` is false. Images
        without prompts fill the "text" slot from :attr:`text_prior` when the CLIP has one,
        unless ``text_prior`` is false (``meta["text_from"]`` says "text_prior").
        """
        if prompts is None and images is None:
            raise InputError("give prompts, images, or both to condition on")
        embeddings: dict[str, torch.Tensor] = {}
        checked = None
        if prompts is not None:
            checked = check_prompts(prompts)
            embeddings["text"] = self.encode_text(checked)
        meta: dict[str, object] = {"clip": self.name}
        if images is not None:
            images = check_images(images)
            if self.image_fill is not None and reframe:
                images = reframe_images(images, self.image_fill)
            pixels = self.preprocess(images)  # once for both towers
            if self.grid:
                embeddings["image"], embeddings["image_grid"] = self._embed_with_grid(pixels)
            else:
                embeddings["image"] = self._embed(self.model.encode_image, pixels)
            if prompts is None and text_prior and self.text_prior is not None:
                embeddings["text"] = self._embed(self.text_prior, pixels)
                meta["text_from"] = "text_prior"
        sizes = {k: v.shape[0] for k, v in embeddings.items()}
        if len(set(sizes.values())) != 1:
            raise InputError(f"prompts and images differ in number: {sizes}")
        null_text = self.null_text()
        null = {"text": null_text, "image": torch.zeros_like(null_text)}
        if self.grid:
            null["image_grid"] = torch.zeros(self.grid_shape, device=null_text.device)
        return Conditioning(embeddings, null, checked, meta)


def _resize_shortest_and_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """CLIP's own preprocessing: the shortest side resized to ``size`` (bicubic), then a centre crop."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    if new != (h, w):
        images = torch.nn.functional.interpolate(images, size=new, mode="bicubic", antialias=True, align_corners=False)
        images = images.clamp(0, 1)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return images[..., top : top + size, left : left + size]


def _is_torchscript(path: Path) -> bool:
    """Whether ``path`` is a TorchScript archive (a zip holding compiled code), which weights-only loading can
    never read and which cdm3d does not execute."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1].startswith(("code/", "constants.pkl")) for name in archive.namelist())
