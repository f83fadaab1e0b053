"""tools/prepare_dataset.py on a folder that mixes good and bad files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from cdm3d.data.shards import iter_records
from cdm3d.data.world import World

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import prepare_dataset


@pytest.fixture()
def mixed(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "meshes"
    (root / "sub").mkdir(parents=True)
    world = World("train")
    rows = ["uid,caption"]
    for i, ext in enumerate(["obj", "ply", "glb", "off"]):
        obj = world[i]
        obj.mesh.export(root / ("sub" if i == 3 else "") / f"good{i}.{ext}")
        rows.append(f"good{i},{obj.caption}")
    (root / "corrupt.obj").write_bytes(b"\x00\xffnot a mesh at all" * 10)
    (root / "empty.ply").write_bytes(b"")
    (root / "notes.txt").write_text("hello")
    nan = world[5].mesh.copy()
    nan.vertices[0] = np.nan
    nan.export(root / "nan.ply")
    world[6].mesh.export(root / "uncaptioned.obj")
    rows += ["corrupt,a broken file", "empty,an empty file", "nan,a nan mesh", "notes,some notes", "ghost,no such file"]
    captions = tmp_path / "captions.csv"
    captions.write_text("\n".join(rows) + "\n")
    return root, captions


def test_good_files_become_shards_and_bad_ones_are_reported(mixed, tmp_path, capsys) -> None:
    root, captions = mixed
    out = tmp_path / "out"
    rc = prepare_dataset.main(
        [
            "--meshes",
            str(root),
            "--captions",
            str(captions),
            "--out",
            str(out),
            "--points",
            "512",
            "--workers",
            "2",
            "--shard-size",
            "3",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["written"] == 4 and len(report["shards"]) == 2
    reasons = {item["uid"]: item["reason"] for item in report["skipped"]}
    assert set(reasons) == {"corrupt", "empty", "nan", "notes", "uncaptioned"}
    assert "empty" in reasons["empty"] and "NaN" in reasons["nan"] and "no caption" in reasons["uncaptioned"]
    assert "not a mesh file" in reasons["notes"]
    assert report["captions_without_mesh"] >= 1  # "ghost"
    records = list(iter_records(out))
    assert sorted(r.uid for r in records) == ["good0", "good1", "good2", "good3"]
    for r in records:
        assert r.xyz.shape == (512, 3) and np.abs(r.xyz).max() <= 0.9 + 1e-5
        assert r.rgb.std() > 0 or r.rgb.mean() != 0.6  # colours came through, not the gray default
    printed = capsys.readouterr().out
    assert "skipped 5" in printed and "corrupt.obj" in printed


def test_nothing_usable_exits_non_zero(tmp_path, capsys) -> None:
    root = tmp_path / "bad"
    root.mkdir()
    (root / "a.obj").write_bytes(b"garbage")
    captions = tmp_path / "c.csv"
    captions.write_text("a,something\n")
    assert (
        prepare_dataset.main(
            ["--meshes", str(root), "--captions", str(captions), "--out", str(tmp_path / "o"), "--workers", "1"]
        )
        == 1
    )
    assert "nothing usable" in capsys.readouterr().err


def test_missing_inputs_are_clear_errors(tmp_path, capsys) -> None:
    assert (
        prepare_dataset.main(
            ["--meshes", str(tmp_path / "nope"), "--captions", str(tmp_path / "c.csv"), "--out", str(tmp_path / "o")]
        )
        == 2
    )
    assert "not found" in capsys.readouterr().err


def test_world_shards_keep_labels(tmp_path) -> None:
    rc = prepare_dataset.main(
        ["--world", "val", "--count", "5", "--out", str(tmp_path / "w"), "--points", "256", "--sdf", "512"]
    )
    assert rc == 0
    records = list(iter_records(tmp_path / "w"))
    assert len(records) == 5 and records[0].meta["category"] == World("val").labels(0).category
    assert records[0].sdf.shape == (512,) and records[0].sdf_q.shape == (512, 3)
