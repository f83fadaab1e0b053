"""The coordinate frame a point network works in, and the mapping to cdm3d's.

cdm3d's clouds are y-up. Point-E's released models work z-up: converted stages say ``frame: pointe`` and the
stage maps at its boundary, so every output is in cdm3d's frame whatever the network's. Both frames are
right-handed: cdm3d ``(x, y, z)`` is Point-E ``(x, z, -y)`` (a rotation about x, so meshes keep their winding).
"""

from __future__ import annotations

from typing import Literal

import torch

Frame = Literal["cdm3d", "pointe"]


def to_network(x: torch.Tensor, frame: Frame) -> torch.Tensor:
    """``x [..., C >= 3]`` (xyz first) from cdm3d's frame to the network's; other channels as they are."""
    if frame == "cdm3d":
        return x
    return torch.cat([x[..., :1], -x[..., 2:3], x[..., 1:2], x[..., 3:]], dim=-1)


def from_network(x: torch.Tensor, frame: Frame) -> torch.Tensor:
    """The inverse of :func:`to_network`."""
    if frame == "cdm3d":
        return x
    return torch.cat([x[..., :1], x[..., 2:3], -x[..., 1:2], x[..., 3:]], dim=-1)
