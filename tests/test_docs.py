"""The README and docs are documentation: short, generated figures only, no lab diary, links that resolve."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
RESULTS_PAGE = ROOT / "docs" / "results.md"
sys.path.insert(0, str(ROOT / "tools"))
import results_page  # noqa: E402

# A figure: a percentage, or a number with a decimal point (seconds, Chamfer, FID ...).
FIGURE = re.compile(r"(?<![\w.])\d+(?:\.\d+)?%|(?<![\w./-])\d+\.\d+(?!\.?\d)(?![\w.]*/)")
HASH = re.compile(r"\b[0-9a-f]{7,40}\b")


def prose(text: str) -> str:
    """``text`` without fenced code blocks and inline code (commands and file names hold version numbers)."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"`[^`]*`", "", text)


def test_the_results_page_and_the_readme_table_regenerate_identically() -> None:
    assert results_page.main(["--check"]) == 0, "run: bash tools/env.sh python tools/results_page.py"


def test_the_generator_notices_a_stale_page(tmp_path, monkeypatch) -> None:
    stale = tmp_path / "results.md"
    stale.write_text(RESULTS_PAGE.read_text().replace("%", " %", 1))
    monkeypatch.setattr(results_page, "PAGE", stale)
    assert results_page.main(["--check"]) == 1


def test_every_figure_in_the_readme_is_on_the_results_page() -> None:
    page = RESULTS_PAGE.read_text()
    figures = FIGURE.findall(prose(README.read_text()))
    assert figures, "the README shows the generated figures table"
    assert [f for f in figures if f not in page] == []


@pytest.mark.parametrize("path", [p for p in DOCS if p.name not in ("results.md", "history.md")], ids=lambda p: p.name)
def test_docs_type_no_figure_that_is_not_on_the_results_page(path) -> None:
    """Measured figures live in docs/results.md; a page links there instead of copying them."""
    page = RESULTS_PAGE.read_text()
    percentages = [f for f in FIGURE.findall(prose(path.read_text())) if f.endswith("%")]
    assert [f for f in percentages if f not in page] == []


def test_the_readme_is_short_and_starts_with_what_cdm3d_is_and_how_to_run_it() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 250
    head = "\n".join(lines[:30])
    assert "cdm3d is a Python library" in head
    assert "bash tools/env.sh cdm3d generate" in head and "bash tools/env.sh pytest -q" in head
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash tools/env.sh pytest -q" in ci


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_no_work_rounds_or_commit_hashes(path) -> None:
    text = path.read_text()
    assert not re.search(r"\bsessions?\b", text, flags=re.I)
    assert not re.search(r"\bround \d+", text, flags=re.I)
    if path.name != "history.md":
        hashes = [h for h in HASH.findall(text) if not h.isdigit() and re.search(r"\d", h)]
        assert hashes == []


@pytest.mark.parametrize("path", [README, *DOCS, ROOT / "configs" / "README.md"], ids=lambda p: p.name)
def test_relative_links_resolve(path) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)", path.read_text()):
        if "://" in target:
            continue
        assert (path.parent / target).exists(), f"{path.name} links to {target}, which does not exist"
