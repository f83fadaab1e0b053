"""The shape of the code: no import circle in cdm3d, short functions in the core, and declared dependencies
that match the imports."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cdm3d"


def _modules() -> dict[str, Path]:
    """Module name -> file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The module names an import statement names (``from a import b`` names ``a`` and ``a.b``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([node.module] if node.module else []))
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph() -> dict[str, set[str]]:
    """Module -> the package's modules it imports, at module level or inside functions alike."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            for name in _imported(node, module, path.name == "__init__.py"):
                target = resolve(name) if name.split(".")[0] == "cdm3d" else None
                if target is not None and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_in_the_package() -> None:
    """Counting imports inside functions too: a lazy import that closes a circle is still a circle."""
    assert cycles(import_graph()) == []


def test_the_circle_detector_finds_a_circle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_function_in_the_core_is_longer_than_60_lines() -> None:
    long = []
    for path in (PACKAGE / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > 60:
                    long.append(f"{path.name}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []


# Import name -> the distributions that provide it (the rest are their own distribution's name).
PROVIDERS = {
    "PIL": {"pillow"},
    "yaml": {"pyyaml"},
    "skimage": {"scikit-image"},
    "open_clip": {"open-clip-torch"},
    "open3d": {"open3d", "open3d-cpu"},
    "huggingface_hub": {"huggingface-hub"},
}
# Imported only where installed, each behind a fallback (see docs): not a requirement.
OPTIONAL_IMPORTS = {"pytorch3d"}


def third_party_imports() -> set[str]:
    names = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n != "cdm3d"} - OPTIONAL_IMPORTS


def declared_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for spec in project["dependencies"]:
        name = spec.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower())
    return names


def test_declared_dependencies_are_exactly_what_the_package_imports() -> None:
    declared = declared_dependencies()
    needed = {name: PROVIDERS.get(name, {name.lower()}) for name in third_party_imports()}
    undeclared = sorted(name for name, dists in needed.items() if not dists & declared)
    provided = set().union(*needed.values())
    unused = sorted(declared - provided)
    assert undeclared == [], f"imported but not declared in pyproject.toml: {undeclared}"
    assert unused == [], f"declared in pyproject.toml but imported nowhere in cdm3d/: {unused}"


def test_optional_imports_have_a_fallback() -> None:
    """pytorch3d is used only where it imports; the module that uses it catches its absence."""
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        for name in OPTIONAL_IMPORTS:
            if f"import {name}" in text or f"from {name}" in text:
                assert "except ImportError" in text, f"{path.name} imports {name} without a fallback"
