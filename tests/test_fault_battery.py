"""The bad-input battery: every input a user can get wrong, each a named cdm3d error.

Each case says what it feeds where, which error class it must raise and a piece
of the message (which names what was wrong). Cases that write files also check
that nothing (not even a temporary file) is left behind. The command-line cases
check a non-zero exit, one line on stderr and no traceback.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from cdm3d import ImageTo3D, TextTo3D
from cdm3d.core import Conditioning, build_stage, load_stage, save_stage
from cdm3d.core.config import load_yaml
from cdm3d.errors import (
    CheckpointError,
    ConfigError,
    InputError,
    SamplingError,
    StorageError,
    TrainingError,
)
from cdm3d.paths import DEFAULT_MODEL
from cdm3d.types import PointClouds

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import export_mesh

import cdm3d.cli

TINY_COARSE = {
    "type": "points.coarse",
    "cond_keys": ["text", "image"],
    "embed_dim": 128,
    "num_points": 16,
    "network": {"width": 16, "layers": 1, "heads": 2},
}


@pytest.fixture(scope="module")
def pipe() -> TextTo3D:
    return TextTo3D.from_pretrained()


@pytest.fixture()
def files(tmp_path) -> Path:
    """A folder of broken files of every kind."""
    from PIL import Image

    d = tmp_path / "in"
    d.mkdir()
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    (d / "text.jpg").write_text("this is not a JPEG")
    png = d / "good.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(png)
    (d / "truncated.png").write_bytes(png.read_bytes()[:60])
    Image.new("RGB", (4, 4)).save(d / "tiny.png")
    (d / "empty.obj").write_bytes(b"")
    (d / "no_faces.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    (d / "degenerate.obj").write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nf 1 2 3\n")
    (d / "nan.obj").write_text("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n")
    (d / "bad_index.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 9\n")
    (d / "corrupt.ply").write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 99\n" + os.urandom(64))
    (d / "garbage.glb").write_bytes(os.urandom(300))
    (d / "model.fbx").write_bytes(b"Kaydara FBX Binary")
    np.savez(d / "nan_cloud.npz", coords=np.full((8, 3), np.nan, np.float32), colors=np.zeros((8, 3), np.float32))
    (d / "cloud.npz").write_bytes(b"PK\x03\x04 not really a zip")
    (d / "bad.yaml").write_text("type: points.coarse\nnum_points: [1, 2\n")
    (d / "list.yaml").write_text("- a\n- b\n")
    (d / "typed.yaml").write_text(
        "stage: {type: points.coarse}\ndata: {type: world.points, embeddings: x}\ntrain: {steps: lots}\n"
    )
    return d


def _tiny_weights(path: Path, **changes) -> Path:
    save_stage(build_stage({**TINY_COARSE, **changes}), path)
    return path


class _Evil:
    """Unpickling this would create a file: the pickle checkpoint case proves it never happens."""

    def __reduce__(self):
        return (open, (str(Path(os.environ["CDM3D_EVIL_MARK"])), "w"))


def _cases(pipe: TextTo3D, d: Path, tmp: Path) -> list[tuple[str, Callable[[], object], type, str]]:
    """(name, action, error class, message fragment)."""
    image_pipe = ImageTo3D(pipe.cascade)
    emb = torch.nn.functional.normalize(torch.randn(1, 128), dim=-1)
    null = {"text": torch.zeros(128), "image": torch.zeros(128)}
    cloud = PointClouds(torch.zeros(1, 8, 3), torch.zeros(1, 8, 3))
    n = pipe.cascade.stages["upsample"].config.coarse_points
    nan_init = PointClouds(torch.full((1, n, 3), float("nan")), torch.zeros(1, n, 3))
    folder = tmp / "folder.ply"
    folder.mkdir()
    mesh_out = pipe("a red cube", steps=1, stop_at="coarse", progress=False)  # a valid result to save
    from cdm3d.data.meshes import load_mesh

    def run(**kw):
        return lambda: pipe(kw.pop("prompt", "a red cube"), steps=1, progress=False, **kw)

    def image_run(images):
        return lambda: image_pipe(images, steps=1, stop_at="coarse", progress=False)

    def weights_into_coarse(path):
        return lambda: load_stage(path, expected_type="points.coarse")

    def huge_image():
        from PIL import Image

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the 64x64 test image is then a "bomb"
            return image_pipe(d / "good.png", steps=1, stop_at="coarse", progress=False)

    def huge_mesh():
        import cdm3d.data.meshes as meshes

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(meshes, "MAX_FACES", 0)
            return load_mesh(d / "degenerate.obj")

    return [
        # -- prompts
        ("empty prompt", run(prompt=""), InputError, "empty"),
        ("whitespace prompt", run(prompt=" \n\t "), InputError, "empty"),
        ("huge prompt", run(prompt="a red cube " * 20_000), InputError, "at most 2000"),
        ("control characters", run(prompt="a red\x00 cube"), InputError, "control characters"),
        ("escape sequence", run(prompt="a \x1b[31mred\x1b[0m cube"), InputError, "control characters"),
        ("non-UTF-8 prompt", run(prompt=b"\xff\xfe".decode("utf-8", "surrogateescape")), InputError, "UTF-8"),
        ("bytes prompt", run(prompt=b"a red cube"), InputError, "decode"),
        ("integer prompt", run(prompt=42), InputError, "string"),
        ("None prompt", run(prompt=None), InputError, "give prompts"),
        ("empty prompt list", run(prompt=[]), InputError, "empty list"),
        ("non-string in a list", run(prompt=["a cube", 3.5]), InputError, "prompt 1 must be a string"),
        ("unknown stop stage", run(stop_at="nope"), InputError, "nope"),
        ("zero steps", lambda: pipe("a cube", steps=0, progress=False), ConfigError, "steps"),
        ("NaN guidance", lambda: pipe("a cube", guidance=float("nan"), progress=False), ConfigError, "guidance"),
        # -- conditioning and point clouds
        ("NaN embedding", lambda: Conditioning({"text": emb * float("nan")}, null), InputError, "NaN"),
        ("Inf embedding", lambda: Conditioning({"text": emb / 0}, null), InputError, "NaN or Inf"),
        (
            "embedding of the wrong width",
            lambda: pipe.cascade.run(
                Conditioning({"text": torch.ones(1, 64)}, {"text": torch.zeros(64)}), progress=False
            ),
            InputError,
            "128-d",
        ),
        (
            "NaN point cloud into the upsampler",
            lambda: pipe.cascade.run(pipe.cascade.encode("a cube"), start_at="upsample", init=nan_init, progress=False),
            InputError,
            "NaN or Inf",
        ),
        (
            "point cloud of the wrong shape",
            lambda: PointClouds(torch.zeros(1, 8, 2), torch.zeros(1, 8, 2)),
            InputError,
            "[B, N, 3]",
        ),
        ("NaN point-cloud file", lambda: PointClouds.load(d / "nan_cloud.npz"), InputError, "finite"),
        ("corrupt point-cloud file", lambda: PointClouds.load(d / "cloud.npz"), InputError, "cannot be read"),
        # -- images
        ("corrupt image bytes", image_run(d / "corrupt.png"), InputError, "cannot be read as an image"),
        ("truncated image", image_run(d / "truncated.png"), InputError, "cannot be read as an image"),
        ("text file as an image", image_run(d / "text.jpg"), InputError, "cannot be read as an image"),
        ("missing image", image_run(d / "missing.png"), InputError, "not found"),
        ("image too small", image_run(d / "tiny.png"), InputError, "too small"),
        ("image tensor with 4 channels", image_run(torch.rand(1, 4, 64, 64)), InputError, "[B, 3, H, W]"),
        ("image tensor in 0..255", image_run(torch.rand(1, 3, 64, 64) * 255), InputError, "[0, 1]"),
        ("integer image tensor", image_run(torch.zeros(1, 3, 64, 64, dtype=torch.uint8)), InputError, "floating"),
        ("NaN image tensor", image_run(torch.full((1, 3, 64, 64), float("nan"))), InputError, "NaN"),
        ("image of a wrong type", image_run([3.5]), InputError, "must be paths"),
        ("decompression bomb", huge_image, InputError, "too large to decode safely"),
        # -- meshes
        ("empty mesh file", lambda: load_mesh(d / "empty.obj"), InputError, "empty"),
        ("mesh without faces", lambda: load_mesh(d / "no_faces.obj"), InputError, "no faces"),
        ("degenerate mesh", lambda: load_mesh(d / "degenerate.obj"), InputError, "degenerate"),
        ("NaN mesh", lambda: load_mesh(d / "nan.obj"), InputError, "NaN"),
        ("faces out of range", lambda: load_mesh(d / "bad_index.obj"), InputError, "out of bounds"),
        ("enormous mesh", huge_mesh, InputError, "decimate"),
        ("corrupt PLY", lambda: load_mesh(d / "corrupt.ply"), InputError, "cannot be read as a mesh"),
        ("garbage GLB", lambda: load_mesh(d / "garbage.glb"), InputError, "cannot be read as a mesh"),
        ("unsupported mesh format", lambda: load_mesh(d / "model.fbx"), InputError, "unsupported mesh format"),
        # -- configs
        (
            "unknown config field",
            lambda: build_stage({**TINY_COARSE, "widht": 3}),
            ConfigError,
            "unknown field 'widht'",
        ),
        (
            "ill-typed config field",
            lambda: build_stage({**TINY_COARSE, "num_points": "many"}),
            ConfigError,
            "num_points",
        ),
        ("unknown stage type", lambda: build_stage({"type": "points.giant"}), ConfigError, "points.giant"),
        ("YAML syntax error", lambda: load_yaml(d / "bad.yaml"), ConfigError, "not valid YAML"),
        ("YAML that is not a mapping", lambda: load_yaml(d / "list.yaml"), ConfigError, "mapping"),
        ("missing config file", lambda: load_yaml(d / "nope.yaml"), ConfigError, "not found"),
        # -- checkpoints
        (
            "truncated checkpoint",
            lambda: (p := _tiny_weights(tmp / "t.safetensors"), p.write_bytes(p.read_bytes()[:100]), load_stage(p)),
            CheckpointError,
            "truncated",
        ),
        (
            "checkpoint of another stage",
            weights_into_coarse(DEFAULT_MODEL / "upsample.safetensors"),
            CheckpointError,
            "points.upsample",
        ),
        (
            "checkpoint of mismatched shapes",
            lambda: _load_misshapen(tmp),
            CheckpointError,
            "mismatched shapes",
        ),
        ("pickle checkpoint", lambda: _load_pickle(tmp), CheckpointError, "never unpickles"),
        ("missing checkpoint", lambda: load_stage(tmp / "none.safetensors"), CheckpointError, "not found"),
        ("cascade folder without cascade.yaml", lambda: TextTo3D.from_pretrained(d), CheckpointError, "cascade.yaml"),
        # -- output paths
        (
            "output in a missing folder",
            lambda: mesh_out.points.save(tmp / "no" / "x.ply"),
            StorageError,
            "does not exist",
        ),
        ("output over an existing file", lambda: _save_twice(mesh_out.points, tmp / "twice.ply"), InputError, "exists"),
        ("output onto a folder", lambda: mesh_out.points.save(folder), InputError, "is a folder"),
        (
            "unknown output format",
            lambda: mesh_out.points.save(tmp / "x.xyz"),
            InputError,
            "unknown point-cloud format",
        ),
        ("disk full while writing", lambda: _disk_full(mesh_out.points, tmp / "full.npz"), StorageError, "No space"),
        ("cloud argument of a wrong type", lambda: PointClouds([1], [2]), InputError, "tensors"),
        (
            "cloud without points",
            lambda: PointClouds(torch.zeros(1, 0, 3), torch.zeros(1, 0, 3)),
            InputError,
            "at least one",
        ),
        (
            "NaN cloud saved",
            lambda: PointClouds(torch.full((1, 4, 3), float("nan")), torch.zeros(1, 4, 3)).save(tmp / "nan.ply"),
            InputError,
            "refusing to write",
        ),
        ("batch of clouds saved past its end", lambda: cloud.save(tmp / "c.ply", index=3), InputError, "index 3"),
    ]


def _load_misshapen(tmp: Path):
    """A stage file whose tensors do not match the config in its own metadata (edited or mixed up files)."""
    from cdm3d.core.checkpoint import load_tensors, save_tensors

    narrow = _tiny_weights(tmp / "narrow.safetensors")
    wide = _tiny_weights(tmp / "wide.safetensors", network={"width": 32, "layers": 1, "heads": 2})
    tensors, _ = load_tensors(wide)
    _, meta = load_tensors(narrow)
    save_tensors(tmp / "mixed.safetensors", tensors, {k: v for k, v in meta.items() if k != "cdm3d.format"})
    load_stage(tmp / "mixed.safetensors")


def _load_pickle(tmp: Path):
    mark = tmp / "pwned"
    os.environ["CDM3D_EVIL_MARK"] = str(mark)
    path = tmp / "evil.safetensors"
    path.write_bytes(pickle.dumps({"weight": _Evil()}, protocol=4))
    try:
        load_stage(path)
    finally:
        assert not mark.exists(), "the pickle was executed"


def _save_twice(cloud: PointClouds, path: Path):
    cloud.save(path)
    cloud.save(path)


def _disk_full(cloud: PointClouds, path: Path):
    import errno

    def savez(f, **arrays):
        f.write(b"half a file")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(np, "savez", savez)
        try:
            cloud.save(path)
        finally:
            assert not path.exists()


# Files the cases themselves create as inputs; anything else new in the folder is a leftover.
FIXTURES = {
    "t.safetensors",
    "wide.safetensors",
    "narrow.safetensors",
    "mixed.safetensors",
    "evil.safetensors",
    "twice.ply",
    "folder.ply",
}


def test_the_battery_holds_at_least_thirty_cases(pipe, files, tmp_path) -> None:
    assert len(_cases(pipe, files, tmp_path)) >= 30


def test_every_bad_input_is_a_clear_cdm3d_error_and_leaves_nothing_behind(pipe, files, tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    failures = []
    for name, action, error, fragment in _cases(pipe, files, out):
        before = set(out.rglob("*"))
        try:
            action()
        except error as err:
            if fragment not in str(err):
                failures.append(f"{name}: message {str(err)!r} lacks {fragment!r}")
        except Exception as err:
            failures.append(f"{name}: raised {type(err).__name__}: {err} instead of {error.__name__}")
        else:
            failures.append(f"{name}: no error")
        leftovers = [p.name for p in set(out.rglob("*")) - before if p.name not in FIXTURES]
        if leftovers:
            failures.append(f"{name}: left temporary files {leftovers}")
    assert not failures, "\n".join(failures)


def test_the_unwritable_folder_case(pipe, tmp_path) -> None:
    """A folder the process cannot write into (root can write anywhere chmod allows, so use /proc then)."""
    cloud = PointClouds(torch.zeros(1, 8, 3), torch.zeros(1, 8, 3))
    if os.geteuid() == 0:
        target = Path("/proc/cdm3d-cloud.ply")
        if not Path("/proc").is_dir():
            pytest.skip("no unwritable folder to test as root")
    else:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        target = locked / "cloud.ply"
    with pytest.raises(StorageError, match="cannot write"):
        cloud.save(target)
    assert not target.exists()


def test_a_non_finite_network_is_reported_with_stage_and_step() -> None:
    stage = build_stage(TINY_COARSE)
    stage.name = "coarse"
    calls = []

    def hook(module, inputs, output):
        calls.append(1)
        return output * float("nan") if len(calls) >= 3 else output

    stage.net.register_forward_hook(hook)
    text = torch.nn.functional.normalize(torch.randn(2, 128), dim=-1)
    cond = Conditioning({"text": text}, {"text": torch.zeros(128), "image": torch.zeros(128)})
    with pytest.raises(SamplingError, match=r"stage 'coarse': non-finite values at step 3/5"):
        stage.sample(None, cond, sampling={"steps": 5, "scheduler": "ddim"})


CLI_CASES = [
    ("cdm3d", ["generate", ""], "empty"),
    ("cdm3d", ["generate", "a red\x07 cube"], "control characters"),
    ("cdm3d", ["generate", "x" * 3000], "at most 2000"),
    ("cdm3d", ["generate", "a cube", "--steps", "0"], "--steps"),
    ("cdm3d", ["generate", b"a \xff cube".decode("utf-8", "surrogateescape")], "UTF-8"),
    ("cdm3d", ["generate", "a cube", "--model", "{in}"], "cascade.yaml"),
    ("cdm3d", ["generate", "a cube", "--steps", "many"], "invalid int value"),
    ("cdm3d", ["info", "--model", "{in}"], "cascade.yaml"),
    ("cdm3d", ["generate", "a cube", "--guidance", "nan"], "--guidance"),
    ("cdm3d", ["generate", "a cube", "--device", "quantum"], "device"),
    ("cdm3d", ["generate", "a cube", "--model", "{tmp}/nowhere"], "no cascade folder"),
    ("cdm3d", ["generate", "a cube", "--stop-at", "nope", "-o", "{tmp}/o1"], "nope"),
    ("export_mesh", ["a cube", "--formats", "fbx", "-o", "{tmp}/o2"], "unknown format"),
    ("export_mesh", ["--image", "{in}/corrupt.png", "-o", "{tmp}/o3", "--steps", "1"], "cannot be read as an image"),
    ("export_mesh", ["--image", "{in}/text.jpg", "-o", "{tmp}/o4", "--steps", "1"], "cannot be read as an image"),
    ("export_mesh", ["", "-o", "{tmp}/o5"], "empty"),
    ("export_mesh", ["a cube", "-o", "{tmp}/missing/deeper"], "does not exist"),
    ("train", ["--config", "{in}/bad.yaml", "--out", "{tmp}/run"], "not valid YAML"),
    ("train", ["--config", "{in}/nope.yaml", "--out", "{tmp}/run"], "not found"),
    ("train", ["--config", "{in}/typed.yaml", "--out", "{tmp}/run"], "train.steps"),
    ("train", ["--config", "{in}/typed.yaml", "--out", "{tmp}/run", "--set", "oops"], "key=value"),
]


@pytest.mark.parametrize(("prog", "argv", "fragment"), CLI_CASES, ids=[f"{p}:{a[-1][:12]}" for p, a, _ in CLI_CASES])
def test_command_line_errors_are_one_line(prog, argv, fragment, files, tmp_path, capsys) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import train

    main = {"cdm3d": cdm3d.cli.main, "export_mesh": export_mesh.main, "train": train.main}[prog]
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{in}", str(files)) for a in argv]
    try:
        rc = main(argv)
    except SystemExit as exit_:  # argparse's own usage errors
        rc = exit_.code
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and fragment in err[0] and "Traceback" not in err[0], err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and files not in p.parents]
    assert not written, f"files left behind: {written}"


def test_training_errors_for_a_bad_resume_state(tmp_path) -> None:
    from cdm3d.training.trainer import Trainer

    trainer = Trainer.__new__(Trainer)
    trainer.out = tmp_path
    bad = tmp_path / "train_state.pt"
    bad.write_bytes(b"\x80\x04 truncated")
    with pytest.raises(TrainingError, match="unreadable"):
        trainer.load_state(bad)


def test_non_manifold_meshes_are_refused_where_a_closed_surface_is_needed(tmp_path, capsys) -> None:
    import prepare_dataset
    import trimesh

    box = trimesh.creation.box()
    open_box = trimesh.Trimesh(box.vertices, box.faces[:-2], process=False)  # one side missing
    assert not open_box.is_watertight
    (tmp_path / "meshes").mkdir()
    open_box.export(tmp_path / "meshes" / "open.obj")
    (tmp_path / "captions.csv").write_text("uid,caption\nopen,an open box\n")
    argv = ["--meshes", str(tmp_path / "meshes"), "--captions", str(tmp_path / "captions.csv")]
    argv += ["--out", str(tmp_path / "shards"), "--points", "64", "--sdf", "64", "--workers", "1"]
    assert prepare_dataset.main(argv) == 1
    out, err = capsys.readouterr()
    assert "open.obj: not watertight" in out
    assert err.strip().splitlines()[-1] == "prepare_dataset: error: nothing usable was found"  # after the progress bar
    assert not list((tmp_path / "shards").glob("shard-*"))
    # Without SDF samples the same mesh is fine: surface points need no closed surface.
    assert prepare_dataset.main([*argv[:-4], "--workers", "1", "--out", str(tmp_path / "shards2")]) == 0


def test_images_of_other_modes_are_converted_not_misread(tmp_path) -> None:
    from PIL import Image

    from cdm3d.pipelines import load_images

    grey16 = Image.fromarray(np.full((16, 16), 32768, np.uint16))  # mid grey in 16 bits
    grey16.save(tmp_path / "grey16.png")
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent red: the white background shows
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # red
    palette = Image.new("RGB", (16, 16), (0, 0, 255)).convert("P")
    images = load_images([tmp_path / "grey16.png", rgba, cmyk, palette])
    assert images.shape == (4, 3, 16, 16) and images.dtype == torch.float32
    assert torch.allclose(images[0], torch.full_like(images[0], 128 / 255), atol=1 / 255)  # not clipped to white
    assert torch.allclose(images[1], torch.ones_like(images[1]))
    assert images[2, 0].mean() > 0.9 and images[2, 1:].mean() < 0.1
    assert images[3, 2].mean() > 0.9 and images[3, :2].mean() < 0.1
