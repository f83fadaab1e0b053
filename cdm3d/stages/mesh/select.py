"""``mesh.select``: keep, of several candidate meshes per prompt, the one closest to the prompt in CLIP space.

A selector stage (:mod:`cdm3d.core.selection`) placed after a mesh stage. It reads a mesh as
``num_points`` area-uniform surface samples with their interpolated vertex colours and embeds them with
the same ``PointCritic`` as ``points.select`` (same config fields, same weights: a critic trained on the
world's surface clouds reads meshes' surface samples as it reads clouds). In the shipped cascade,
``points.select`` keeps its best 2 of 8 candidate clouds, both are meshed, and ``mesh.select`` keeps the
mesh whose surface the critic finds closer to the prompt: a meshed cloud can lose what made the cloud
right (a cube's flat sides rounded into a cylinder, a pyramid's into a cone), and the choice on the mesh
sees that.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch

from cdm3d.core import STAGES
from cdm3d.data.meshes import sample_colored_surface
from cdm3d.errors import InputError
from cdm3d.stages.points.select import SelectPointsConfig, SelectPointsStage
from cdm3d.types.meshes import Meshes


class SelectMeshConfig(SelectPointsConfig):
    type: Literal["mesh.select"] = "mesh.select"  # type: ignore[assignment]


@STAGES.register("mesh.select")
class SelectMeshStage(SelectPointsStage):
    Config = SelectMeshConfig
    config: SelectMeshConfig
    consumes: ClassVar[str] = "Meshes"
    produces: ClassVar[str] = "Meshes"

    def read(self, prev: Any, generator: torch.Generator | None) -> torch.Tensor:
        """``[B, num_points, 6]`` surface samples (xyz, rgb in [-1, 1]) of each mesh, drawn anew per read."""
        if not isinstance(prev, Meshes):
            raise InputError(f"stage '{self.name}' reads Meshes, got {type(prev).__name__}")
        n = self.config.num_points
        out = []
        for i in range(len(prev)):
            v = prev.vertices[i].detach().cpu().double().numpy()
            f = prev.faces[i].detach().cpu().numpy()
            if len(f) == 0 or not np.isfinite(v).all():
                raise InputError(f"stage '{self.name}': candidate mesh {i} is empty or holds NaN or Inf vertices")
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
            c = prev.colors[i].detach().cpu().double().numpy()
            xyz, rgb = sample_colored_surface(v, f, c, n, seed)
            out.append(torch.from_numpy(np.concatenate([xyz, rgb * 2 - 1], 1)).float())
        return torch.stack(out)


__all__ = ["SelectMeshConfig", "SelectMeshStage"]
