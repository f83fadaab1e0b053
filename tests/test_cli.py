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

    coarse = build_stage({"type": "toy.coarse"})
    coarse.set_expert(build_stage({"type": "toy.coarse", "diffusion": {"timesteps": [0, 250]}}))
    Cascade([("coarse", coarse)]).save_pretrained(tmp_path / "c")
    assert main(["info", "--model", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "coarse: toy.coarse" in out and "M parameters" in out
    assert "low-noise expert below timestep 250" in out


def _tiny_point_cascade(folder, select: bool = False) -> None:
    import torch

    from cdm3d.core import Cascade, ClipEncoder, build_stage
    from cdm3d.stages import load_builtin

    load_builtin()
    clip = ClipEncoder.from_config(
        {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
            "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
        }
    )
    net = {"width": 32, "layers": 1, "heads": 2}
    coarse = build_stage(
        {"type": "points.coarse", "embed_dim": 16, "num_points": 32, "network": net, "sampling": {"steps": 2}}
    )
    up = build_stage(
        {
            "type": "points.upsample",
            "embed_dim": 16,
            "num_points": 32,
            "coarse_points": 32,
            "network": net,
            "sampling": {"steps": 2},
        }
    )
    stages = [("coarse", coarse), ("upsample", up)]
    if select:
        stages.append(("select", build_stage({"type": "points.select", "embed_dim": 16, "network": {"width": 8}})))
    torch.manual_seed(0)
    for _, stage in stages:
        for p in stage.parameters():
            torch.nn.init.normal_(p, std=0.1)
    Cascade(stages, clip=clip).save_pretrained(folder)


def test_generate_with_candidates_writes_the_chosen_clouds_once(tmp_path, capsys) -> None:
    model, out = tmp_path / "model", tmp_path / "out"
    _tiny_point_cascade(model, select=True)
    assert main(["generate", "a red cube", "--model", str(model), "-o", str(out), "--candidates", "3"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "upsample_0.ply" in names and "coarse_0.npz" in names and not any(n.startswith("select") for n in names)
    assert main(["generate", "a red cube", "--model", str(model), "-o", str(out), "--candidates", "0", "--force"]) == 2
    assert "candidates must be a whole number >= 1" in capsys.readouterr().err
    plain = tmp_path / "plain"
    _tiny_point_cascade(plain)
    assert main(["generate", "a red cube", "--model", str(plain), "-o", str(out), "--candidates", "2", "--force"]) == 2
    assert "no selector stage" in capsys.readouterr().err


def test_generate_writes_clouds_and_previews_and_refuses_to_overwrite(tmp_path, capsys) -> None:
    model, out = tmp_path / "model", tmp_path / "out"
    _tiny_point_cascade(model)
    assert main(["generate", "a red cube", "a blue mug", "--model", str(model), "-o", str(out)]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "upsample_1.ply" in names and "coarse_0.npz" in names and "preview_1.png" in names
    from cdm3d.types import PointClouds

    assert PointClouds.load(out / "upsample_0.npz").num_points == 64
    assert main(["generate", "a red cube", "--model", str(model), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["generate", "a red cube", "--model", str(model), "-o", str(out), "--force"]) == 0
    assert main(["generate", "", "--model", str(model), "-o", str(out), "--force"]) == 2
    assert "empty" in capsys.readouterr().err


def test_generate_checks_outputs_before_sampling(tmp_path, capsys) -> None:
    model, out = tmp_path / "model", tmp_path / "out"
    _tiny_point_cascade(model)
    out.mkdir()
    (out / "upsample_0.ply").write_text("keep me")
    assert main(["generate", "a red cube", "--model", str(model), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["upsample_0.ply"]  # nothing else was written
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["generate", "a red cube", "--model", str(model), "-o", str(blocker / "sub")]) == 2
    assert "cannot create the output folder" in capsys.readouterr().err


def test_bad_devices_are_one_line_errors(tmp_path, capsys) -> None:
    model = tmp_path / "model"
    _tiny_point_cascade(model)
    for device in ("gpu", "cuda:0" if not __import__("torch").cuda.is_available() else "tpu"):
        assert main(["generate", "a cube", "--model", str(model), "-o", str(tmp_path / "o"), "--device", device]) == 2
        assert "device" in capsys.readouterr().err


def _tiny_image_cascade(folder) -> None:
    import torch

    from cdm3d.core import Cascade, build_stage, load_cascade_clip
    from cdm3d.stages import load_builtin

    load_builtin()
    net = {"channels": 16, "mults": [1, 2], "attention": [], "heads": 2, "groups": 4}
    base = build_stage({"type": "images.base", "embed_dim": 128, "size": 8, "network": net})
    sr = build_stage({"type": "images.sr", "embed_dim": 128, "size": 16, "low_size": 8, "network": net})
    for stage in (base, sr):
        for p in stage.parameters():
            torch.nn.init.normal_(p, std=0.05)
    Cascade([("base", base), ("sr", sr)], clip=load_cascade_clip()).save_pretrained(folder)


def test_generate_writes_images_and_text_image_3d_results(tmp_path, capsys) -> None:
    from PIL import Image

    from cdm3d.core import Cascade, load_cascade_clip
    from cdm3d.eval.bench import point_cascade

    _tiny_image_cascade(tmp_path / "img")
    shape = point_cascade("tiny", "cpu")
    Cascade(list(shape.stages.items()), clip=load_cascade_clip()).save_pretrained(tmp_path / "shape")
    out = tmp_path / "out"
    assert main(["generate", "a red mug", "--model", str(tmp_path / "img"), "--steps", "2", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["base_0.png", "preview_0.png", "sr_0.png"]
    assert Image.open(out / "sr_0.png").size == (16, 16) and Image.open(out / "base_0.png").size == (8, 8)
    argv = ["generate", "a red mug", "--model", str(tmp_path / "shape"), "--via-image", str(tmp_path / "img")]
    argv += ["--steps", "2", "-o", str(tmp_path / "both")]
    assert main(argv) == 0
    names = sorted(p.name for p in (tmp_path / "both").iterdir())
    assert {"image.base_0.png", "image.sr_0.png", "coarse_0.ply", "upsample_0.ply", "preview_0.png"} <= set(names)
    capsys.readouterr()
    assert main(argv) == 2  # the results exist: no overwrite without --force
    assert "--force" in capsys.readouterr().err
    assert main([*argv[:-2], "--images", "-o", str(tmp_path / "x")]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_generate_takes_per_stage_sampling_settings(tmp_path, capsys) -> None:
    out = tmp_path / "o"
    argv = ["generate", "a red cone", "--candidates", "1", "-o", str(out), "--no-preview"]
    settings = ["--sampling", "coarse.steps=2", "--sampling", "upsample.steps=1", "--sampling", "mesh.grid=16"]
    assert main([*argv, *settings]) == 0
    assert (out / "mesh_0.glb").is_file()
    bad = tmp_path / "bad"
    assert main(["generate", "a red cone", "-o", str(bad), "--sampling", "nosuchstage.steps=2"]) == 2
    assert "NAME.KEY=VALUE" in capsys.readouterr().err and not bad.exists()
