"""``images.sr``: a low-resolution image + CLIP embedding(s) -> an image ``size`` pixels a side (2x or 4x).

The low-resolution image is resized to the output size (bilinear) and, in
training, noised by Gaussian conditioning augmentation (Ho et al. 2021,
"Cascaded Diffusion Models"; DeepFloyd IF): ``c_s = cos(pi s/2) c + sin(pi s/2) eps``
with ``s`` drawn in ``[0, max_level]``, the non-truncated variant (the level is
not tied to a step of the base stage's sampler). The level is a network input
and, at sampling time, the ``aug_level`` knob.

``sampling.low_freq_fix`` (0 by default, in [0, 1]) is a colour fix at sampling time in the manner of
StableSR's and of ILVR's low-pass projection: the output's frequencies at the input's resolution
(downsampled, upsampled again) are replaced, by that fraction, with the input's own, so the stage adds detail
without moving colours and large shapes away from the image it was given.

``sampling.adain_fix`` (0 by default, in [0, 1]) is StableSR's other colour fix, adaptive instance
normalisation (Wang et al. 2023, after Huang & Belongie 2017): each output channel's mean and standard
deviation over the image are moved, by that fraction, to those of the input image resized to the output size.
It corrects global shifts of colour and contrast and leaves the spatial detail alone. Both fixes can be on
together (the low-frequency one first).

``sampling.adain_at`` says at which size the output's statistics are measured. ``"output"`` (StableSR's
way, the default) compares the output with the input resized up to the output size; but a sharp image has
more contrast than a blurred one of the same content, so this pulls every output's contrast down towards the
blurred input's, and on a light background it lightens the objects (gray read as white). ``"input"`` measures
the output resized down to the input's size against the input itself: an output whose downsampled image
equals its input is left exactly as it is, and only a real shift of colour or contrast is corrected.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from cdm3d.core import STAGES, DiffusionStage, DiffusionStageConfig
from cdm3d.core.augmentation import AugmentationConfig
from cdm3d.core.conditioning import Conditioning
from cdm3d.core.stage import DiffusionConfig, SamplingConfig, StepCallback
from cdm3d.errors import InputError
from cdm3d.models.unet import UNetConfig, UNetDenoiser
from cdm3d.types import Images


class SuperResSamplingConfig(SamplingConfig):
    """A diffusion stage's sampling settings and the colour fix (see the module docstring)."""

    low_freq_fix: float = Field(0.0, ge=0.0, le=1.0)
    adain_fix: float = Field(0.0, ge=0.0, le=1.0)
    adain_at: Literal["output", "input"] = "output"


class SuperResConfig(DiffusionStageConfig):
    type: Literal["images.sr"] = "images.sr"
    size: int = Field(64, ge=8)  # output pixels a side
    low_size: int = Field(32, ge=4)  # the input size it is trained on (others are resized too)
    network: UNetConfig = UNetConfig(attention=[])
    diffusion: DiffusionConfig = DiffusionConfig(augmentation=AugmentationConfig(max_level=0.5))
    sampling: SuperResSamplingConfig = SuperResSamplingConfig()

    @model_validator(mode="after")
    def _check_sizes(self) -> SuperResConfig:
        if self.size <= self.low_size:
            raise ValueError(f"size {self.size} must exceed low_size {self.low_size}")
        return self


@STAGES.register("images.sr")
class SuperResStage(DiffusionStage):
    Config = SuperResConfig
    config: SuperResConfig
    consumes: ClassVar[str] = "Images"
    produces: ClassVar[str] = "Images"

    def build_network(self) -> nn.Module:
        cfg = self.config
        return UNetDenoiser(cfg.network, 3, cfg.embed_dim, len(cfg.cond_keys), cond_channels=3, size=cfg.size)

    def sample_shape(self) -> tuple[int, ...]:
        return (3, self.config.size, self.config.size)

    def sample(
        self,
        prev: Any,
        cond: Conditioning,
        *,
        generator: torch.Generator | None = None,
        sampling: SuperResSamplingConfig | dict[str, Any] | None = None,
        callback: StepCallback | None = None,
    ) -> Images:
        s = self.resolve_sampling(sampling)
        out = super().sample(prev, cond, generator=generator, sampling=s, callback=callback)
        if s.low_freq_fix == 0 and s.adain_fix == 0:
            return out
        low = prev.to_tensor().float()
        x = out.to_tensor()
        if s.low_freq_fix > 0:
            size = min(low.shape[-1], self.config.low_size)
            fix = through(low, size, self.config.size) - through(x, size)
            x = (x + s.low_freq_fix * fix).clamp(-1, 1)
        if s.adain_fix > 0:
            ref = resize_images(low, self.config.size) if s.adain_at == "output" else low
            x = x + s.adain_fix * (adain(x, ref) - x)
        return Images.from_tensor(x)

    def condition_input(self, prev: Any) -> torch.Tensor:
        self.check_prev(prev)
        return resize_images(prev.to_tensor(), self.config.size)

    def init_sample(self, prev: Any) -> torch.Tensor:
        """The input image resized to the output size (clean, whatever ``aug_level`` is), where
        ``sampling.strength`` below 1 starts: the stage then refines it (SDEdit) instead of drawing from noise."""
        return self.condition_input(prev)

    def to_output(self, x: torch.Tensor, prev: Any) -> Images:
        if not isinstance(prev, Images):
            raise InputError(f"stage '{self.name}' consumes Images")
        return Images.from_tensor(x.cpu())


def adain(x: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``x [B, C, H, W]`` with each channel's mean and standard deviation over the image set to
    ``reference``'s (same batch and channels), both measured at the reference's size (``x`` resized to it)."""
    at = resize_images(x, reference.shape[-1])
    mean, std = at.mean((2, 3), keepdim=True), at.std((2, 3), keepdim=True)
    ref_mean, ref_std = reference.mean((2, 3), keepdim=True), reference.std((2, 3), keepdim=True)
    return (x - mean) / (std + eps) * ref_std + ref_mean


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """``[B, 3, h, w]`` -> ``[B, 3, size, size]`` (bilinear, antialiased when shrinking)."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    return F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def through(images: torch.Tensor, size: int, out: int | None = None) -> torch.Tensor:
    """``images`` resized to ``size`` and then to ``out`` (their own size by default): what is left of them
    at that resolution."""
    return resize_images(resize_images(images, size), images.shape[-1] if out is None else out)
