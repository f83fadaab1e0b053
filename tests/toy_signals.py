"""A toy modality defined only in the tests: 1-D signals.

Four classes, each a sinusoid of its own frequency with a random phase. The
coarse stage draws a 16-sample signal from a class embedding; the upsampling
stage draws the 32-sample signal whose 2x average-pooling is the coarse one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from cdm3d.core import STAGES, Conditioning, DiffusionStage, DiffusionStageConfig, SelectorStage, SelectorStageConfig
from cdm3d.core.config import StrictConfig
from cdm3d.errors import InputError

EMBED_DIM = 16
NUM_CLASSES = 4
FINE = 32
COARSE = 16


@dataclass
class Signals:
    """values: [B, L] float32."""

    values: torch.Tensor

    def __getitem__(self, rows: torch.Tensor) -> Signals:
        return Signals(self.values[rows])


class ToyNetConfig(StrictConfig):
    hidden: int = 128


class ToyNet(nn.Module):
    """An MLP obeying the denoiser contract, for [B, L] signals."""

    def __init__(self, length: int, cond_length: int, num_tokens: int, hidden: int) -> None:
        super().__init__()
        self.cond_length = cond_length
        in_dim = length + 16 + num_tokens * EMBED_DIM + (length + 1 if cond_length else 0)
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, length)
        )
        self.seen_levels: list[torch.Tensor] = []

    def forward(self, x, t, emb, cond=None, cond_level=None):
        freqs = torch.exp(torch.linspace(0, math.log(1000), 8, device=x.device))
        angles = t[:, None] / 1000 * freqs[None] * 10
        parts = [x, torch.sin(angles), torch.cos(angles), emb.flatten(1)]
        if self.cond_length:
            self.seen_levels.append(cond_level.detach().clone())
            parts += [cond.repeat_interleave(x.shape[1] // cond.shape[1], dim=1), cond_level[:, None]]
        return self.mlp(torch.cat(parts, dim=1))


class ToyCoarseConfig(DiffusionStageConfig):
    type: Literal["toy.coarse"] = "toy.coarse"
    embed_dim: int = EMBED_DIM
    network: ToyNetConfig = ToyNetConfig()


class ToyUpsampleConfig(DiffusionStageConfig):
    type: Literal["toy.upsample"] = "toy.upsample"
    embed_dim: int = EMBED_DIM
    network: ToyNetConfig = ToyNetConfig()


@STAGES.register("toy.coarse")
class ToyCoarseStage(DiffusionStage):
    Config = ToyCoarseConfig
    produces: ClassVar[str] = "Signals"

    def build_network(self) -> nn.Module:
        return ToyNet(COARSE, 0, len(self.config.cond_keys), self.config.network.hidden)

    def sample_shape(self) -> tuple[int, ...]:
        return (COARSE,)

    def to_output(self, x: torch.Tensor, prev: Any) -> Signals:
        return Signals(x.float().cpu())


@STAGES.register("toy.upsample")
class ToyUpsampleStage(DiffusionStage):
    Config = ToyUpsampleConfig
    consumes: ClassVar[str] = "Signals"
    produces: ClassVar[str] = "Signals"

    def build_network(self) -> nn.Module:
        return ToyNet(FINE, COARSE, len(self.config.cond_keys), self.config.network.hidden)

    def sample_shape(self) -> tuple[int, ...]:
        return (FINE,)

    def condition_input(self, prev: Any) -> torch.Tensor:
        self.check_prev(prev)
        if prev.values.ndim != 2 or prev.values.shape[1] != COARSE:
            raise InputError(f"toy.upsample needs coarse signals [B, {COARSE}], got {tuple(prev.values.shape)}")
        return prev.values

    def to_output(self, x: torch.Tensor, prev: Any) -> Signals:
        return Signals(x.float().cpu())


class ToyCritic(nn.Module):
    """An MLP embedding a fine signal into the class-embedding space (the selector network contract)."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FINE, hidden), nn.SiLU(), nn.Linear(hidden, EMBED_DIM))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


class ToySelectConfig(SelectorStageConfig):
    type: Literal["toy.select"] = "toy.select"
    embed_dim: int = EMBED_DIM
    network: ToyNetConfig = ToyNetConfig()


@STAGES.register("toy.select")
class ToySelectStage(SelectorStage):
    Config = ToySelectConfig
    consumes: ClassVar[str] = "Signals"
    produces: ClassVar[str] = "Signals"

    def __init__(self, config: ToySelectConfig) -> None:
        super().__init__(config)
        self.net = ToyCritic(config.network.hidden)

    def read(self, prev: Any, generator: torch.Generator | None) -> torch.Tensor:
        if prev.values.ndim != 2 or prev.values.shape[1] != FINE:
            raise InputError(f"toy.select reads fine signals [B, {FINE}], got {tuple(prev.values.shape)}")
        return prev.values

    def train_input(self, x0: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return x0 + 0.1 * torch.randn(x0.shape, generator=generator)


# -- the toy world ---------------------------------------------------------------------
def class_embeddings() -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    return torch.nn.functional.normalize(torch.randn(NUM_CLASSES, EMBED_DIM, generator=g), dim=-1)


def conditioning(labels: torch.Tensor) -> Conditioning:
    emb = class_embeddings()[labels]
    return Conditioning({"text": emb}, {"text": torch.zeros(EMBED_DIM)})


def fine_signals(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """[B, FINE]: class k is sin((k + 1) * 2 pi x + phase), phase uniform."""
    x = torch.linspace(0, 1, FINE + 1)[:-1]
    phase = torch.rand(labels.shape[0], 1, generator=generator) * 2 * math.pi
    return torch.sin((labels[:, None] + 1).float() * 2 * math.pi * x[None] + phase)


def coarse_of(fine: torch.Tensor) -> torch.Tensor:
    return fine.view(fine.shape[0], COARSE, 2).mean(-1)


def classify(signals: torch.Tensor) -> torch.Tensor:
    """Dominant frequency (1..4) minus one: the class a signal looks like."""
    spectrum = torch.fft.rfft(signals - signals.mean(1, keepdim=True), dim=1).abs()
    return spectrum[:, 1 : NUM_CLASSES + 1].argmax(1)


def train_toy(stage: DiffusionStage | SelectorStage, steps: int = 400, batch: int = 64, seed: int = 0) -> list[float]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(stage.parameters(), lr=2e-3)
    losses = []
    stage.train()
    for _ in range(steps):
        labels = torch.randint(0, NUM_CLASSES, (batch,), generator=g)
        fine = fine_signals(labels, g)
        if stage.consumes is None or isinstance(stage, SelectorStage):
            loss = stage.loss(coarse_of(fine) if stage.consumes is None else fine, conditioning(labels), generator=g)
        else:
            loss = stage.loss(fine, conditioning(labels), coarse_of(fine), generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    stage.eval()
    return losses
