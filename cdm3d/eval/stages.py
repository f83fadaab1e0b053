"""The point stages of a cascade folder, as a cascade of their own (what the point evaluations run)."""

from __future__ import annotations

from pathlib import Path

from cdm3d.core import Cascade


def point_stages(folder: str | Path, load_clip: bool = True) -> Cascade:
    """The stages of ``folder`` that produce point clouds, in order, with its CLIP (if loaded)."""
    full = Cascade.from_pretrained(folder, load_clip=load_clip)
    return Cascade([(n, s) for n, s in full.stages.items() if s.produces == "PointClouds"], clip=full.clip)
