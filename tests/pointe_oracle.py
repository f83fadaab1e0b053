"""Point-E's own code as a test oracle (../shared/peers/point-e, MIT; not part of cdm3d).

Point-E's models build their CLIP wrapper in ``__init__`` through the ``clip`` package (a download); tests pass
CLIP outputs as ``embeddings=`` instead, so a stub ``clip`` module stands in. Models are randomly initialised
and their zero-initialised layers re-randomised, then saved as the released files are (a plain state dict).
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

PEERS = Path(__file__).resolve().parents[2] / "shared" / "peers" / "point-e"
AVAILABLE = (PEERS / "point_e").is_dir()
needs_point_e = pytest.mark.skipif(not AVAILABLE, reason=f"Point-E's code (the test oracle) is not at {PEERS}")

# Small geometries of the released models (the released ones: 512 / 12 for the 40M models, sdf 256 / 8 + 4).
# Heads are 64 channels wide, as in every released model.
SMALL = {
    "base40M-textvec": {"width": 128, "layers": 2, "heads": 2},
    "base40M": {"width": 128, "layers": 2, "heads": 2},
    "base300M": {"width": 192, "layers": 1, "heads": 3},
    "base1B": {"width": 256, "layers": 1, "heads": 4},
    "upsample": {"width": 128, "layers": 2, "heads": 2},
    "sdf": {"width": 128, "encoder_layers": 2, "decoder_layers": 1, "encoder_heads": 2, "decoder_heads": 2},
}
# Smaller still for the tests that sample whole pipelines or train (one head: the networks' tests cover more).
TINY = {
    "base40M-textvec": {"width": 64, "layers": 1, "heads": 1},
    "base40M": {"width": 64, "layers": 1, "heads": 1},
    "upsample": {"width": 64, "layers": 1, "heads": 1},
    "sdf": {"width": 64, "encoder_layers": 1, "decoder_layers": 1, "encoder_heads": 1, "decoder_heads": 1},
}
FILES = {
    "base40M-textvec": "base_40m_textvec.pt",
    "base40M": "base_40m.pt",
    "base300M": "base_300m.pt",
    "base1B": "base_1b.pt",
    "upsample": "upsample_40m.pt",
}


def point_e():
    """Point-E's package, imported with the ``clip`` stub."""
    if "clip" not in sys.modules:
        stub = types.ModuleType("clip")
        stub.load = lambda name, device=None, download_root=None, jit=False: (torch.nn.Module(), lambda x: x)
        stub.tokenize = lambda texts, context_length=77, truncate=False: torch.zeros(len(texts), context_length)
        sys.modules["clip"] = stub
    if str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    import point_e.diffusion.configs
    import point_e.models.configs

    return point_e


def model(name: str, geometry: dict | None = None, seed: int = 0) -> torch.nn.Module:
    """A randomly initialised Point-E model of config ``name`` at ``geometry`` (default: a small one), every
    parameter non-zero (Point-E zero-initialises its output layer)."""
    pe = point_e()
    config = {**pe.models.configs.MODEL_CONFIGS[name], **(SMALL[name] if geometry is None else geometry)}
    torch.manual_seed(seed)
    net = pe.models.configs.model_from_config(config, torch.device("cpu")).eval()
    with torch.no_grad():
        for p in net.parameters():
            if not p.abs().sum():
                p.normal_(0, 0.02)
    return net


def diffusion(name: str):
    pe = point_e()
    return pe.diffusion.configs.diffusion_from_config(pe.diffusion.configs.DIFFUSION_CONFIGS[name])


def save(net: torch.nn.Module, path: Path) -> Path:
    """The state dict as the released files hold it (the CLIP wrapper is no module: not in it)."""
    torch.save(net.state_dict(), path)
    return path
