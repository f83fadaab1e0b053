"""A transformer over points in the manner of Point-E.

The CLIP tokens, the timestep and (for upsamplers) the conditioning cloud enter
as extra tokens; the points carry no positional encoding, so the network is
permutation-equivariant over points. Attention runs through
``scaled_dot_product_attention`` (flash attention on CUDA).

With ``local_k > 0`` each transformer block is followed by a local block in the
manner of EdgeConv (Wang et al. 2019): every point aggregates (max) the features
of its ``local_k`` nearest neighbours in the noisy input, with their offsets.
Global attention decides the shape; the local blocks let a small network see
where the surface is near each point, which is what the low-noise steps need
(fine denoising). Still permutation-equivariant: neighbours are found by
distance, not by index. The local blocks' outputs start at zero, so a network
with them starts as the same function as one without (warm starts keep it).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from cdm3d.core.config import StrictConfig
from cdm3d.models.embeddings import ScalarEmbedding


class PointTransformerConfig(StrictConfig):
    """Geometry of the denoiser; Point-E's base40M is width 512, 12 layers, 8 heads."""

    width: int = Field(128, ge=8)
    layers: int = Field(4, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    # Nearest neighbours each point aggregates after every block (0: global attention only).
    local_k: int = Field(0, ge=0)
    local_width: int = Field(64, ge=1)  # channels of the neighbour features
    local_layers: int = Field(0, ge=0)  # local blocks after the last this many blocks (0: after every block)
    # Point-E's conventions, for converted models: GELU in the time MLP, a LayerNorm on the CLIP tokens before
    # their projection (its image-grid models), and no augmentation-level token on the conditioning cloud.
    time_mlp: Literal["silu", "gelu"] = "silu"
    clip_norm: bool = False
    level_token: bool = True

    @model_validator(mode="after")
    def _check(self) -> PointTransformerConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = rearrange(self.qkv(self.ln1(x)), "b n (three h d) -> three b h n d", three=3, h=self.heads)
        attn = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.proj(rearrange(attn, "b h n d -> b n (h d)"))
        return x + self.mlp(self.ln2(x))


class LocalBlock(nn.Module):
    """Max over each point's nearest neighbours of ``GELU(A h_j + B (p_j - p_i))``, projected, added."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(width)
        self.feat = nn.Linear(width, hidden)
        self.offset = nn.Linear(3, hidden)
        self.proj = nn.Linear(hidden, width)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, pos: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """``h [B, N, W]``, ``pos [B, N, 3]``, ``idx [B, N, k]`` (neighbour indices) -> ``[B, N, W]``."""
        f = gather_rows(self.feat(self.ln(h)), idx)
        rel = gather_rows(pos, idx) - pos[:, :, None]
        return h + self.proj(F.gelu(f + self.offset(rel.to(f.dtype))).amax(2))


def nearest(queries: torch.Tensor, points: torch.Tensor, k: int) -> torch.Tensor:
    """``[B, Q, k]``: indices into ``points [B, N, 3]`` of each query's ``k`` nearest points."""
    d = torch.cdist(queries.float(), points.float())
    return d.topk(min(k, points.shape[1]), dim=-1, largest=False).indices


def gather_rows(values: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``values [B, N, C]`` at per-batch indices ``idx [B, Q, k]`` -> ``[B, Q, k, C]``."""
    b, n, c = values.shape
    flat = (idx + n * torch.arange(b, device=idx.device).view(b, 1, 1)).reshape(-1)
    return values.reshape(b * n, c)[flat].view(*idx.shape, c)


class PointDenoiser(nn.Module):
    """Denoiser over point clouds.

    Args:
        config: the transformer geometry.
        channels: channels per point (xyz + rgb = 6).
        embed_dim: width of the CLIP embeddings.
        num_tokens: number of CLIP slots (one token each).
        cond_channels: channels of the conditioning cloud's points (0: none, a first stage).
        anchored: each new point ``j`` also carries conditioning point ``j mod M`` (its anchor) in its own
            token, for stages that generate points relative to anchors (``points.upsample`` with ``anchored``).

    Forward (the denoiser contract)::

        x [B, N, C], t [B], emb [B, K, D], cond [B, M, C'] | None, cond_level [B] | None -> [B, N, C]
    """

    def __init__(
        self,
        config: PointTransformerConfig,
        channels: int,
        embed_dim: int,
        num_tokens: int,
        cond_channels: int = 0,
        anchored: bool = False,
    ) -> None:
        super().__init__()
        w = config.width
        self.input_proj = nn.Linear(channels, w)
        self.time_embed = ScalarEmbedding(w, activation=config.time_mlp)
        self.clip_norm = nn.LayerNorm(embed_dim) if config.clip_norm else None
        self.clip_proj = nn.Linear(embed_dim, w)
        self.slot_embed = nn.Parameter(torch.randn(num_tokens, w) * 0.02)
        self.cond_channels = cond_channels
        self.level_token = config.level_token and bool(cond_channels)
        if cond_channels:
            self.cond_proj = nn.Linear(cond_channels, w)
        if self.level_token:
            # Levels live in [0, 1]; scale them to the timestep range of the sinusoids.
            self.level_embed = ScalarEmbedding(w, scale=1000.0)
            self.cond_marker = nn.Parameter(torch.randn(w) * 0.02)
        self.anchored = anchored
        if anchored:
            if not cond_channels:
                raise ValueError("an anchored denoiser needs a conditioning cloud")
            self.anchor_proj = nn.Linear(cond_channels, w)
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, config.heads, config.mlp_ratio) for _ in range(config.layers))
        self.local_k = config.local_k
        self.local_from = config.layers - min(config.local_layers or config.layers, config.layers)
        if config.local_k:
            count = config.layers - self.local_from
            self.local_blocks = nn.ModuleList(LocalBlock(w, config.local_width) for _ in range(count))
        self.ln_post = nn.LayerNorm(w)
        self.output_proj = nn.Linear(w, channels)
        # Start as the zero function: stabler early training (as Point-E does with init_scale).
        nn.init.zeros_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        emb: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        n = x.shape[1]
        tokens = [self.time_embed(t)[:, None], self.clip_tokens(emb.to(x.dtype))]
        if self.cond_channels:
            if cond is None or (self.level_token and cond_level is None):
                raise ValueError("this denoiser needs a conditioning cloud and its augmentation level")
            cond_tokens = self.cond_proj(cond)
            if self.level_token:
                cond_tokens = cond_tokens + self.level_embed(cond_level)[:, None] + self.cond_marker
            tokens.append(cond_tokens)
        points = self.input_proj(x)
        if self.anchored:
            points = points + self.anchor_proj(tile_anchors(cond, n))
        h = torch.cat([*tokens, points], dim=1)
        h = self.ln_pre(h)
        pos = x[..., :3]
        idx = nearest(pos, pos, self.local_k) if self.local_k else None
        m = h.shape[1] - n
        for i, block in enumerate(self.blocks):
            h = block(h)
            if idx is not None and i >= self.local_from:
                local = self.local_blocks[i - self.local_from]
                h = torch.cat([h[:, :m], local(h[:, m:], pos, idx)], dim=1)
        return self.output_proj(self.ln_post(h[:, -n:]))

    def clip_tokens(self, emb: torch.Tensor) -> torch.Tensor:
        """``[B, L, W]`` tokens of the CLIP embeddings ``emb [B, L, D]`` (one per vector slot, or a grid's)."""
        if self.clip_norm is not None:
            emb = self.clip_norm(emb)
        return self.clip_proj(emb) + self.slot_embed  # a grid slot's one embedding reaches each of its tokens


def tile_anchors(cloud: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, n, C]``: point ``j`` is ``cloud[:, j mod M]`` (the anchor of new point ``j``)."""
    reps = -(-n // cloud.shape[1])
    return cloud.repeat(1, reps, 1)[:, :n]
