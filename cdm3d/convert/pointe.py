"""OpenAI's released Point-E checkpoints as cdm3d stages, and a cascade folder of them.

Point-E (Nichol et al. 2022) released a text-vector base model, three image-grid base models, an upsampler and
an SDF model, each a ``torch.save`` of a plain state dict. :func:`convert_pointe` reads them with
``torch.load(weights_only=True)`` only (a file that would need code to load is refused) and maps each onto the
options of cdm3d's own stages (``points.coarse``, ``points.upsample``, ``mesh.sdf``: Point-E's GELU time MLP,
CLIP conditioning, zero null conditioning, noise schedules, z-up frame, point counts and Karras-Heun sampler),
so every cdm3d feature works on them. cdm3d neither downloads nor ships these weights: their terms are OpenAI's.
"""

from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import Any, Literal

import torch

from cdm3d.core.stage import Stage
from cdm3d.core.stage_io import build_stage
from cdm3d.errors import CheckpointError, InputError

Kind = Literal["textvec", "grid", "upsample", "sdf"]
Slot = Literal["base", "upsampler", "sdf"]

# Where users get the files (Point-E's models/download.py); cdm3d never fetches them.
DOWNLOADS = {
    "base_40m_textvec.pt": "https://openaipublic.azureedge.net/main/point-e/base_40m_textvec.pt",
    "base_40m.pt": "https://openaipublic.azureedge.net/main/point-e/base_40m.pt",
    "base_300m.pt": "https://openaipublic.azureedge.net/main/point-e/base_300m.pt",
    "base_1b.pt": "https://openaipublic.azureedge.net/main/point-e/base_1b.pt",
    "upsample_40m.pt": "https://openaipublic.azureedge.net/main/point-e/upsample_40m.pt",
    "sdf.pt": "https://openaipublic.azureedge.net/main/point-e/sdf.pt",
}
KIND_NAMES = {
    "textvec": "a text-conditioned base model (base_40m_textvec.pt)",
    "grid": "an image-conditioned base model (base_40m.pt, base_300m.pt or base_1b.pt)",
    "upsample": "the upsampler (upsample_40m.pt)",
    "sdf": "the SDF model (sdf.pt)",
}
SLOT_KINDS: dict[Slot, tuple[str, ...]] = {"base": ("textvec", "grid"), "upsampler": ("upsample",), "sdf": ("sdf",)}
TEXT_DIM, GRID_DIM, GRID_TOKENS = 768, 1024, 256  # OpenAI CLIP ViT-L/14: text/image vectors, patch tokens
HEAD_WIDTH = 64  # every released model has heads of 64 channels (512 / 8, 1024 / 16, 2048 / 32, 256 / 4)
CHANNEL_SCALES = [2.0, 2.0, 2.0, 0.007843137255, 0.007843137255, 0.007843137255]
CHANNEL_BIASES = [0.0, 0.0, 0.0, -1.0, -1.0, -1.0]
CLIP = {"model": "ViT-L-14-quickgelu", "pretrained": "openai"}


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a Point-E ``.pt`` file, read without unpickling code."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Point-E checkpoint not found: {path}")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:unsupported|Unsupported global:) GLOBAL (\S+)", str(err))
        if found is None:
            raise CheckpointError(f"cannot read {path} as a Point-E checkpoint: it is not a torch file") from None
        raise CheckpointError(
            f"refused {path}: loading it would call {found.group(1)} (a pickle that runs code), and cdm3d reads "
            "plain tensors only; Point-E's released files hold tensors alone"
        ) from None
    except Exception as err:  # not a torch file at all, truncated, a TorchScript archive, ...
        raise CheckpointError(f"cannot read {path} as a Point-E checkpoint: {type(err).__name__}: {err}") from None
    if not isinstance(data, dict) or not data or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise CheckpointError(f"{path} is not a Point-E checkpoint: it does not hold a state dict of tensors")
    return data


def checkpoint_kind(tensors: dict[str, torch.Tensor], what: str) -> Kind:
    """Which of Point-E's models a state dict is, by its key layout."""
    if "encoder_input_proj.weight" in tensors:
        return "sdf"
    if "cond_point_proj.weight" in tensors:
        return "upsample"
    if "clip_embed.0.weight" in tensors:
        return "grid"
    if "clip_embed.weight" in tensors:
        return "textvec"
    sample = ", ".join(sorted(tensors)[:5])
    raise CheckpointError(f"{what} is not a Point-E checkpoint: none of its models has this key layout ({sample}, ...)")


def _layers(tensors: dict[str, torch.Tensor], prefix: str) -> int:
    found = {int(m.group(1)) for k in tensors if (m := re.match(rf"{re.escape(prefix)}\.(\d+)\.", k))}
    return max(found) + 1 if found else 0


def _block_shapes(prefix: str, w: int, cross: bool) -> dict[str, tuple[int, ...]]:
    """The tensors of one residual block of width ``w`` (self- or cross-attention)."""
    out: dict[str, tuple[int, ...]] = {}
    attn = {"c_q": (w, w), "c_kv": (2 * w, w)} if cross else {"c_qkv": (3 * w, w)}
    for name, shape in {**attn, "c_proj": (w, w)}.items():
        out |= {f"{prefix}.attn.{name}.weight": shape, f"{prefix}.attn.{name}.bias": shape[:1]}
    norms = ("ln_1", "ln_2", "ln_3") if cross else ("ln_1", "ln_2")
    for name in norms:
        out |= {f"{prefix}.{name}.weight": (w,), f"{prefix}.{name}.bias": (w,)}
    out |= {f"{prefix}.mlp.c_fc.weight": (4 * w, w), f"{prefix}.mlp.c_fc.bias": (4 * w,)}
    out |= {f"{prefix}.mlp.c_proj.weight": (w, 4 * w), f"{prefix}.mlp.c_proj.bias": (w,)}
    return out


def _linear(name: str, n_out: int, n_in: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (n_out, n_in), f"{name}.bias": (n_out,)}


def expected_shapes(kind: Kind, width: int, layers: int, decoder_layers: int = 0) -> dict[str, tuple[int, ...]]:
    """Every tensor of a Point-E model of ``kind`` at a geometry, with its shape."""
    w = width
    if kind == "sdf":
        out = _linear("encoder_input_proj", w, 3) | _linear("decoder_input_proj", w, 3) | _linear("output_proj", 1, w)
        for i in range(layers):
            out |= _block_shapes(f"encoder.resblocks.{i}", w, cross=False)
        for i in range(decoder_layers):
            out |= _block_shapes(f"decoder.resblocks.{i}", w, cross=True)
        return out | {"ln_post.weight": (w,), "ln_post.bias": (w,)}
    out = _linear("input_proj", w, 6) | _linear("output_proj", 12, w)
    out |= _linear("time_embed.c_fc", 4 * w, w) | _linear("time_embed.c_proj", w, 4 * w)
    out |= {f"{n}.{p}": (w,) for n in ("ln_pre", "ln_post") for p in ("weight", "bias")}
    for i in range(layers):
        out |= _block_shapes(f"backbone.resblocks.{i}", w, cross=False)
    if kind == "textvec":
        return out | _linear("clip_embed", w, TEXT_DIM)
    out |= {"clip_embed.0.weight": (GRID_DIM,), "clip_embed.0.bias": (GRID_DIM,)} | _linear("clip_embed.1", w, GRID_DIM)
    if kind == "upsample":
        out |= _linear("cond_point_proj", w, 6) | {"channel_scales": (6,), "channel_biases": (6,)}
    return out


def check_tensors(tensors: dict[str, torch.Tensor], kind: Kind, what: str) -> tuple[int, int, int]:
    """``(width, layers, decoder_layers)`` of a state dict, after checking every key and shape it must have."""
    key = "encoder_input_proj.weight" if kind == "sdf" else "input_proj.weight"
    width = int(tensors[key].shape[0])
    layers = _layers(tensors, "encoder.resblocks" if kind == "sdf" else "backbone.resblocks")
    decoder_layers = _layers(tensors, "decoder.resblocks") if kind == "sdf" else 0
    if width % HEAD_WIDTH:
        raise CheckpointError(f"{what}: width {width} is not a multiple of Point-E's head width {HEAD_WIDTH}")
    expected = expected_shapes(kind, width, layers, decoder_layers)
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = [f"missing {_names(missing)}" if missing else "", f"unexpected {_names(extra)}" if extra else ""]
        raise CheckpointError(f"{what} does not match {KIND_NAMES[kind]}: " + "; ".join(p for p in parts if p))
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise CheckpointError(
                f"{what}: tensor {name} has shape {tuple(tensors[name].shape)}, expected {shape} for a model of "
                f"width {width} (mismatched widths)"
            )
    if kind == "upsample":
        for name, values in (("channel_scales", CHANNEL_SCALES), ("channel_biases", CHANNEL_BIASES)):
            if not torch.allclose(tensors[name].float(), torch.tensor(values), atol=1e-6):
                raise CheckpointError(f"{what}: {name} is not Point-E's point layout {values}")
    return width, layers, decoder_layers


def _names(keys: list[str]) -> str:
    return ", ".join(keys[:4]) + (f" and {len(keys) - 4} more" if len(keys) > 4 else "")


def stage_config(kind: Kind, width: int, layers: int, decoder_layers: int = 0, image: bool = False) -> dict:
    """The cdm3d stage config of a Point-E model: Point-E's options of ``points.coarse`` / ``points.upsample`` /
    ``mesh.sdf``, with Point-E's sampling defaults (its text pipeline's; ``image``: its image pipeline's)."""
    if kind == "sdf":
        return _sdf_config(width, layers, decoder_layers)
    heads = width // HEAD_WIDTH
    schedule = {"num_train_timesteps": 1024, "beta_schedule": "squaredcos_cap_v2", "prediction_type": "epsilon"}
    karras = {"sigma_min": 1e-3, "sigma_max": 120.0, "rho": 7.0, "s_churn": 3.0}
    config: dict[str, Any] = {
        "type": "points.coarse",
        "null_embedding": "zeros",
        "frame": "pointe",
        "num_points": 1024,
        "network": {"width": width, "layers": layers, "heads": heads, "time_mlp": "gelu", "clip_norm": True},
        "diffusion": {"schedule": schedule, "cond_drop_prob": 0.1},
        "sampling": {"scheduler": "pointe-heun", "steps": 64, "guidance_scale": 3.0, "karras": karras},
        "cond_keys": ["image_grid"],
        "requires": ["image_grid"],
        "embed_dim": GRID_DIM,
        "slot_tokens": {"image_grid": GRID_TOKENS},
    }
    if kind == "textvec":
        config |= {"cond_keys": ["text"], "requires": ["text"], "embed_dim": TEXT_DIM, "slot_tokens": {}}
        config["network"]["clip_norm"] = False
    if kind == "upsample":
        # Ho et al.'s linear betas scaled by 1000 / 1024; the sampler zeroes the low-res cloud in its
        # unconditional pass (in cdm3d's [-1, 1] colours: black points at the origin).
        schedule = {**schedule, "beta_schedule": "linear", "beta_start": 0.1 / 1024, "beta_end": 20.0 / 1024}
        config["diffusion"] |= {"schedule": schedule, "augmentation": {"max_level": 0.0}}
        config["diffusion"]["null_cond_input"] = [0.0, 0.0, 0.0, -1.0, -1.0, -1.0]
        config["sampling"] |= {"guidance_scale": 3.0 if image else 1.0, "karras": {**karras, "sigma_max": 160.0}}
        config["sampling"]["karras"]["s_churn"] = 0.0
        config["network"]["level_token"] = False
        config |= {"type": "points.upsample", "num_points": 3072, "coarse_points": 1024, "requires": []}
        config["exact_coarse_points"] = True
    return config


def _sdf_config(width: int, layers: int, decoder_layers: int) -> dict:
    network = {"arch": "pointe", "width": width, "heads": width // HEAD_WIDTH, "fourier": 0}
    network |= {"encoder_layers": layers, "decoder_layers": decoder_layers}
    sampling = {"grid": 128, "marching": "pointe", "refine": False, "min_component": 0.0, "smooth": 0, "chunk": 4096}
    return {
        "type": "mesh.sdf",
        "cond_keys": ["text"],  # read by nothing: Point-E's SDF model sees the cloud alone
        "embed_dim": TEXT_DIM,
        "frame": "pointe",
        "input_points": 4096,
        "bound": 1.02,  # Point-E's grid spans 1.02 of its units a side, and cdm3d's units are twice its
        "network": network,
        "sampling": sampling,
    }


def _heads_major(weight: torch.Tensor, heads: int, parts: int) -> torch.Tensor:
    """Point-E lays out fused projections per head ([q_h k_h v_h] ...); cdm3d part by part ([q ... k ... v ...])."""
    rest = weight.shape[1:]
    return weight.reshape(heads, parts, -1, *rest).transpose(0, 1).reshape(weight.shape)


def _block(src: dict, prefix: str, dst: str, heads: int, cross: bool) -> dict[str, torch.Tensor]:
    """One residual block's tensors under cdm3d's names."""
    out = {}
    for p in ("weight", "bias"):
        if cross:
            out[f"{dst}.q.{p}"] = src[f"{prefix}.attn.c_q.{p}"]
            out[f"{dst}.kv.{p}"] = _heads_major(src[f"{prefix}.attn.c_kv.{p}"], heads, 2)
            out[f"{dst}.ln_q.{p}"], out[f"{dst}.ln_kv.{p}"] = src[f"{prefix}.ln_1.{p}"], src[f"{prefix}.ln_2.{p}"]
            out[f"{dst}.ln2.{p}"] = src[f"{prefix}.ln_3.{p}"]
        else:
            out[f"{dst}.qkv.{p}"] = _heads_major(src[f"{prefix}.attn.c_qkv.{p}"], heads, 3)
            out[f"{dst}.ln1.{p}"], out[f"{dst}.ln2.{p}"] = src[f"{prefix}.ln_1.{p}"], src[f"{prefix}.ln_2.{p}"]
        out[f"{dst}.proj.{p}"] = src[f"{prefix}.attn.c_proj.{p}"]
        out[f"{dst}.mlp.0.{p}"] = src[f"{prefix}.mlp.c_fc.{p}"]
        out[f"{dst}.mlp.2.{p}"] = src[f"{prefix}.mlp.c_proj.{p}"]
    return out


def point_tensors(src: dict[str, torch.Tensor], kind: Kind, width: int, layers: int) -> dict[str, torch.Tensor]:
    """A point model's state dict under the names of cdm3d's ``PointDenoiser`` (``net.*`` of the stage)."""
    heads = width // HEAD_WIDTH
    out = {"slot_embed": torch.zeros(1, width)}  # Point-E adds nothing to its CLIP tokens
    for p in ("weight", "bias"):
        out[f"input_proj.{p}"] = src[f"input_proj.{p}"]
        out[f"time_embed.mlp.0.{p}"] = src[f"time_embed.c_fc.{p}"]
        out[f"time_embed.mlp.2.{p}"] = src[f"time_embed.c_proj.{p}"]
        out[f"ln_pre.{p}"], out[f"ln_post.{p}"] = src[f"ln_pre.{p}"], src[f"ln_post.{p}"]
        out[f"output_proj.{p}"] = src[f"output_proj.{p}"][:6]  # the epsilon half; the variance half is unused
        if kind == "textvec":
            # Point-E scales the unit CLIP vector by sqrt(768) before its projection: folded into the weights.
            scale = math.sqrt(TEXT_DIM) if p == "weight" else 1.0
            out[f"clip_proj.{p}"] = src[f"clip_embed.{p}"] * scale
        else:
            out[f"clip_norm.{p}"], out[f"clip_proj.{p}"] = src[f"clip_embed.0.{p}"], src[f"clip_embed.1.{p}"]
        if kind == "upsample":
            out[f"cond_proj.{p}"] = src[f"cond_point_proj.{p}"]
    for i in range(layers):
        out |= _block(src, f"backbone.resblocks.{i}", f"blocks.{i}", heads, cross=False)
    return out


def sdf_tensors(src: dict[str, torch.Tensor], width: int, layers: int, decoder_layers: int) -> dict[str, torch.Tensor]:
    """Point-E's SDF model under the names of cdm3d's ``PointESDFNet``."""
    heads = width // HEAD_WIDTH
    out = {}
    for p in ("weight", "bias"):
        out[f"point_proj.{p}"], out[f"query_proj.{p}"] = src[f"encoder_input_proj.{p}"], src[f"decoder_input_proj.{p}"]
        out[f"ln_out.{p}"], out[f"head.{p}"] = src[f"ln_post.{p}"], src[f"output_proj.{p}"]
    for i in range(layers):
        out |= _block(src, f"encoder.resblocks.{i}", f"encoder.{i}", heads, cross=False)
    for i in range(decoder_layers):
        out |= _block(src, f"decoder.resblocks.{i}", f"decoder.{i}", heads, cross=True)
    return out


def pointe_stage(path: str | Path, slot: Slot, image: bool = False) -> Stage:
    """A cdm3d stage holding the Point-E model in ``path``, refused unless it is the kind ``slot`` takes.
    ``image``: the sampling defaults of Point-E's image pipeline (guidance on the upsampler too)."""
    what = str(path)
    tensors = read_checkpoint(path)
    kind = checkpoint_kind(tensors, what)
    if kind not in SLOT_KINDS[slot]:
        wanted = " or ".join(KIND_NAMES[k] for k in SLOT_KINDS[slot])
        raise InputError(f"{what} is {KIND_NAMES[kind]}, given as the {slot}; the {slot} must be {wanted}")
    width, layers, decoder_layers = check_tensors(tensors, kind, what)
    stage = build_stage(stage_config(kind, width, layers, decoder_layers, image), f"converted {what}")
    if kind == "sdf":
        converted = sdf_tensors(tensors, width, layers, decoder_layers)
    else:
        converted = point_tensors(tensors, kind, width, layers)
    missing, unexpected = stage.net.load_state_dict({k: v.float() for k, v in converted.items()}, strict=False)
    if missing or unexpected:  # a mapping bug, never the user's file: every key was checked above
        raise CheckpointError(f"{what}: conversion left {missing or unexpected} unmatched")
    return stage.eval()


def convert_pointe(
    out: str | Path,
    *,
    base: str | Path,
    upsampler: str | Path | None = None,
    sdf: str | Path | None = None,
    clip_checkpoint: str | Path | None = None,
    overwrite: bool = False,
) -> Path:
    """Write a cdm3d cascade folder of Point-E's models: ``base`` (points.coarse, 1024 points), ``upsample``
    (points.upsample, +3072 points) and ``mesh`` (mesh.sdf), each given as a Point-E ``.pt`` file; the CLIP is
    OpenAI's ViT-L/14 through open_clip, from its local cache, or ``clip_checkpoint`` (a local open_clip file)."""
    from cdm3d.core.cascade import Cascade
    from cdm3d.core.folder import ClipRef

    base_stage = pointe_stage(base, "base")
    image = base_stage.config.cond_keys == ["image_grid"]
    stages = [("base", base_stage)]
    if upsampler is not None:
        stages.append(("upsample", pointe_stage(upsampler, "upsampler", image=image)))
    if sdf is not None:
        if upsampler is None:
            raise InputError("Point-E's SDF model meshes the upsampler's 4096-point clouds: give the upsampler too")
        stages.append(("mesh", pointe_stage(sdf, "sdf")))
    ref = dict(CLIP)
    if clip_checkpoint is not None:
        path = Path(clip_checkpoint).resolve()
        if not path.is_file():
            raise InputError(f"CLIP checkpoint not found: {path}")
        ref = {"model": CLIP["model"], "checkpoint": str(path)}
    cascade = Cascade(stages, clip=None, clip_ref=ClipRef(**ref))
    return cascade.save_pretrained(out, overwrite=overwrite)
