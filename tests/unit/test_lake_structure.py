"""Structure the lake layer promises (docs/adr/0007-lake-layer.md), checked on the source.

- zone paths are spelled only in ``pseudozone.lake``: no other module holds a string
  with the ``tenant_id=`` or ``date=`` path fragments (code, f-strings or docstrings);
- pseudozone's modules import each other without a cycle, at module level and counting
  imports inside functions too;
- ingest does not reach up into ``pseudozone.rights``, and the lake layer imports
  nothing that calls it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import pseudozone

PACKAGE = Path(pseudozone.__file__).parent
FRAGMENTS = ("tenant_id=", "date=")
# the lake may read the request ledger's tables (holds, restrictions, in the one state
# database: ADR 0018); nothing above it
LAKE_MAY_IMPORT = {"pseudozone.config", "pseudozone.errors", "pseudozone.contracts", "pseudozone.zones",
                   "pseudozone.state", "pseudozone.keys", "pseudozone.rights.store", "pseudozone.lake"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _type_checking_only(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(node: ast.AST, *, module_level_only: bool) -> list[ast.AST]:
    """Import statements under ``node`` that run (``if TYPE_CHECKING:`` blocks never do)."""
    out: list[ast.AST] = []
    for child in ast.iter_child_nodes(node):
        if _type_checking_only(child):
            continue
        if isinstance(child, ast.Import | ast.ImportFrom):
            out.append(child)
        elif not (module_level_only
                  and isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)):
            out += _import_nodes(child, module_level_only=module_level_only)
    return out


def _imports(name: str, *, module_level_only: bool) -> set[str]:
    """The pseudozone modules ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in _import_nodes(tree, module_level_only=module_level_only):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            submodules = {f"{node.module}.{a.name}" for a in node.names} & set(MODULES)
            found |= submodules or {node.module}
    return {m for m in found if m in MODULES and m != name and m != "pseudozone"}


def _cycle(module_level_only: bool) -> list[str] | None:
    graph = {m: _imports(m, module_level_only=module_level_only) for m in MODULES}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            # a module importing its own package's __init__ is no cycle of concern
            if m.startswith(n + "."):
                continue
            if state.get(n) == 1:
                return [*stack[stack.index(n):], n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(MODULES):
        if m not in state and (found := visit(m)):
            return found
    return None


def _strings(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)]


def test_no_module_outside_the_lake_spells_a_zone_path_fragment() -> None:
    offenders = [f"{path.relative_to(PACKAGE.parent)}:{line}"
                 for name, path in MODULES.items() if not name.startswith("pseudozone.lake")
                 for line, text in _strings(path) if any(f in text for f in FRAGMENTS)]
    assert offenders == [], "zone paths belong to pseudozone.lake.layout: " + ", ".join(offenders)


def test_the_lake_layout_does_spell_them() -> None:
    texts = " ".join(t for _, t in _strings(MODULES["pseudozone.lake.layout"]))
    assert all(f in texts for f in FRAGMENTS)


def test_there_is_no_import_cycle_at_module_level() -> None:
    assert _cycle(module_level_only=True) is None


def test_there_is_no_import_cycle_even_through_imports_inside_functions() -> None:
    assert _cycle(module_level_only=False) is None


def test_export_and_the_rights_processor_do_not_import_each_other_both_ways() -> None:
    export = _imports("pseudozone.rights.export", module_level_only=False)
    process = _imports("pseudozone.rights.process", module_level_only=False)
    assert "pseudozone.rights.process" not in export
    assert "pseudozone.rights.export" in process  # the one direction


def test_ingest_does_not_import_from_rights() -> None:
    assert not {m for m in _imports("pseudozone.ingest", module_level_only=False)
                if m == "pseudozone.rights" or m.startswith("pseudozone.rights.")}


def test_the_lake_imports_nothing_that_calls_it() -> None:
    for name in (m for m in MODULES if m.startswith("pseudozone.lake")):
        above = {m for m in _imports(name, module_level_only=False)
                 if not any(m == ok or m.startswith(ok + ".") for ok in LAKE_MAY_IMPORT)}
        assert above == set(), f"{name} imports {sorted(above)}"


@pytest.mark.parametrize("module", ["pseudozone.rights.export", "pseudozone.rights.process",
                                    "pseudozone.ingest", "pseudozone.compliance.nightly"])
def test_each_caller_imports_first_in_a_fresh_interpreter(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
