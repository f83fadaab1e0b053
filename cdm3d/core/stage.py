"""The stage protocol and the generic diffusion stage.

A stage turns the previous stage's output (``None`` for the first) into a finer
output, conditioned on the shared :class:`Conditioning`. A modality plugin
subclasses :class:`DiffusionStage` and supplies only the network, the sample
shape, and how the previous output becomes this stage's conditioning input.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from cdm3d.core.augmentation import AugmentationConfig, draw_levels, noise_condition
from cdm3d.core.conditioning import Conditioning
from cdm3d.core.config import StrictConfig, updated, validate
from cdm3d.core.guidance import drop_embeddings, guided
from cdm3d.core.karras import EpsToX0, KarrasConfig, karras_sigmas, sample_heun
from cdm3d.core.sampling import StepCallback, sample_loop
from cdm3d.core.schedulers import (
    KARRAS_SAMPLER,
    NoiseSchedule,
    NoiseScheduleConfig,
    SchedulerName,
    make_scheduler,
)
from cdm3d.errors import ConfigError, InputError, SamplingError


class StageConfig(StrictConfig):
    """Fields every stage config has; ``type`` selects the stage class in the registry."""

    type: str


class Stage(nn.Module, ABC):
    """One step of a cascade.

    Class attributes:
        Config: the stage's typed config class.
        consumes: the kind of output the stage takes from its predecessor
            ("PointClouds"), or ``None`` for a first stage.
        produces: the kind of output it returns.
    """

    Config: ClassVar[type[StageConfig]] = StageConfig
    consumes: ClassVar[str | None] = None
    produces: ClassVar[str] = ""

    def __init__(self, config: StageConfig) -> None:
        super().__init__()
        if not isinstance(config, self.Config):
            raise InputError(f"{type(self).__name__} needs a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.name = config.type

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage:
        return cls(validate(cls.Config, data, f"config of stage '{data.get('type', cls.__name__)}'"))

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def num_steps(self, sampling: Any = None) -> int:
        """How many progress steps :meth:`sample` reports."""
        return 1

    def _settings(self, sampling: Any, default: StrictConfig) -> Any:
        """Sampling settings: ``default`` (the config's) for ``None``, updated by a mapping, or a config of
        ``default``'s type as it is."""
        if sampling is None:
            return default
        if isinstance(sampling, dict):
            return updated(default, sampling, f"sampling settings of stage '{self.name}'")
        if not isinstance(sampling, type(default)):
            raise InputError(f"sampling settings must be a mapping, got {type(sampling).__name__}")
        return sampling

    def check_prev(self, prev: Any) -> None:
        """Raise :class:`InputError` unless ``prev`` is what this stage consumes."""
        if self.consumes is None:
            if prev is not None:
                raise InputError(f"stage '{self.name}' is a first stage and takes no previous output")
            return
        if prev is None or type(prev).__name__ != self.consumes:
            got = "nothing" if prev is None else type(prev).__name__
            raise InputError(f"stage '{self.name}' consumes {self.consumes}, got {got}")

    @abstractmethod
    def sample(
        self,
        prev: Any,
        cond: Conditioning,
        *,
        generator: torch.Generator | None = None,
        sampling: Any = None,
        callback: StepCallback | None = None,
    ) -> Any:
        """This stage's output for a batch (``cond.batch_size`` examples)."""


class TrainableStageConfig(StageConfig):
    """Config of a stage with a network conditioned on CLIP tokens."""

    # Conditioning slots the network reads, in this order (a vector slot is one token, a grid slot its tokens).
    cond_keys: list[str] = ["text"]
    embed_dim: int = Field(512, ge=1)
    # The unconditional input of guidance and of guidance dropout in training: the CLIP's own null embeddings
    # (its empty prompt for text, zeros for images), or zeros for every slot (as Point-E's models were trained).
    null_embedding: Literal["clip", "zeros"] = "clip"
    # Slots a run must give (a stage that reads images only cannot follow a prompt); the rest may be null.
    requires: list[str] = []
    # Tokens of each grid slot the stage reads (Point-E's image grid: 256), so that a run without it (a prompt
    # alone, or training on captions) gives the stage a null grid of the right size: zeros.
    slot_tokens: dict[str, int] = {}

    @model_validator(mode="after")
    def _check_keys(self) -> TrainableStageConfig:
        if not self.cond_keys or len(set(self.cond_keys)) != len(self.cond_keys):
            raise ValueError(f"cond_keys must be non-empty and distinct, got {self.cond_keys}")
        if not set(self.requires) <= set(self.cond_keys):
            raise ValueError(f"requires {self.requires} names slots outside cond_keys {self.cond_keys}")
        if self.slot_tokens and len(self.cond_keys) > 1:
            raise ValueError(f"a grid slot ({sorted(self.slot_tokens)}) must be a stage's only conditioning slot")
        return self


class TrainableStage(Stage):
    """A stage with weights that the generic trainer (``tools/train.py``) can train.

    ``net`` is the module the trainer wraps for data parallelism; :meth:`loss`
    takes a batch as the recipe's data source makes it. The network reads one
    CLIP token per slot of ``config.cond_keys``.
    """

    Config: ClassVar[type[StageConfig]] = TrainableStageConfig
    config: TrainableStageConfig
    net: nn.Module

    def _embeddings(self, cond: Conditioning) -> tuple[torch.Tensor, torch.Tensor]:
        """``(emb, null_emb)``, each ``[B, L, D]`` (the tokens of ``config.cond_keys``) on the stage's device."""
        if not isinstance(cond, Conditioning):
            raise InputError(f"stage '{self.name}' needs a Conditioning, got {type(cond).__name__}")
        cfg = self.config
        missing_nulls = {k: torch.zeros(n, cfg.embed_dim) for k, n in cfg.slot_tokens.items() if k not in cond.null}
        if missing_nulls:
            cond = Conditioning(cond.embeddings, {**cond.null, **missing_nulls}, cond.prompts, dict(cond.meta))
        for key in cfg.cond_keys:
            if cond.width(key) != cfg.embed_dim:
                raise InputError(
                    f"stage '{self.name}' expects {cfg.embed_dim}-d CLIP embeddings, got {cond.width(key)}-d "
                    f"('{key}'); use the CLIP encoder this stage was trained with"
                )
        missing = [key for key in cfg.requires if key not in cond.embeddings]
        if missing:
            given = sorted(cond.embeddings)
            what = "images (ImageTo3D)" if any(k.startswith("image") for k in missing) else "prompts (TextTo3D)"
            raise InputError(
                f"stage '{self.name}' needs the {missing} conditioning, this run gives {given}: it follows {what}"
            )
        device = self.device
        emb = cond.stack(cfg.cond_keys).to(device, torch.float32)
        null = cond.null_stack(cfg.cond_keys).to(device, torch.float32)
        return emb, torch.zeros_like(null) if cfg.null_embedding == "zeros" else null

    @abstractmethod
    def loss(
        self,
        x0: torch.Tensor,
        cond: Conditioning,
        cond_input: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        part: tuple[int, int] | None = None,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """The training loss of a batch.

        Args:
            x0: ``[B, ...]`` training targets.
            cond: the batch's conditioning.
            cond_input: ``[B, ...]`` clean conditioning input (the previous output), if the stage consumes one.
            generator: the source of every random draw, on the CPU, for the whole batch.
            part: ``(rank, world_size)``: draw the randomness for the whole batch, compute the loss on this
                rank's equal slice (data-parallel ranks together compute the single-process loss).
            net: the network to call instead of ``self.net`` (its DDP wrapper).
        """


def split_part(batch: int, part: tuple[int, int]) -> slice:
    """This rank's slice of a batch split evenly over data-parallel processes."""
    rank, world = part
    if batch % world:
        raise InputError(f"batch {batch} does not split evenly over {world} processes")
    return slice(rank * batch // world, (rank + 1) * batch // world)


class SamplingConfig(StrictConfig):
    """Sampling-time settings of a diffusion stage (each can be overridden per call)."""

    scheduler: SchedulerName = "ddim"
    steps: int = Field(32, ge=1, le=1000)
    guidance_scale: float = Field(3.0, ge=0.0, allow_inf_nan=False)
    # [lo, hi): guide only at training timesteps lo <= t < hi, elsewhere one conditional pass (Kynkäänniemi
    # et al. 2024, guidance in a limited interval; it also saves the unconditional passes outside it).
    guidance_interval: list[int] | None = None
    # The guidance scale of the low-noise expert's steps (None: guidance_scale), a stage with an expert only.
    expert_guidance_scale: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    # Conditioning augmentation level at sampling time, in [0, 1].
    aug_level: float = Field(0.0, ge=0.0, le=1.0)
    # SDEdit (Meng et al. 2022; diffusers' image-to-image strength): below 1, start from the stage's own guess
    # of its output (DiffusionStage.init_sample, e.g. the upsampled input of a super-resolution stage) noised
    # to the timestep that fraction of the way into the schedule, and run only the last int(steps * strength)
    # steps. 1: from pure noise. A stage without a guess refuses values below 1.
    strength: float = Field(1.0, gt=0.0, le=1.0)
    check_finite: bool = True
    # Use the stage's low-noise expert (see DiffusionStage.set_expert) below its switch timestep, when it has one.
    expert: bool = True
    # bf16 autocast of the denoiser on CUDA (ignored on the CPU); the solver's state stays fp32.
    autocast: bool = True
    # torch.compile the denoiser (compiled once per stage and mode, then reused; pays off for long or
    # repeated runs). "reduce-overhead" also captures CUDA graphs.
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = "default"
    # The settings of scheduler "pointe-heun" (Point-E's Karras-Heun sampler with churn; steps are Heun steps).
    karras: KarrasConfig = KarrasConfig()

    @model_validator(mode="after")
    def _check_interval(self) -> SamplingConfig:
        iv = self.guidance_interval
        if iv is not None and (len(iv) != 2 or not 0 <= iv[0] < iv[1]):
            raise ValueError(f"guidance_interval must be [lo, hi) with 0 <= lo < hi, got {self.guidance_interval}")
        return self


class DiffusionConfig(StrictConfig):
    """Training-side settings of a diffusion stage."""

    schedule: NoiseScheduleConfig = NoiseScheduleConfig()
    # Probability of replacing the CLIP tokens by the null tokens (trains guidance).
    cond_drop_prob: float = Field(0.1, ge=0.0, le=1.0)
    augmentation: AugmentationConfig = AugmentationConfig()
    # Training timesteps are drawn uniformly from [lo, hi) (default: all of them). A low-noise expert
    # (DiffusionStage.set_expert) is the same stage trained on [0, switch) only.
    timesteps: list[int] | None = None
    # The conditioning input of guidance's unconditional pass, a constant per channel (None: the same input as
    # the conditional pass). Point-E's sampler zeroes its upsampler's low-resolution cloud there.
    null_cond_input: list[float] | None = None

    @model_validator(mode="after")
    def _check_timesteps(self) -> DiffusionConfig:
        if self.timesteps is not None:
            if len(self.timesteps) != 2:
                raise ValueError(f"timesteps must be [lo, hi], got {self.timesteps}")
            lo, hi = self.timesteps
            if not 0 <= lo < hi <= self.schedule.num_train_timesteps:
                raise ValueError(
                    f"timesteps must satisfy 0 <= lo < hi <= {self.schedule.num_train_timesteps}, got [{lo}, {hi})"
                )
        return self

    def timestep_range(self) -> tuple[int, int]:
        lo, hi = self.timesteps or (0, self.schedule.num_train_timesteps)
        return lo, hi


class DiffusionStageConfig(TrainableStageConfig):
    """Config of a diffusion stage; plugins add ``network`` and shape fields."""

    diffusion: DiffusionConfig = DiffusionConfig()
    sampling: SamplingConfig = SamplingConfig()

    @model_validator(mode="after")
    def _check_steps(self) -> DiffusionStageConfig:
        if self.sampling.steps > self.diffusion.schedule.num_train_timesteps:
            raise ValueError("sampling.steps exceeds diffusion.schedule.num_train_timesteps")
        return self


class DiffusionStage(TrainableStage):
    """A generic diffusion stage.

    The network contract (every plugin's denoiser)::

        net(x_t [B, *S], t [B] float timesteps, emb [B, K, D],
            cond [B, *C] | None, cond_level [B] | None) -> prediction [B, *S]

    ``emb`` holds one CLIP token per conditioning slot (``config.cond_keys``),
    ``cond`` is the (noised) previous output as :meth:`condition_input` makes it,
    ``cond_level`` its augmentation level. First stages get ``None`` for both.
    """

    Config: ClassVar[type[StageConfig]] = DiffusionStageConfig
    config: DiffusionStageConfig

    def __init__(self, config: DiffusionStageConfig) -> None:
        super().__init__(config)
        if self.consumes is None and config.diffusion.augmentation.max_level > 0:
            raise InputError(f"stage '{self.name}' has no conditioning input to augment")
        self.net = self.build_network()
        # The training-side forward process; not part of the weights.
        self.noise_schedule = NoiseSchedule(config.diffusion.schedule)
        self.__dict__["expert"] = None  # kept out of the module tree: the expert has its own weights file

    # -- low-noise expert -------------------------------------------------------------
    expert: DiffusionStage | None

    def set_expert(self, expert: DiffusionStage | None) -> None:
        """Denoise with ``expert`` below its switch timestep (eDiff-I's expert denoisers, Balaji et al. 2022).

        ``expert`` is a stage of the same type, output shape and conditioning, trained on timesteps
        ``[0, switch)`` only (``diffusion.timesteps`` in its config). ``None`` removes the expert.
        """
        if expert is not None:
            if type(expert) is not type(self):
                raise InputError(
                    f"stage '{self.name}': an expert must be a {self.config.type} stage, got {expert.config.type}"
                )
            ours, theirs = self.config.diffusion, expert.config.diffusion
            same = (
                expert.sample_shape() == self.sample_shape()
                and expert.config.cond_keys == self.config.cond_keys
                and expert.config.embed_dim == self.config.embed_dim
                and theirs.schedule == ours.schedule
            )
            if not same:
                raise InputError(
                    f"stage '{self.name}': the expert's output shape, conditioning or noise schedule differs from "
                    "the stage's; train the expert from the stage's own config"
                )
            lo, hi = theirs.timestep_range()
            if theirs.timesteps is None or lo != 0 or hi >= ours.schedule.num_train_timesteps:
                raise InputError(
                    f"stage '{self.name}': an expert must be trained on low-noise timesteps only "
                    f"(diffusion.timesteps: [0, switch) with switch < {ours.schedule.num_train_timesteps}), "
                    f"got [{lo}, {hi})"
                )
            own_lo = self.lowest_timestep
            if hi < own_lo:
                raise InputError(
                    f"stage '{self.name}' is trained on timesteps [{own_lo}, ...) and the expert on [0, {hi}): "
                    f"nothing denoises [{hi}, {own_lo}); the expert's range must reach {own_lo}"
                )
            expert.to(self.device).eval()
        self.__dict__["expert"] = expert

    @property
    def lowest_timestep(self) -> int:
        """The lowest timestep this stage was trained on: above 0, it cannot sample without an expert below it."""
        return self.config.diffusion.timestep_range()[0]

    @property
    def expert_switch(self) -> int | None:
        """The timestep below which the expert denoises (``None`` without an expert)."""
        return None if self.expert is None else self.expert.config.diffusion.timestep_range()[1]

    def _apply(self, fn: Any, recurse: bool = True) -> DiffusionStage:
        # .to(), .cpu(), .cuda(), .half() of the stage also apply to its expert.
        super()._apply(fn, recurse)
        if self.expert is not None:
            self.expert._apply(fn, recurse)
        return self

    # -- plugin hooks -----------------------------------------------------------------
    @abstractmethod
    def build_network(self) -> nn.Module:
        """The denoiser, following the network contract above."""

    @abstractmethod
    def sample_shape(self) -> tuple[int, ...]:
        """Shape of one example, without the batch dimension."""

    def condition_input(self, prev: Any) -> torch.Tensor | None:
        """The tensor ``[B, ...]`` this stage is conditioned on, made from ``prev``."""
        self.check_prev(prev)
        return None

    @abstractmethod
    def to_output(self, x: torch.Tensor, prev: Any) -> Any:
        """Wrap the sampled tensor ``x [B, *S]`` into this stage's output type."""

    def training_pair(
        self, x0: torch.Tensor, cond_input: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """A training batch's targets and conditioning input as the network sees them (default: as the data
        source gives them; a plugin whose network works in another frame maps them here)."""
        return x0, cond_input

    def init_sample(self, prev: Any) -> torch.Tensor | None:
        """A guess ``[B, *S]`` of this stage's output made from ``prev``, where ``sampling.strength`` below 1
        starts (``None``: the stage has none and samples from noise only)."""
        return None

    # -- sampling ---------------------------------------------------------------------
    def resolve_sampling(self, sampling: SamplingConfig | dict[str, Any] | None) -> SamplingConfig:
        sampling = self._settings(sampling, self.config.sampling)
        limit = self.config.diffusion.schedule.num_train_timesteps
        if sampling.steps > limit:
            raise ConfigError(f"stage '{self.name}': {sampling.steps} sampling steps exceed its {limit} training steps")
        return sampling

    def num_steps(self, sampling: Any = None) -> int:
        s = self.resolve_sampling(sampling)
        if s.scheduler == KARRAS_SAMPLER:
            return s.steps
        # Heun evaluates the model twice per step and diffusers counts both.
        scheduler = self._scheduler_for(s)
        return len(scheduler.timesteps) - self._start_step(s, scheduler)

    def _start_step(self, s: SamplingConfig, scheduler: Any) -> int:
        """The index into ``scheduler.timesteps`` where sampling at ``s.strength`` begins (diffusers' rule)."""
        if s.strength >= 1:
            return 0
        run = min(int(s.steps * s.strength), s.steps)
        if run < 1:
            raise ConfigError(
                f"stage '{self.name}': strength {s.strength} of {s.steps} steps runs no step; raise either"
            )
        return (s.steps - run) * getattr(scheduler, "order", 1)

    def _scheduler_for(self, s: SamplingConfig) -> Any:
        scheduler = make_scheduler(s.scheduler, self.config.diffusion.schedule)
        scheduler.set_timesteps(s.steps)
        return scheduler

    def _checked_condition(self, prev: Any, batch: int) -> torch.Tensor | None:
        c = self.condition_input(prev)
        if c is None:
            return None
        if c.shape[0] != batch:
            raise InputError(f"stage '{self.name}': previous output has batch {c.shape[0]}, conditioning has {batch}")
        if not torch.isfinite(c).all():
            raise InputError(f"stage '{self.name}': previous output holds NaN or Inf values")
        return c.to(self.device, torch.float32)

    @torch.no_grad()
    def sample(
        self,
        prev: Any,
        cond: Conditioning,
        *,
        generator: torch.Generator | None = None,
        sampling: SamplingConfig | dict[str, Any] | None = None,
        callback: StepCallback | None = None,
    ) -> Any:
        s = self.resolve_sampling(sampling)
        emb, null_emb = self._embeddings(cond)
        batch = emb.shape[0]
        c = self._checked_condition(prev, batch)
        level = None
        if c is not None:
            level = torch.full((batch,), s.aug_level, device=self.device)
            if s.aug_level > 0:
                c = noise_condition(c, level, generator)
        if s.scheduler == KARRAS_SAMPLER:
            x = self._sample_karras(s, emb, null_emb, (c, level), generator, callback)
            return self.to_output(x, prev)
        scheduler = self._scheduler_for(s)
        start = self._start_step(s, scheduler)
        init = self._initial_guess(prev, s) if start else None
        noise = self.draw_noise(batch, generator).to(self.device)
        model_fn, low_noise = self._model_fns(s, emb, null_emb, (c, level))
        use_bf16 = s.autocast and self.device.type == "cuda"
        was_training = self.training
        self.eval()
        try:
            with torch.autocast("cuda", torch.bfloat16, enabled=use_bf16):
                x = sample_loop(
                    model_fn,
                    noise,
                    scheduler,
                    generator=generator,
                    callback=callback,
                    check_finite=s.check_finite,
                    what=f"stage '{self.name}'",
                    low_noise=low_noise,
                    init=init,
                    start=start,
                )
        finally:
            self.train(was_training)
        return self.to_output(x, prev)

    def draw_noise(self, batch: int, generator: torch.Generator | None) -> torch.Tensor:
        """``[batch, *S]`` standard normal noise, drawn on the CPU so a seed gives the same sample on any device.
        A plugin may draw it in another layout (a converted model's, so a seed gives that model's samples)."""
        return torch.randn((batch, *self.sample_shape()), generator=generator)

    def _null_extras(self, extras: tuple[Any, Any]) -> tuple[Any, Any] | None:
        """The conditioning input of guidance's unconditional pass, when the stage replaces it."""
        values, (c, level) = self.config.diffusion.null_cond_input, extras
        if values is None or c is None:
            return None
        if len(values) != c.shape[-1]:
            raise ConfigError(
                f"stage '{self.name}': null_cond_input has {len(values)} channels, the input {c.shape[-1]}"
            )
        return torch.tensor(values, device=c.device, dtype=c.dtype).expand_as(c), level

    def _sample_karras(
        self, s: SamplingConfig, emb: torch.Tensor, null_emb: torch.Tensor, extras: tuple[Any, Any], generator, callback
    ) -> torch.Tensor:
        """Point-E's Karras-Heun sampler (scheduler ``pointe-heun``): guidance on each pass's clamped ``x0``."""
        if s.strength < 1 or (self.expert is not None and s.expert) or s.guidance_interval is not None:
            raise ConfigError(
                f"stage '{self.name}': scheduler {KARRAS_SAMPLER!r} takes no strength below 1, expert or "
                "guidance interval; choose a diffusers scheduler for those"
            )
        if self.config.diffusion.schedule.prediction_type != "epsilon":
            raise ConfigError(f"stage '{self.name}': scheduler {KARRAS_SAMPLER!r} needs an epsilon-prediction stage")
        if self.lowest_timestep > 0:
            raise InputError(
                f"stage '{self.name}' is trained on timesteps [{self.lowest_timestep}, ...) only; it samples with "
                "its low-noise expert, which scheduler 'pointe-heun' does not take"
            )
        k, batch, scale = s.karras, emb.shape[0], s.guidance_scale
        net = self._compiled_net(s.compile_mode) if s.compile else self.net
        to_x0 = EpsToX0(self.noise_schedule.alphas_cumprod_f64, k.clip_denoised)
        if scale == 1.0:
            denoise = to_x0(lambda x, t: net(x, t.float(), emb, *extras))
        else:
            both = guided(net, emb, null_emb, scale, extras, null_extras=self._null_extras(extras), combine=False)
            pair = to_x0(lambda x, t: both(x, t.float()))

            def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
                cond, uncond = pair(torch.cat([x, x]), torch.cat([sigma, sigma])).chunk(2)
                return uncond + scale * (cond - uncond)

        sigmas = karras_sigmas(s.steps, k.sigma_min, k.sigma_max, k.rho).to(self.device)
        x = self.draw_noise(batch, generator).to(self.device) * k.sigma_max

        def noise() -> torch.Tensor:
            return self.draw_noise(batch, generator).to(self.device)

        was_training = self.training
        self.eval()
        try:
            with torch.autocast("cuda", torch.bfloat16, enabled=s.autocast and self.device.type == "cuda"):
                x = sample_heun(denoise, x, sigmas, noise, s_churn=k.s_churn, callback=callback)
        finally:
            self.train(was_training)
        if s.check_finite and not torch.isfinite(x).all():
            raise SamplingError(f"stage '{self.name}': non-finite values in the sample; lower the guidance scale")
        return x

    def _initial_guess(self, prev: Any, s: SamplingConfig) -> torch.Tensor:
        """Where SDEdit (``strength`` below 1) starts: the stage's own guess of its output."""
        init = self.init_sample(prev)
        if init is None:
            raise InputError(
                f"stage '{self.name}' has no initial guess of its output to start from; "
                f"sampling.strength must be 1, got {s.strength}"
            )
        return init.to(self.device, torch.float32)

    def _model_fns(
        self, s: SamplingConfig, emb: torch.Tensor, null_emb: torch.Tensor, cond: tuple[Any, Any]
    ) -> tuple[Any, tuple[int, Any] | None]:
        """The guided model function, and ``(switch, fn)`` of the low-noise expert when it denoises."""
        interval = None if s.guidance_interval is None else tuple(s.guidance_interval)
        net = self._compiled_net(s.compile_mode) if s.compile else self.net
        model_fn = guided(net, emb, null_emb, s.guidance_scale, cond, interval, self._null_extras(cond))
        if self.lowest_timestep > 0 and (self.expert is None or not s.expert):
            raise InputError(
                f"stage '{self.name}' is trained on timesteps [{self.lowest_timestep}, ...) only and needs its "
                "low-noise expert below that; load the cascade it was assembled with and leave sampling.expert on"
            )
        if self.expert is None or not s.expert:
            return model_fn, None
        expert_net = self.expert._compiled_net(s.compile_mode) if s.compile else self.expert.net
        scale = s.guidance_scale if s.expert_guidance_scale is None else s.expert_guidance_scale
        expert_fn = guided(expert_net, emb, null_emb, scale, cond, interval, self._null_extras(cond))
        return model_fn, (self.expert_switch, expert_fn)

    def _compiled_net(self, mode: str) -> Any:
        cache = self.__dict__.setdefault("_compiled", {})  # kept out of the module tree and the state dict
        if mode not in cache:
            cache[mode] = torch.compile(self.net, mode=mode, dynamic=False)
        return cache[mode]

    # -- training ---------------------------------------------------------------------
    def loss(
        self,
        x0: torch.Tensor,
        cond: Conditioning,
        cond_input: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        part: tuple[int, int] | None = None,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """The denoising loss on a batch.

        Args:
            x0: ``[B, *S]`` clean training targets.
            cond: the batch's conditioning (slots missing per example are null rows).
            cond_input: ``[B, ...]`` clean conditioning input (e.g. the coarse cloud),
                noised here by conditioning augmentation; ``None`` for first stages.
            generator: the source of every random draw (timesteps, noise, guidance
                dropout, augmentation levels), drawn on the CPU for the whole batch.
            part: ``(rank, world_size)``: draw the randomness for the whole batch,
                then compute the loss on this rank's equal slice only. Data-parallel
                ranks then together compute exactly the single-process loss.
            net: the network to call instead of ``self.net`` (its DDP wrapper).
        """
        if (cond_input is None) != (self.consumes is None):
            raise InputError(f"stage '{self.name}': cond_input must be given exactly when the stage consumes one")
        x0, cond_input = self.training_pair(x0, cond_input)
        emb, null_emb = self._embeddings(cond)
        emb = drop_embeddings(emb, null_emb, self.config.diffusion.cond_drop_prob, generator)
        batch, device = x0.shape[0], x0.device
        t = torch.randint(*self.config.diffusion.timestep_range(), (batch,), generator=generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device, x0.dtype)
        level = None
        if cond_input is not None:
            level = draw_levels(self.config.diffusion.augmentation, batch, generator).to(device)
            cond_input = noise_condition(cond_input, level, generator)
        if part is not None:
            sl = split_part(batch, part)
            x0, noise, t, emb = x0[sl], noise[sl], t[sl], emb[sl]
            cond_input = None if cond_input is None else cond_input[sl]
            level = None if level is None else level[sl]
        return self.loss_at(x0, emb, cond_input, level, t, noise, net)

    def loss_at(
        self,
        x0: torch.Tensor,
        emb: torch.Tensor,
        cond_input: torch.Tensor | None,
        level: torch.Tensor | None,
        t: torch.Tensor,
        noise: torch.Tensor,
        net: nn.Module | None = None,
    ) -> torch.Tensor:
        """The denoising loss of targets ``x0`` noised by ``noise`` to timesteps ``t``, given the tokens and the
        (augmented) conditioning input, all as the network sees them: the mean squared error of the prediction."""
        schedule = self.noise_schedule
        x_t = schedule.add_noise(x0, noise, t)
        pred = (net or self.net)(x_t, t.float(), emb, cond_input, level)
        return F.mse_loss(pred.float(), schedule.target(x0, noise, t).float())
