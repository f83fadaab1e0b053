"""The core is modality-free: importing it loads no modality library."""

from __future__ import annotations

import subprocess
import sys

FORBIDDEN = ("PIL", "trimesh", "open3d", "skimage", "open_clip", "torchvision", "diffusers", "cdm3d.stages")


def _modules_after(statement: str) -> set[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def _forbidden(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_importing_core_loads_no_modality_library() -> None:
    loaded = _modules_after("import cdm3d.core")
    assert "cdm3d.core" in loaded
    assert _forbidden(loaded) == []


def test_core_source_never_imports_a_modality_library() -> None:
    """Not even lazily inside functions (open_clip, diffusers and PIL aside, which CLIP and
    the schedulers need at run time)."""
    import pathlib
    import re

    import cdm3d.core

    pattern = re.compile(r"^\s*(import|from)\s+(trimesh|open3d|skimage|PIL|cdm3d\.stages)\b", re.MULTILINE)
    root = pathlib.Path(cdm3d.core.__file__).parent
    for path in root.rglob("*.py"):
        match = pattern.search(path.read_text())
        assert match is None, f"{path.name} imports {match.group(2) if match else ''}"


def test_importing_cdm3d_is_light() -> None:
    loaded = _modules_after("import cdm3d")
    assert "torch" not in loaded


def test_every_builtin_stage_type_has_an_entry_point() -> None:
    """A fresh process finds each stage type by its entry point alone (a cascade.yaml may name a stage type
    before any module that registers it was imported): pyproject.toml lists every type load_builtin registers,
    each pointing at its class."""
    import importlib
    import pathlib

    import tomllib

    from cdm3d.core import STAGES
    from cdm3d.stages import load_builtin

    load_builtin()
    # Other tests register stage types of their own (the toy modality) in this process: only cdm3d's count.
    builtin = {name for name, cls in STAGES._items.items() if cls.__module__.startswith("cdm3d.stages.")}
    pyproject = tomllib.loads((pathlib.Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    declared = pyproject["project"]["entry-points"]["cdm3d.stages"]
    assert set(declared) == builtin, sorted(builtin ^ set(declared))
    for name, target in declared.items():
        module, _, attr = target.partition(":")
        assert getattr(importlib.import_module(module), attr) is STAGES.get(name), name
