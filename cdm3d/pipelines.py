"""The user-facing API: ``TextTo3D``, ``ImageTo3D``, ``TextToImage`` and ``TextToImageTo3D`` over cascade folders.

from cdm3d import TextTo3D
pipe = TextTo3D.from_pretrained()          # the shipped default
out = pipe("a tall red lamp", seed=0)
out.mesh.save("lamp.glb")                  # also out.points, out.coarse_points, out["upsample"]

from cdm3d import TextToImage, TextToImageTo3D
TextToImage.from_pretrained()("a red mug").images.save("mug.png")
out = TextToImageTo3D.from_pretrained()("a red mug")   # out.images, out.mesh: the image's CLIP embedding
                                                       # conditions the point stages with the text's
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from cdm3d.core import Cascade, CascadeOutput, Conditioning, DiffusionStage, SelectorStage
from cdm3d.errors import InputError
from cdm3d.paths import DEFAULT_IMAGE_MODEL, DEFAULT_MODEL


def sampling_overrides(
    cascade: Cascade, steps: int | None, guidance: float | None, candidates: int | None = None
) -> dict[str, dict[str, Any]]:
    """The same steps / guidance scale for every diffusion stage, and ``candidates`` for the selector stage
    that draws them (the one that asks for several by default, else the first; only the settings given)."""
    settings: dict[str, Any] = {}
    if steps is not None:
        settings["steps"] = steps
    if guidance is not None:
        settings["guidance_scale"] = guidance
    out = {n: dict(settings) for n, s in cascade.stages.items() if isinstance(s, DiffusionStage)} if settings else {}
    if candidates is not None:
        if isinstance(candidates, bool) or not isinstance(candidates, int) or candidates < 1:
            raise InputError(f"candidates must be a whole number >= 1, got {candidates!r}")
        selectors = [n for n, s in cascade.stages.items() if isinstance(s, SelectorStage)]
        if not selectors:
            raise InputError("this cascade has no selector stage (points.select) to choose among candidates")
        drawing = [n for n in selectors if cascade.stages[n].candidates() > 1]
        out[(drawing or selectors)[0]] = {"candidates": candidates}
    return out


def parse_sampling_items(items: list[str], names: list[str]) -> dict[str, dict[str, Any]]:
    """``["upsample.steps=4", ...]`` -> ``{"upsample": {"steps": 4}}`` (values read as YAML scalars); each
    ``NAME`` must be one of ``names``."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, field = key.partition(".")
        if not sep or not dot or not field or name not in names:
            raise InputError(f"--sampling {item!r} must look like NAME.KEY=VALUE with NAME one of {list(names)}")
        try:
            out.setdefault(name, {})[field] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise InputError(f"--sampling {item!r}: the value is not readable ({e})") from e
    return out


MESHERS = ("sdf", "poisson")


def with_mesher(cascade: Cascade, mesher: str | None) -> Cascade:
    """``cascade`` with its mesh stage as ``mesher`` asks: ``"sdf"`` (the learned ``mesh.sdf`` the folder
    ships), ``"poisson"`` (``mesh.poisson``, no weights, replaces it), or ``None`` (as shipped)."""
    if mesher is None:
        return cascade
    if mesher not in MESHERS:
        raise InputError(f"unknown mesher {mesher!r}; choose one of {', '.join(MESHERS)}")

    name, _ = cascade.last_producer("Meshes")
    if name is None:
        raise InputError("this cascade has no mesh stage to choose")
    current = cascade.stages[name].config.type
    if current == f"mesh.{mesher}":
        return cascade
    if mesher == "sdf":
        raise InputError(f"this cascade's mesh stage is {current}; it ships no trained mesh.sdf stage")
    from cdm3d.stages.mesh import PoissonMeshConfig, PoissonMeshStage

    poisson = PoissonMeshStage(PoissonMeshConfig(trim_quantile=0.1))
    stages = [(n, poisson if n == name else s) for n, s in cascade.stages.items()]
    return Cascade(stages, clip=cascade.clip, clip_ref=cascade.clip_ref)


class Result:
    """Every stage's output of one call, with names for the usual ones."""

    def __init__(self, output: CascadeOutput) -> None:
        self.output = output

    def __getitem__(self, stage: str) -> Any:
        return self.output[stage]

    def _last(self, kind: str) -> Any:
        found = [v for v in self.output.outputs.values() if type(v).__name__ == kind]
        if not found:
            raise InputError(f"this run produced no {kind} (stages run: {list(self.output.outputs)})")
        return found[-1]

    @property
    def mesh(self) -> Any:
        """The final ``Meshes``."""
        return self._last("Meshes")

    @property
    def points(self) -> Any:
        """The densest ``PointClouds``."""
        return self._last("PointClouds")

    @property
    def images(self) -> Any:
        """The final (largest) ``Images``."""
        return self._last("Images")

    @property
    def coarse_points(self) -> Any:
        return next(v for v in self.output.outputs.values() if type(v).__name__ == "PointClouds")

    @property
    def timings(self) -> dict[str, float]:
        return self.output.timings


class _Pipeline:
    def __init__(self, cascade: Cascade) -> None:
        if cascade.clip is None:
            raise InputError("this cascade folder names no CLIP; a pipeline needs one to encode its inputs")
        self.cascade = cascade

    @classmethod
    def from_pretrained(
        cls, path: str | Path | None = None, device: str = "cpu", mesher: str | None = None
    ) -> _Pipeline:
        """The cascade folder ``path`` (default: the shipped one); ``mesher`` "sdf" or "poisson" picks the
        mesh stage (default: the folder's own)."""
        from cdm3d.stages import load_builtin

        load_builtin()
        return cls(with_mesher(Cascade.from_pretrained(path or cls.default_path), mesher).to(device))

    default_path = DEFAULT_MODEL

    def _run(
        self,
        cond: Conditioning,
        seed: int,
        steps: int | None,
        guidance: float | None,
        stop_at: str | None,
        device: str | None,
        progress: bool,
        candidates: int | None = None,
    ) -> Result:
        sampling = sampling_overrides(self.cascade, steps, guidance, candidates)
        out = self.cascade.run(cond, seed=seed, stop_at=stop_at, sampling=sampling, device=device, progress=progress)
        return Result(out)


class _PromptPipeline(_Pipeline):
    """A pipeline whose cascade starts from prompts."""

    def __call__(
        self,
        prompts: str | list[str],
        *,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        stop_at: str | None = None,
        device: str | None = None,
        progress: bool = True,
        candidates: int | None = None,
    ) -> Result:
        """``candidates``: samples per prompt the selector stage chooses among (default: the cascade's; 1: no
        choosing), in cascades with one (``points.select``)."""
        return self._run(self.cascade.encode(prompts), seed, steps, guidance, stop_at, device, progress, candidates)


class TextTo3D(_PromptPipeline):
    """Prompts -> coarse points -> dense points -> mesh."""


def load_images(images: Any) -> torch.Tensor:
    """``[B, 3, H, W]`` floats in [0, 1] from paths, PIL images or a tensor."""
    if isinstance(images, torch.Tensor):
        return images if images.ndim == 4 else images[None]
    items = images if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise InputError("give at least one image")
    from PIL import Image, UnidentifiedImageError

    tensors = []
    for item in items:
        if isinstance(item, (str, Path)):
            path = Path(item)
            if not path.is_file():
                raise InputError(f"image file not found: {path}")
            try:
                with Image.open(path) as im:
                    item = _to_rgb(im)
            except Image.DecompressionBombError:
                raise InputError(
                    f"{path} is too large to decode safely (more than {Image.MAX_IMAGE_PIXELS} pixels); resize it"
                ) from None
            except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
                raise InputError(
                    f"{path} cannot be read as an image ({type(err).__name__}: {err}); give a PNG or JPEG file"
                ) from None
        if not isinstance(item, Image.Image):
            raise InputError(f"images must be paths, PIL images or a tensor, got {type(item).__name__}")
        rgb = _to_rgb(item)
        data = torch.frombuffer(bytearray(rgb.tobytes()), dtype=torch.uint8).view(rgb.height, rgb.width, 3)
        tensors.append(data.permute(2, 0, 1).float() / 255)
    sizes = {t.shape for t in tensors}
    if len(sizes) != 1:
        size = max(max(t.shape[-2:]) for t in tensors)
        tensors = [torch.nn.functional.interpolate(t[None], size=(size, size), mode="bilinear")[0] for t in tensors]
    return torch.stack(tensors)


def _to_rgb(im: Any) -> Any:
    """An 8-bit RGB copy of a PIL image of any mode: alpha over white, 16-bit and float scaled."""
    from PIL import Image

    im.load()  # decode now, so truncated files fail here
    if im.mode.startswith("I") or im.mode == "F":  # 16/32-bit grey: scale to 8 bits, do not clip
        arr = np.asarray(im, np.float64)
        peak = float(arr.max())
        full = {True: 65535.0 if peak > 255 else 255.0, False: 1.0 if peak <= 1 else 255.0}[im.mode.startswith("I")]
        im = Image.fromarray(np.clip(arr / full * 255, 0, 255).round().astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


class ImageTo3D(_Pipeline):
    """Images (their CLIP embeddings) -> coarse points -> dense points -> mesh."""

    def __call__(
        self,
        images: Any,
        *,
        prompts: str | list[str] | None = None,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        stop_at: str | None = None,
        device: str | None = None,
        progress: bool = True,
        reframe: bool = True,
        candidates: int | None = None,
        text_prior: bool = True,
    ) -> Result:
        """``reframe=False`` gives the images to CLIP as they are, not enlarged to the framing of its training
        images (``clip.image_fill`` in the cascade folder; see :mod:`cdm3d.core.framing`). Without
        ``prompts``, a cascade whose CLIP has a text prior (``clip.text_prior``) conditions on the text
        embedding it predicts from each image as well as on the image's; ``text_prior=False`` on the image's
        alone. ``candidates``: as for ``TextTo3D``."""
        cond = self.cascade.encode(prompts, load_images(images), reframe=reframe, text_prior=text_prior)
        return self._run(cond, seed, steps, guidance, stop_at, device, progress, candidates)


class TextToImage(_PromptPipeline):
    """Prompts -> a low-resolution image -> a super-resolved image (the shipped ``weights/images`` cascade)."""

    default_path = DEFAULT_IMAGE_MODEL


class TextToImageTo3D:
    """Prompts -> an image (``TextToImage``) -> 3D, the point stages conditioned on the prompt's text
    embedding and the generated image's CLIP embedding together."""

    def __init__(self, image: TextToImage, shape: TextTo3D) -> None:
        self.image, self.shape = image, shape

    @classmethod
    def from_pretrained(
        cls,
        image_path: str | Path | None = None,
        shape_path: str | Path | None = None,
        device: str = "cpu",
        mesher: str | None = None,
    ) -> TextToImageTo3D:
        return cls(
            TextToImage.from_pretrained(image_path, device),
            TextTo3D.from_pretrained(shape_path, device, mesher),
        )

    def __call__(
        self,
        prompts: str | list[str],
        *,
        seed: int = 0,
        steps: int | None = None,
        guidance: float | None = None,
        stop_at: str | None = None,
        device: str | None = None,
        progress: bool = True,
        candidates: int | None = None,
    ) -> Result:
        """``stop_at`` names a stage of the 3D cascade; every stage's output of both cascades is returned
        (image stages under ``image.<name>``). ``candidates``: as for ``TextTo3D`` (the 3D cascade's)."""
        first = self.image(prompts, seed=seed, steps=steps, guidance=guidance, device=device, progress=progress)
        images = first.images.pixels
        cond = self.shape.cascade.encode(prompts, images)
        second = self.shape._run(cond, seed, steps, guidance, stop_at, device, progress, candidates)
        outputs = {f"image.{k}": v for k, v in first.output.outputs.items()} | second.output.outputs
        timings = {f"image.{k}": v for k, v in first.timings.items()} | second.timings
        return Result(CascadeOutput(outputs, cond, timings, second.output.selection))
