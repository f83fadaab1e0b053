"""A small UNet denoiser for image stages, conditioned on CLIP tokens, the timestep and an augmentation level.

Residual blocks (GroupNorm, SiLU, 3x3 convolutions) take a scale and shift from
one embedding per example: the timestep's, plus the CLIP tokens' (one per slot,
projected and summed), plus, for super-resolution, the conditioning
augmentation level's. At the resolutions listed in ``attention`` a block
attends over its pixels and the CLIP tokens together (through
``scaled_dot_product_attention``). A super-resolution stage's low-resolution
input, already resized to the output size, is concatenated to the noisy image
as extra input channels (Ho et al. 2021; Saharia et al. 2022).
"""

from __future__ import annotations

import torch
from einops import rearrange
from pydantic import Field, model_validator
from torch import nn
from torch.nn import functional as F

from cdm3d.core.config import StrictConfig
from cdm3d.models.embeddings import ScalarEmbedding


class UNetConfig(StrictConfig):
    channels: int = Field(64, ge=8)
    mults: list[int] = [1, 2, 2]  # channel multiplier per resolution level (each level halves the size)
    blocks: int = Field(1, ge=1)  # residual blocks per level
    attention: list[int] = [8]  # feature-map sizes (pixels a side) with attention
    heads: int = Field(4, ge=1)
    groups: int = Field(8, ge=1)  # GroupNorm groups

    @model_validator(mode="after")
    def _check(self) -> UNetConfig:
        if not self.mults or min(self.mults) < 1:
            raise ValueError(f"mults must be positive integers, got {self.mults}")
        for m in self.mults:
            if (self.channels * m) % self.groups or (self.channels * m) % self.heads:
                raise ValueError(f"channels x mult ({self.channels * m}) must divide by groups and heads")
        return self


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, emb: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.norm2 = nn.GroupNorm(groups, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(F.silu(h))


class AttnBlock(nn.Module):
    """Self-attention over pixels, with the CLIP tokens as extra keys and values."""

    def __init__(self, c: int, heads: int, groups: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm = nn.GroupNorm(groups, c)
        self.qkv = nn.Linear(c, 3 * c)
        self.ctx_kv = nn.Linear(c, 2 * c)
        self.proj = nn.Linear(c, c)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        hgt = x.shape[2]
        h = rearrange(self.norm(x), "b c y x -> b (y x) c")
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        ck, cv = self.ctx_kv(tokens).chunk(2, dim=-1)
        k, v = torch.cat([ck, k], 1), torch.cat([cv, v], 1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))
        out = self.proj(rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)"))
        return x + rearrange(out, "b (y x) c -> b c y x", y=hgt)


class UNetDenoiser(nn.Module):
    """``x [B, C, H, W], t [B], emb [B, K, D], cond [B, C', H, W] | None, cond_level [B] | None -> [B, C, H, W]``."""

    def __init__(
        self, config: UNetConfig, channels: int, embed_dim: int, num_tokens: int, cond_channels: int = 0, size: int = 32
    ) -> None:
        super().__init__()
        c, e, g = config.channels, config.channels * 4, config.groups
        self.cond_channels = cond_channels
        self.time_embed = ScalarEmbedding(e)
        self.clip_proj = nn.Linear(embed_dim, e)
        self.slot_embed = nn.Parameter(torch.randn(num_tokens, e) * 0.02)
        if cond_channels:
            self.level_embed = ScalarEmbedding(e, scale=1000.0)
        self.inp = nn.Conv2d(channels + cond_channels, c, 3, padding=1)
        widths = [c * m for m in config.mults]
        self.token_proj = nn.ModuleDict()
        self.down = nn.ModuleList()
        skips = [c]
        cur, res = c, size
        for level, w in enumerate(widths):
            for _ in range(config.blocks):
                self.down.append(self._block(cur, w, e, g, res, config))
                cur = w
                skips.append(cur)
            if level < len(widths) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
                res //= 2
        self.mid = nn.ModuleList([ResBlock(cur, cur, e, g), AttnBlock(cur, config.heads, g), ResBlock(cur, cur, e, g)])
        self.mid_tokens = nn.Linear(e, cur)
        self.up = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(config.blocks + 1):
                self.up.append(self._block(cur + skips.pop(), w, e, g, res, config))
                cur = w
            if level > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                res *= 2
        self.out_norm = nn.GroupNorm(g, cur)
        self.out = nn.Conv2d(cur, channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    @staticmethod
    def _block(cin: int, cout: int, e: int, g: int, res: int, config: UNetConfig) -> nn.Module:
        block = nn.ModuleList([ResBlock(cin, cout, e, g)])
        if res in config.attention:
            block.append(AttnBlock(cout, config.heads, g))
            block.append(nn.Linear(e, cout))  # the CLIP tokens at this width
        return block

    @staticmethod
    def _run(block: nn.Module, h: torch.Tensor, emb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        if isinstance(block, nn.ModuleList):
            h = block[0](h, emb)
            if len(block) > 1:
                h = block[1](h, block[2](tokens))
            return h
        return block(h)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        emb: torch.Tensor,
        cond: torch.Tensor | None = None,
        cond_level: torch.Tensor | None = None,
    ) -> torch.Tensor:
        tokens = self.clip_proj(emb.to(x.dtype)) + self.slot_embed  # [B, K, E]
        vec = self.time_embed(t) + tokens.sum(1)
        if self.cond_channels:
            if cond is None or cond_level is None:
                raise ValueError("this denoiser needs a conditioning image and its augmentation level")
            vec = vec + self.level_embed(cond_level)
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        h = self.inp(x)
        skips = [h]
        for block in self.down:
            h = self._run(block, h, vec, tokens)
            skips.append(h)
        h = self.mid[0](h, vec)
        h = self.mid[1](h, self.mid_tokens(tokens))
        h = self.mid[2](h, vec)
        for block in self.up:
            if isinstance(block, nn.ModuleList):
                h = torch.cat([h, skips.pop()], dim=1)
            h = self._run(block, h, vec, tokens)
        return self.out(F.silu(self.out_norm(h)))
