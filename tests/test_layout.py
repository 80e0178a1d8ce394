"""The package's shape: layers import downwards only, no import cycles, size limits.

Reads the source with :mod:`ast` (nothing is imported), so every import counts:
module level, inside functions (lazy) and under ``if TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "bsipatch"

MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 80

# Layer of each top-level part of the package: a module may import its own layer and
# lower ones, never a higher one. The top-level facade (bsipatch/__init__.py, loading
# names lazily by string) and __main__ sit above everything.
LAYERS: dict[str, int] = {
    "_version": 0,
    "errors": 0,
    "_crashpoints": 0,
    "_threads": 0,
    "_reprs": 0,
    "_partial": 0,
    "_lite": 0,
    "_zstd": 0,
    "_io": 1,
    "_time": 1,
    "_buffers": 2,
    "_native": 2,
    "hashing": 3,
    "api": 9,
    "hazmat": 9,
    "seal": 4,  # seal.format < seal.build < seal.verify < seal.reader < seal.tree (facade)
    "delta": 5,
    "trust": 6,
    "device": 7,
    "agent": 8,
    "mdm": 8,
    "vendor": 8,
    "cli": 10,
    "__init__": 11,
    "__main__": 11,
}

# Today's offenders against the size limits, each with the helper who will shrink it.
# Remove an entry when the file or function is back under the limit (the test below
# fails on entries that no longer need to be here). "path" is a file,
# "path::Qualified.name" a function.
SIZE_ALLOWLIST: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """Every ``bsipatch`` module ``path`` imports, wherever the import statement is."""
    deps: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            deps.update(a.name for a in node.names if a.name.startswith("bsipatch"))
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                pytest.fail(f"{path}: relative import (use absolute imports)")
            if not node.module.startswith("bsipatch"):
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                deps.add(sub if sub in MODULES else node.module)
    return {d for d in deps if d in MODULES}


GRAPH = {m: _imports(f) - {m} for m, f in MODULES.items()}


def _layer(module: str) -> int:
    parts = module.split(".")
    key = "__init__" if parts == ["bsipatch"] else parts[1]
    assert key in LAYERS, f"{module}: new top-level part {key!r}; give it a layer in LAYERS"
    return LAYERS[key]


def test_lower_layers_never_import_higher_layers() -> None:
    bad = [
        f"{m} (layer {_layer(m)}) imports {d} (layer {_layer(d)})"
        for m, deps in GRAPH.items()
        for d in sorted(deps)
        if _layer(d) > _layer(m)
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    # Tarjan's strongly connected components: any component of more than one module
    # (or a module importing itself) is a cycle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


def _functions(tree: ast.AST) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert child.end_lineno is not None
                out.append((prefix + child.name, child.end_lineno - child.lineno + 1))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    walk(tree, "")
    return out


def _size_offenders() -> dict[str, int]:
    out: dict[str, int] = {}
    for f in MODULES.values():
        rel = f.relative_to(PKG).as_posix()
        src = f.read_text()
        lines = src.count("\n")
        if lines > MAX_FILE_LINES:
            out[rel] = lines
        for name, n in _functions(ast.parse(src)):
            if n > MAX_FUNCTION_LINES:
                out[f"{rel}::{name}"] = n
    return out


def test_files_and_functions_within_size_limits() -> None:
    offenders = _size_offenders()
    new = {k: n for k, n in offenders.items() if k not in SIZE_ALLOWLIST}
    assert not new, (
        f"over {MAX_FILE_LINES} lines per file / {MAX_FUNCTION_LINES} per function: {new}"
    )


def test_size_allowlist_has_no_stale_entries() -> None:
    stale = sorted(set(SIZE_ALLOWLIST) - set(_size_offenders()))
    assert not stale, f"now within the limits, remove from SIZE_ALLOWLIST: {stale}"


def test_layout_checks_can_fail(tmp_path: Path) -> None:
    # the size and cycle machinery sees what it should on a known example
    src = "def f():\n" + "    x = 1\n" * 90 + "class C:\n    def g(self):\n        pass\n"
    names = dict(_functions(ast.parse(src)))
    assert names == {"f": 91, "C.g": 2}
    probe = tmp_path / "probe.py"
    probe.write_text(
        "from bsipatch.delta import diff\nimport bsipatch.errors\n"
        "def h():\n    from bsipatch.seal.tree import Seal\n"
    )
    assert _imports(probe) == {"bsipatch.delta.diff", "bsipatch.errors", "bsipatch.seal.tree"}


def test_every_module_says_its_job() -> None:
    missing = [m for m, f in MODULES.items() if ast.get_docstring(ast.parse(f.read_text())) is None]
    assert not missing, f"modules without a docstring: {missing}"


# --- one home for time stamps: bsipatch/_time.py --------------------------------------------

TIME_MODULE = "bsipatch._time"
# Names of _time's helpers: no other module may define a function by one of these names.
TIME_HELPERS = {"utc_now", "format_time", "parse_time", "now_text", "to_utc", "parse_epoch"}
TIME_HELPERS |= {"epoch_to_text"}
# Clock and time-text calls that belong in _time only (``x.now()`` is the clock).
TIME_CALLS = {"now", "utcnow", "strptime", "fromisoformat", "fromtimestamp", "utcfromtimestamp"}


def _time_copies(tree: ast.AST) -> list[str]:
    """What in ``tree`` duplicates :mod:`bsipatch._time` (with line numbers)."""
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name in TIME_HELPERS:
            found.append(f"line {node.lineno}: defines {node.name}()")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if "%Y-%m-%dT" in node.value or "%H:%M:%S" in node.value:
                found.append(f"line {node.lineno}: time format {node.value!r}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value
            on_datetime = isinstance(base, ast.Name) and base.id == "datetime"
            on_datetime |= isinstance(base, ast.Attribute) and base.attr == "datetime"
            if on_datetime and node.func.attr in TIME_CALLS:
                found.append(f"line {node.lineno}: calls datetime.{node.func.attr}()")
    return found


def test_time_helpers_live_only_in_the_time_module() -> None:
    copies = {
        m: found
        for m, f in MODULES.items()
        if m != TIME_MODULE and (found := _time_copies(ast.parse(f.read_text())))
    }
    assert not copies, f"use bsipatch._time instead of a copy: {copies}"
    assert _time_copies(ast.parse(MODULES[TIME_MODULE].read_text())), "probe sees nothing"


def test_time_copy_check_can_fail() -> None:
    src = (
        "import datetime as dt\nfrom datetime import datetime\n"
        "def utc_now():\n    return dt.datetime.now(dt.timezone.utc)\n"
        "STAMP = f'{datetime.now():%Y-%m-%dT%H:%M:%SZ}'\n"
        "T = datetime.strptime('x', '%d')\n"
    )
    assert sorted(c.split(":", 1)[1].strip() for c in _time_copies(ast.parse(src))) == [
        "calls datetime.now()",
        "calls datetime.now()",
        "calls datetime.strptime()",
        "defines utc_now()",
        "time format '%Y-%m-%dT%H:%M:%SZ'",
    ]
