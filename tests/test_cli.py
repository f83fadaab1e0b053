"""The command line: fast help, one-line errors, non-zero exits."""

from __future__ import annotations

import subprocess
import sys
import time

from cdm3d.cli import main


def _cdm3d(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cdm3d.cli", *args], capture_output=True, text=True)


def test_help_answers_in_under_two_seconds() -> None:
    times = []
    for _ in range(3):
        start = time.perf_counter()
        result = _cdm3d("--help")
        times.append(time.perf_counter() - start)
        assert result.returncode == 0 and "generate" in result.stdout
    assert sorted(times)[1] < 2.0, times


def test_errors_are_one_line_without_traceback(tmp_path) -> None:
    result = _cdm3d("generate", "a red cube", "--model", str(tmp_path / "missing"))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cdm3d: error: no cascade folder")
    assert "Traceback" not in result.stderr


def test_debug_shows_the_traceback(tmp_path) -> None:
    result = _cdm3d("--debug", "generate", "a red cube", "--model", str(tmp_path / "missing"))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_generate_without_prompts_is_an_error(capsys) -> None:
    assert main(["generate"]) == 2
    assert "give at least one prompt" in capsys.readouterr().err


def test_info_describes_a_cascade_folder(tmp_path, capsys) -> None:
    from toy_signals import ToyCoarseStage  # noqa: F401

    from cdm3d.core import Cascade, build_stage

    Cascade([("coarse", build_stage({"type": "toy.coarse"}))]).save_pretrained(tmp_path / "c")
    assert main(["info", "--model", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "coarse: toy.coarse" in out and "M parameters" in out
