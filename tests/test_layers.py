"""The layers of docs/ARCHITECTURE.md, held against the code's own imports.

Every ``import bfcl.X`` anywhere in a module (top level, inside a function, or under
``TYPE_CHECKING``) must point to a lower layer, or within the same package; the two run
layers (``training``, ``inference``) are siblings and must not import each other. Reading
the source with ``ast`` means nothing is imported or run here.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "bfcl"

#: Lowest first. A part is a top-level module or subpackage of bfcl; the package root
#: ``bfcl`` (its ``__init__.py``: the public face) sits above everything.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("errors", "_version", "threads"),
    ("data", "validation"),
    ("encoders", "metrics", "confusion"),
    ("model",),
    ("processing",),
    ("inference", "training"),
    ("serving", "demo"),
    ("cli", "experiments", "__main__", "distributed"),
    ("bfcl",),
)
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}
#: Same layer, yet neither may import the other: what both need lives a layer below.
SIBLINGS = {frozenset({"inference", "training"})}

#: Known breaches being removed on other branches (issue 10). Each entry must still exist:
#: when a merge removes one, delete it here, so the list never hides a new breach.
KNOWN: set[tuple[str, str]] = set()
#: Known import cycles between files (same rule as KNOWN).
KNOWN_CYCLES: set[frozenset[str]] = set()


def part_of(module: str) -> str:
    """``bfcl.data.umt`` -> ``data``; ``bfcl`` -> ``bfcl`` (the root)."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "bfcl"


def source_part(path: Path) -> str:
    rel = path.relative_to(SRC)
    return "bfcl" if rel.as_posix() == "__init__.py" else rel.parts[0].removesuffix(".py")


def bfcl_imports(text: str, rel: Path) -> set[str]:
    """Absolute ``bfcl`` modules that source ``text`` of file ``rel`` (relative to bfcl/) imports,
    relative imports resolved against its package."""
    package = ["bfcl", *rel.parent.parts]
    found: set[str] = set()
    for node in ast.walk(ast.parse(text, filename=str(rel))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "bfcl")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] == "bfcl":
                found.add(module)
    return found


def breaches() -> set[tuple[str, str]]:
    out = set()
    for path in sorted(SRC.rglob("*.py")):
        src = source_part(path)
        assert src in RANK, f"{path.relative_to(SRC)}: part {src!r} has no layer; add it to LAYERS (and docs/ARCHITECTURE.md)"
        for module in bfcl_imports(path.read_text(encoding="utf-8"), path.relative_to(SRC)):
            dst = part_of(module)
            assert dst in RANK, f"{path.relative_to(SRC)} imports {module}: part {dst!r} has no layer"
            if dst == src and src != "bfcl":
                continue
            upward = RANK[dst] > RANK[src] or (RANK[dst] == RANK[src] and frozenset({src, dst}) in SIBLINGS)
            if upward or dst == "bfcl":
                out.add((path.relative_to(SRC).as_posix(), module))
    return out


def module_graph() -> dict[str, set[str]]:
    """bfcl module -> the bfcl modules it imports (``from bfcl.x import name`` counts as bfcl.x)."""
    raw = {}
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        name = ".".join(["bfcl", *rel.with_suffix("").parts]).removesuffix(".__init__")
        raw[name] = bfcl_imports(path.read_text(encoding="utf-8"), rel)

    def resolve(module: str) -> str:
        while module not in raw and "." in module:
            module = module.rsplit(".", 1)[0]
        return module

    return {a: {resolve(b) for b in bs} - {a} for a, bs in raw.items()}


def cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.add(frozenset(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    found = cycles(module_graph())
    assert not found - KNOWN_CYCLES, f"import cycles: {[sorted(c) for c in found - KNOWN_CYCLES]}"
    assert not KNOWN_CYCLES - found, f"fixed, so remove from KNOWN_CYCLES: {[sorted(c) for c in KNOWN_CYCLES - found]}"


def test_cycle_finder() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert cycles(graph) == {frozenset({"a", "b", "c"})}


def test_imports_point_down_only() -> None:
    new = breaches() - KNOWN
    assert not new, "imports that point up (or across training/inference): " + ", ".join(f"{a} -> {b}" for a, b in sorted(new))


def test_known_breaches_are_still_there() -> None:
    gone = KNOWN - breaches()
    assert not gone, f"fixed, so remove from KNOWN in tests/test_layers.py: {sorted(gone)}"


def test_checker_sees_function_level_and_relative_imports() -> None:
    rel = Path("model/m.py")
    text = "def g():\n    from bfcl.cli import main\n    import bfcl.serving.app\nfrom ..data import umt\nfrom . import crf\n"
    assert bfcl_imports(text, rel) == {"bfcl.cli", "bfcl.serving.app", "bfcl.data", "bfcl.model"}
