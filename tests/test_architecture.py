"""The import directions written down in ARCHITECTURE.md, checked on the source (no imports run).

Every import counts, including ones inside functions: a lazy import is still a dependency."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "visdiff"

# Room → rooms it may import from (besides itself). "base" is the handful of top-level modules
# every room shares; "app" is the top of the tree (CLI, demo), which may use anything.
BASE = {"errors", "schema", "config", "timing", "sampling", "registry"}
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "presets": set(),  # model presets: YAML data only
    "io": {"base"},
    "models": {"base"},
    "cache": {"base", "io"},
    "sources": {"base", "io"},
    "stages": {"base", "io", "sources", "models", "cache"},
    "rank": {"base"},
    "llm": {"base"},
    "propose": {"base", "llm"},
    "evaluate": {"base", "llm", "propose"},
    "serving": {"base", "llm", "models"},
    "report": {"base", "io", "rank"},
    "pipeline": {
        "base",
        "io",
        "models",
        "cache",
        "sources",
        "stages",
        "rank",
        "llm",
        "propose",
        "evaluate",
        "serving",
        "report",
    },
    "suite": {"*"},  # `visdiff bench`: runs describe per pair, so it sits beside the app
    "app": {"*"},
}
# Where `ray` may be imported: the wiring, the Serve apps, the aggregation, and the CLI.
RAY_ALLOWED = ("pipeline", "serving", "suite", "app")
RAY_ALLOWED_MODULES = {"visdiff.rank.aggregate"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    """The room a module lives in: its subpackage, "base" or "app" for top-level modules."""
    parts = module.split(".")
    if len(parts) == 1:
        return "app"
    if len(parts) == 2 and (PACKAGE / f"{parts[1]}.py").is_file():
        return "base" if parts[1] in BASE else "app"
    return parts[1]


def _resolve(node: ast.ImportFrom | ast.Import, module: str) -> set[str]:
    """Fully qualified names a statement imports (modules, or the module holding a name)."""
    known = _modules()
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = node.module or ""
    if node.level:
        anchor = module.split(".")
        is_package = _modules()[module].name == "__init__.py"
        anchor = anchor if is_package else anchor[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, base] if base else anchor)
    names = set()
    for alias in node.names:
        candidate = f"{base}.{alias.name}"
        names.add(candidate if candidate in known else base)
    return names


@cache
def imports_of(module: str) -> frozenset[str]:
    tree = ast.parse(_modules()[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found |= _resolve(node, module)
    return frozenset(found)


def _internal(module: str) -> set[str]:
    known = _modules()
    out = set()
    for name in imports_of(module):
        if not (name == "visdiff" or name.startswith("visdiff.")):
            continue
        while name not in known and "." in name:
            name = name.rsplit(".", 1)[0]
        if name != "visdiff" and name != module:
            out.add(name)
    return out


def test_rooms_import_only_in_the_allowed_directions():
    problems = []
    for module in _modules():
        mine = room(module)
        allowed = ALLOWED.get(mine)
        assert allowed is not None, f"{module}: room {mine!r} is not in ARCHITECTURE.md's table"
        if "*" in allowed:
            continue
        for target in sorted(_internal(module)):
            theirs = room(target)
            if theirs != mine and theirs not in allowed:
                problems.append(f"{module} ({mine}) imports {target} ({theirs})")
    assert not problems, "\n".join(problems)


def test_ray_is_imported_only_where_graphs_and_apps_are_built():
    offenders = [
        module
        for module in _modules()
        if room(module) not in RAY_ALLOWED
        and module not in RAY_ALLOWED_MODULES
        and any(name == "ray" or name.startswith("ray.") for name in imports_of(module))
    ]
    assert not offenders, f"modules importing ray outside the wiring: {offenders}"


def test_no_import_cycles():
    graph = {module: _internal(module) for module in _modules()}
    # A package's __init__ re-exporting its own modules is not a cycle worth reporting.
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize(
    ("module", "expected"),
    [
        ("visdiff.cli", "app"),
        ("visdiff.config", "base"),
        ("visdiff.pipeline.graph", "pipeline"),
        ("visdiff.stages.embed", "stages"),
    ],
)
def test_rooms_are_named_as_documented(module, expected):
    assert room(module) == expected


def test_the_checker_sees_lazy_imports():
    # cli.py imports the pipeline inside functions only; the checker must still see it.
    assert any(name.startswith("visdiff.pipeline") for name in imports_of("visdiff.cli"))
