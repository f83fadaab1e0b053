"""``cdm3d eval`` on a tiny cascade: every point-stage figure lands in the JSON."""

from __future__ import annotations

import json

from cdm3d.cli import main
from cdm3d.core import Cascade, ClipEncoder
from cdm3d.eval.bench import point_cascade


def test_eval_writes_fidelity_distribution_and_upsampler_figures(tmp_path, capsys) -> None:
    tiny = point_cascade("tiny", "cpu")
    Cascade(list(tiny.stages.items()), clip=ClipEncoder.default()).save_pretrained(tmp_path / "tiny")
    out = tmp_path / "eval.json"
    argv = ["eval", "--model", str(tmp_path / "tiny"), "--per-category", "2", "--batch", "26", "--steps", "2"]
    assert main([*argv, "--skip-speed", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prompts"] == 26
    for part in ("coarse", "final"):
        assert 0 <= report[part]["category_fidelity"] <= 1 and len(report[part]["category_fidelity_per_category"]) == 13
    mean = report["final"]["distribution_cd"]["mean_over_categories"]
    assert {"1nna_cd", "cov_cd", "mmd_cd"} <= set(mean)
    assert report["upsampler_vs_nearest_neighbour"]["cd_nearest_neighbour"] > 0
    assert report["sampling"]["coarse"]["steps"] == 2
    assert main([*argv, "--classifier", str(tmp_path / "none.safetensors")]) == 2
    assert "classifier weights not found" in capsys.readouterr().err
