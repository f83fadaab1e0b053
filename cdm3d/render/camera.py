"""A perspective camera orbiting the origin, y up."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Camera:
    """Looks at the origin from ``azimuth``/``elevation`` (degrees) at ``distance``.

    Azimuth 0 looks from +z towards the origin; elevation is above the xz plane.
    """

    azimuth: float = 30.0
    elevation: float = 25.0
    distance: float = 3.2
    fov: float = 40.0

    def eye(self) -> torch.Tensor:
        az, el = math.radians(self.azimuth), math.radians(self.elevation)
        return torch.tensor(
            [
                self.distance * math.cos(el) * math.sin(az),
                self.distance * math.sin(el),
                self.distance * math.cos(el) * math.cos(az),
            ]
        )

    def world_to_camera(self) -> torch.Tensor:
        """``[4, 4]`` view matrix: camera looks down its -z axis."""
        eye = self.eye()
        forward = -eye / eye.norm()
        right = torch.linalg.cross(forward, torch.tensor([0.0, 1.0, 0.0]))
        right = right / right.norm()
        up = torch.linalg.cross(right, forward)
        rot = torch.stack([right, up, -forward])
        view = torch.eye(4)
        view[:3, :3] = rot
        view[:3, 3] = -rot @ eye
        return view

    def project(self, points: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixel coordinates ``[N, 2]`` (x right, y down) and depths ``[N]`` of world ``points [N, 3]``."""
        view = self.world_to_camera().to(points)
        cam = points @ view[:3, :3].T + view[:3, 3]
        depth = -cam[:, 2]
        focal = 0.5 * size / math.tan(math.radians(self.fov) / 2)
        safe = depth.clamp_min(1e-6)
        x = focal * cam[:, 0] / safe + size / 2
        y = -focal * cam[:, 1] / safe + size / 2
        return torch.stack([x, y], dim=1), depth

    def light_direction(self) -> torch.Tensor:
        """A fixed key light from above-left of the camera, in world space (unit vector towards the light)."""
        view = self.world_to_camera()
        light_cam = torch.tensor([-0.4, 0.7, 0.6])
        light = view[:3, :3].T @ light_cam
        return light / light.norm()


def random_camera(rng: random.Random) -> Camera:
    """A view of the kind CLIP and the world's embeddings are trained on: any azimuth, elevation 10-40 degrees,
    distance 2.7."""
    return Camera(azimuth=rng.uniform(0, 360), elevation=rng.uniform(10, 40), distance=2.7)
