"""tools/export_mesh.py: files written, overwrite refused, bad input as one-line errors."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import export_mesh


def test_export_writes_meshes_points_and_previews(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = ["a tall red lamp", "-o", str(out), "--steps", "2", "--formats", "glb", "obj", "--point-formats", "npz"]
    assert export_mesh.main(args) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "00-a-tall-red-lamp.glb",
        "00-a-tall-red-lamp.obj",
        "00-a-tall-red-lamp.png",
        "00-a-tall-red-lamp.points.npz",
    ]
    assert export_mesh.main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert export_mesh.main([*args, "--force"]) == 0


def test_export_bad_inputs(tmp_path, capsys) -> None:
    cases = [
        (["a cube", "-o", str(tmp_path / "o"), "--formats", "fbx"], "unknown format"),
        (["-o", str(tmp_path / "o")], "give prompts or --image"),
        (["a cube", "-o", str(tmp_path / "missing" / "deeper")], "does not exist"),
        (["--image", str(tmp_path / "nope.png"), "-o", str(tmp_path / "o")], "not found"),
        (["", "-o", str(tmp_path / "o"), "--steps", "2"], "empty"),
        (["a cube", "--no-reframe", "-o", str(tmp_path / "o")], "--no-reframe applies to --image files only"),
        (["a cube", "--no-text-prior", "-o", str(tmp_path / "o")], "--no-text-prior applies to --image files only"),
    ]
    for argv, message in cases:
        assert export_mesh.main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (argv, err)
