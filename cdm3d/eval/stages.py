"""The point stages of a cascade folder, as a cascade of their own (what the point evaluations run)."""

from __future__ import annotations

from pathlib import Path

from cdm3d.core import Cascade, SelectorStage


def point_stages(folder: str | Path, load_clip: bool = True, select: bool = True) -> Cascade:
    """The stages of ``folder`` that produce point clouds, in order, with its CLIP (if loaded). ``select=False``
    leaves out a selector stage (``points.select``): one sample per prompt, the diffusion stages alone."""
    full = Cascade.from_pretrained(folder, load_clip=load_clip)
    keep = [
        (n, s)
        for n, s in full.stages.items()
        if s.produces == "PointClouds" and (select or not isinstance(s, SelectorStage))
    ]
    return Cascade(keep, clip=full.clip)


def mesh_stages(cascade: Cascade) -> tuple[str | None, str | None]:
    """The name of ``cascade``'s (last) mesh stage and of the selector among meshes after it (each ``None``
    where there is none)."""
    names = cascade.names
    meshers = [
        n for n in names if cascade.stages[n].produces == "Meshes" and not isinstance(cascade.stages[n], SelectorStage)
    ]
    if not meshers:
        return None, None
    after = names[names.index(meshers[-1]) + 1 :]
    return meshers[-1], next((n for n in after if isinstance(cascade.stages[n], SelectorStage)), None)
