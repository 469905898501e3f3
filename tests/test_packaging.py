"""Packaging facts that drift silently: one version, and a LICENSE that matches the declared licence."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import bfcl

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_version_lives_only_in_package() -> None:
    data = pyproject()
    assert "version" not in data["project"], "pyproject.toml must not repeat the version"
    assert "version" in data["project"]["dynamic"]
    assert data["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "bfcl._version.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:[.-]?\w+)?", bfcl.__version__), bfcl.__version__
    defined = [p.relative_to(ROOT).as_posix() for p in (ROOT / "src").rglob("*.py") if "__version__ =" in p.read_text()]
    assert defined == ["src/bfcl/_version.py"], defined


def test_license_file_matches_pyproject() -> None:
    declared = pyproject()["project"]["license"]["text"]
    assert declared == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text  # the full text, not a stub


def test_code_and_docs_carry_their_own_rationale() -> None:
    """Users have no ../shared/notes: src/ and docs/ must state the reason, not point at it."""
    hits = [
        f"{path.relative_to(ROOT)}:{n}"
        for top in ("src", "docs")
        for path in sorted((ROOT / top).rglob("*"))
        if path.suffix in {".py", ".md", ".js", ".html"}
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"shared/notes|paper-notes|offline-models\.md", line)
    ]
    assert not hits, f"pointers to notes users do not have: {hits}"
