"""A CLIP as something the trainer trains: contrastive training of cdm3d's small CLIP on rendered views and
captions of the world, or of a CLIP's text prior (a copy of its image tower tuned, text tower frozen, to land
on the text embedding of an image's caption: :attr:`cdm3d.core.ClipEncoder.text_prior`)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from cdm3d.core import ClipEncoder
from cdm3d.core.stage import split_part
from cdm3d.errors import ConfigError
from cdm3d.training.recipe import ClipTraining


def clip_loss(model: nn.Module, pixels: torch.Tensor, tokens: torch.Tensor, cosine: float = 0.0) -> torch.Tensor:
    """CLIP's symmetric InfoNCE, plus ``cosine`` x the mean (1 - cosine) of matching pairs (a text prior's).
    ``model`` is called (an open_clip CLIP, or its data-parallel wrapper, whose gradient hooks then run)."""
    img, txt, scale = model(pixels, tokens)[:3]  # unit image and text embeddings, exp(logit_scale)
    logits = scale.clamp(max=100) * img @ txt.T
    labels = torch.arange(len(pixels), device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
    if cosine:
        loss = loss + cosine * (1 - (img * txt).sum(-1)).mean()
    return loss


class ClipTrainee(nn.Module):
    """The trainer's view of a CLIP: ``net`` (the open_clip model being trained), :meth:`loss` on a batch of
    ``(pixels, tokens)``, and :meth:`save_weights`. ``encoder`` preprocesses images and tokenizes captions
    for the data source, as the CLIP will in use."""

    def __init__(self, config: ClipTraining, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        if config.init is not None:
            encoder = ClipEncoder.load(config.init)
            if encoder.custom_config != config.model:
                raise ConfigError(f"{config.init} is not a CLIP of this recipe's model config")
        else:
            encoder = ClipEncoder.from_config(config.model, seed=seed)
        prior = config.objective == "text_prior"
        # The prior is a copy of the image tower: the CLIP itself (kept out of the module tree) stays as it was.
        self.__dict__["frozen"] = copy.deepcopy(encoder.model) if prior else None
        self.__dict__["encoder"] = encoder
        self.net = encoder.model.train().requires_grad_(True)
        if config.freeze_text or prior:
            for name, p in self.net.named_parameters():
                if not name.startswith("visual.") and name != "logit_scale":
                    p.requires_grad_(False)

    encoder: ClipEncoder

    @property
    def weights_file(self) -> str:
        return "text_prior.safetensors" if self.config.objective == "text_prior" else "clip.safetensors"

    def loss(
        self,
        pixels: torch.Tensor,
        tokens: torch.Tensor,
        generator: torch.Generator | None = None,
        part: tuple[int, int] | None = None,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """The contrastive loss of a batch (``part``: this data-parallel process's share, its own negatives)."""
        if part is not None:
            sl = split_part(len(pixels), part)
            pixels, tokens = pixels[sl], tokens[sl]
        cosine = self.config.prior_cosine if self.config.objective == "text_prior" else 0.0
        return clip_loss(net or self.net, pixels, tokens.to(pixels.device), cosine)

    def trained_encoder(self) -> ClipEncoder:
        """The CLIP these weights make: the trained CLIP, or (text prior) the initial one with its prior."""
        enc = self.encoder
        if self.frozen is None:
            model, name = copy.deepcopy(self.net), "cdm3d-small-clip"
            return ClipEncoder(model, enc.tokenizer, name, self.config.model, enc.image_mean, enc.image_std)
        out = ClipEncoder(self.frozen, enc.tokenizer, enc.name, enc.custom_config, enc.image_mean, enc.image_std)
        out.text_prior = copy.deepcopy(self.net.visual).eval().requires_grad_(False)
        return out

    def save_weights(self, path: str | Path) -> None:
        encoder = self.trained_encoder()
        if self.frozen is None:
            encoder.save(path)
        else:
            encoder.save_text_prior(path)
