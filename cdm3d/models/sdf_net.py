"""A point-cloud encoder and a query decoder that predicts signed distance, in the manner of Point-E's SDF model.

The encoder is a transformer over the input points (xyz and rgb, Fourier
features of xyz, no positional encoding: permutation-equivariant) plus one
token per CLIP slot. The decoder embeds each query point the same way and
attends either to its k nearest encoded points, their offsets from the query
as relative positions (``neighbours > 0``, the default: it learns in a few
thousand CPU steps), or to every encoder token (global cross-attention, as
Point-E's decoder); a small MLP reads out the distance.
Queries are independent of each other, so a grid is decoded in chunks of any
size, on the CPU or batched on a GPU.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from einops import rearrange
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from cdm3d.core.config import StrictConfig
from cdm3d.models.point_transformer import Block, gather_rows, nearest


class SDFNetConfig(StrictConfig):
    width: int = Field(96, ge=8)
    encoder_layers: int = Field(3, ge=1)
    decoder_layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    mlp_ratio: float = Field(4.0, gt=0)
    # Octaves of sin/cos features of xyz: 2^0 ... 2^(fourier - 1) times pi.
    fourier: int = Field(6, ge=0, le=12)
    # Each query attends to its k nearest encoded points, with their offsets as relative positions (fast to learn:
    # distance is local); 0: to every encoder token (global cross-attention, as Point-E's decoder).
    neighbours: int = Field(16, ge=0)
    # "cdm3d": the network above; "pointe": Point-E's SDF model for converted weights (xyz only, no CLIP tokens, a
    # global cross-attention decoder with a LayerNorm on the latents in every block; PointESDFNet).
    arch: Literal["cdm3d", "pointe"] = "cdm3d"

    @model_validator(mode="after")
    def _check(self) -> SDFNetConfig:
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        return self


def fourier_features(xyz: torch.Tensor, octaves: int) -> torch.Tensor:
    """``[..., 3]`` -> ``[..., 3 + 6 * octaves]``: xyz, then sin and cos of ``2^k pi xyz``."""
    if octaves == 0:
        return xyz
    freqs = math.pi * 2.0 ** torch.arange(octaves, device=xyz.device, dtype=xyz.dtype)
    angles = (xyz[..., None] * freqs).flatten(-2)
    return torch.cat([xyz, torch.sin(angles), torch.cos(angles)], dim=-1)


class CrossBlock(nn.Module):
    """Queries attend to a fixed set of context tokens, then an MLP (pre-norm residual). With ``context_norm``
    the block normalises the context itself (Point-E's decoder; cdm3d's shares one normalised context)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, context_norm: bool = False) -> None:
        super().__init__()
        self.heads = heads
        self.ln_kv = nn.LayerNorm(width) if context_norm else None
        self.ln_q = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def context(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values ``[B, H, L, W/H]`` of normalised context tokens (computed once per cloud)."""
        if self.ln_kv is not None:
            ctx = self.ln_kv(ctx)
        kv = rearrange(self.kv(ctx), "b n (two h d) -> two b h n d", two=2, h=self.heads)
        return kv[0], kv[1]

    def forward(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        q = rearrange(self.q(self.ln_q(x)), "b n (h d) -> b h n d", h=self.heads)
        attn = F.scaled_dot_product_attention(q, kv[0], kv[1])
        x = x + self.proj(rearrange(attn, "b h n d -> b n (h d)"))
        return x + self.mlp(self.ln2(x))


class LocalBlock(nn.Module):
    """A query attends to its k nearest encoded points; keys and values carry the offset query - point."""

    def __init__(self, width: int, octaves: int, mlp_ratio: float) -> None:
        super().__init__()
        self.octaves = octaves
        self.ln_q = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.rel = nn.Linear(3 + 6 * octaves + 1, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)
        self.ln2 = nn.LayerNorm(width)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, feats: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``x [B, Q, W]``, neighbour features ``[B, Q, K, W]``, offsets ``[B, Q, K, 3]``."""
        rel = torch.cat([fourier_features(offsets, self.octaves), offsets.norm(dim=-1, keepdim=True)], -1)
        ctx = feats + self.rel(rel)
        q = self.q(self.ln_q(x))
        scores = torch.einsum("bqw,bqkw->bqk", q, self.k(ctx)) / math.sqrt(q.shape[-1])
        attn = torch.einsum("bqk,bqkw->bqw", scores.softmax(-1), self.v(ctx))
        x = x + self.proj(attn)
        return x + self.mlp(self.ln2(x))


class PointSDFNet(nn.Module):
    """Signed distance at query points given a coloured point cloud and CLIP tokens.

    Forward::

        points [B, N, 6] (xyz, rgb in [-1, 1]), emb [B, K, D], queries [B, Q, 3] -> sdf [B, Q]

    :meth:`encode` and :meth:`decode` split the two halves, so a grid of queries
    is decoded chunk by chunk against one encoding.
    """

    def __init__(self, config: SDFNetConfig, embed_dim: int, num_tokens: int, channels: int = 6) -> None:
        super().__init__()
        w, feats = config.width, 3 + 6 * config.fourier
        self.octaves = config.fourier
        self.point_proj = nn.Linear(feats + channels - 3, w)
        self.clip_proj = nn.Linear(embed_dim, w)
        self.slot_embed = nn.Parameter(torch.randn(num_tokens, w) * 0.02)
        self.ln_pre = nn.LayerNorm(w)
        self.encoder = nn.ModuleList(Block(w, config.heads, config.mlp_ratio) for _ in range(config.encoder_layers))
        self.ln_ctx = nn.LayerNorm(w)
        self.query_proj = nn.Linear(feats, w)
        self.neighbours = config.neighbours
        if config.neighbours:
            self.decoder = nn.ModuleList(
                LocalBlock(w, config.fourier, config.mlp_ratio) for _ in range(config.decoder_layers)
            )
        else:
            self.decoder = nn.ModuleList(
                CrossBlock(w, config.heads, config.mlp_ratio) for _ in range(config.decoder_layers)
            )
        self.ln_out = nn.LayerNorm(w)
        self.head = nn.Linear(w, 1)
        # Start at distance 0 everywhere (the loss starts at the trivial predictor's, not above it).
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def encode(self, points: torch.Tensor, emb: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoded cloud, every tensor batch-first: what :meth:`decode` reads for any number of queries."""
        xyz, rest = points[..., :3], points[..., 3:]
        h = self.point_proj(torch.cat([fourier_features(xyz, self.octaves), rest], dim=-1))
        tokens = self.clip_proj(emb.to(h.dtype)) + self.slot_embed
        h = self.ln_pre(torch.cat([tokens, h], dim=1))
        for block in self.encoder:
            h = block(h)
        ctx = self.ln_ctx(h)
        if self.neighbours:  # the point tokens (the CLIP tokens' information has reached them through attention)
            return {"xyz": xyz, "feats": ctx[:, tokens.shape[1] :]}
        out = {}
        for i, layer in enumerate(self.decoder):
            out[f"k{i}"], out[f"v{i}"] = layer.context(ctx)
        return out

    def decode(self, enc: dict[str, torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
        """Signed distances ``[B, Q]`` at ``queries [B, Q, 3]``."""
        h = self.query_proj(fourier_features(queries, self.octaves))
        if self.neighbours:
            xyz, feats = enc["xyz"], enc["feats"]
            idx = nearest(queries, xyz, self.neighbours)  # [B, Q, K]
            nbr_feats = gather_rows(feats, idx)
            offsets = queries[:, :, None] - gather_rows(xyz, idx)
            for layer in self.decoder:
                h = layer(h, nbr_feats, offsets)
        else:
            for i, layer in enumerate(self.decoder):
                h = layer(h, (enc[f"k{i}"], enc[f"v{i}"]))
        return self.head(self.ln_out(h))[..., 0]

    def forward(self, points: torch.Tensor, emb: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(points, emb), queries)


class PointESDFNet(nn.Module):
    """Point-E's SDF model (``CrossAttentionPointCloudSDFModel``), for converted weights: a transformer encodes
    the cloud's xyz, and each query attends to every encoded point through cross-attention blocks.

    The same interface as :class:`PointSDFNet` (colours and CLIP tokens are accepted and not read)::

        points [B, N, C >= 3], emb [B, K, D], queries [B, Q, 3] -> sdf [B, Q]
    """

    def __init__(self, config: SDFNetConfig) -> None:
        super().__init__()
        w = config.width
        self.point_proj = nn.Linear(3, w)
        self.encoder = nn.ModuleList(Block(w, config.heads, config.mlp_ratio) for _ in range(config.encoder_layers))
        self.query_proj = nn.Linear(3, w)
        self.decoder = nn.ModuleList(
            CrossBlock(w, config.heads, config.mlp_ratio, context_norm=True) for _ in range(config.decoder_layers)
        )
        self.ln_out = nn.LayerNorm(w)
        self.head = nn.Linear(w, 1)

    def encode(self, points: torch.Tensor, emb: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.point_proj(points[..., :3])
        for block in self.encoder:
            h = block(h)
        out = {}
        for i, layer in enumerate(self.decoder):
            out[f"k{i}"], out[f"v{i}"] = layer.context(h)
        return out

    def decode(self, enc: dict[str, torch.Tensor], queries: torch.Tensor) -> torch.Tensor:
        h = self.query_proj(queries)
        for i, layer in enumerate(self.decoder):
            h = layer(h, (enc[f"k{i}"], enc[f"v{i}"]))
        return self.head(self.ln_out(h))[..., 0]

    def forward(self, points: torch.Tensor, emb: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(points, emb), queries)
