"""Exported GLB files pass the Khronos glTF validator (npm package gltf-validator) with zero errors.

Skipped, saying why, where node/npm or the package cannot be had (no network and no npm cache).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from cdm3d.types import Meshes

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def validator(tmp_path_factory) -> Path:
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are needed for the Khronos glTF validator")
    prefix = tmp_path_factory.mktemp("gltf")
    try:
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(prefix), "gltf-validator"],
            check=True,
            capture_output=True,
            timeout=180,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        pytest.skip(f"npm could not install gltf-validator here: {err}")
    return prefix / "node_modules"


def _validate(node_modules: Path, glb: Path) -> dict:
    env = {**os.environ, "NODE_PATH": str(node_modules)}
    done = subprocess.run(
        ["node", str(ROOT / "tools" / "gltf" / "validate.js"), str(glb)], capture_output=True, text=True, env=env
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_coloured_mesh_glb_is_valid(validator, tmp_path) -> None:
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=2)
    v = torch.tensor(sphere.vertices, dtype=torch.float32)
    mesh = Meshes([v], [torch.tensor(sphere.faces)], [(v + 1) / 2])
    report = _validate(validator, mesh.save(tmp_path / "sphere.glb"))
    assert report["numErrors"] == 0 and report["numWarnings"] == 0, report


def test_the_pipeline_glb_is_valid(validator, tmp_path) -> None:
    from cdm3d import TextTo3D

    out = TextTo3D.from_pretrained()("a tall red lamp", steps=2, progress=False)
    report = _validate(validator, out.mesh.save(tmp_path / "lamp.glb"))
    assert report["numErrors"] == 0, report
