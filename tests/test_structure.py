"""The code's structure (issue 12), read with ``ast`` from the source: no import cycle between the
modules of ``miner/`` and ``workers/`` (imports inside functions count too), no module over 600
lines, click only in the command-line modules, Celery and kombu only in ``workers/``, and every
module that ``docs/architecture.md`` names exists."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: Each source folder and the package name it installs as (pyproject.toml's package-dir: the
#: ``workers/`` folder is the ``miner.workers`` package).
PACKAGES = {"miner": "miner", "workers": "miner.workers"}
MAX_LINES = 600
CLI_MODULES = {"miner.faces.cli", "miner.faces.cli_options"}


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            found[".".join((package, *parts))] = path
    return found


def imports(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, at module level or inside a function (absolute names)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: {m for m in imports(path, name) if m in mods and m != name} for name, path in mods.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle_and_a_relative_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert "miner.workers.app" in imports(ROOT / "workers" / "tasks.py", "miner.workers.tasks")
    assert "miner.workers.tasks" in modules() and "workers.tasks" not in modules()


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_no_module_over_600_lines():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_click_only_in_the_cli_and_celery_only_in_workers():
    for name, path in modules().items():
        used = {m.split(".")[0] for m in imports(path, name)}
        if "click" in used:
            assert name in CLI_MODULES, f"{name} imports click"
        if used & {"celery", "kombu", "billiard"}:
            assert name.startswith("miner.workers."), f"{name} imports Celery or kombu"


def test_nothing_below_the_tasks_imports_them():
    importers = {name for name, deps in graph().items() if "miner.workers.tasks" in deps}
    assert importers == set()


def test_architecture_page_names_real_modules():
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = set(re.findall(r"`((?:miner|workers)/[\w/]+\.py)`", text))
    assert len(named) >= 15, "docs/architecture.md should name the modules that own each step"
    missing = sorted(p for p in named if not (ROOT / p).exists())
    assert missing == []
    every = {str(path.relative_to(ROOT)) for path in modules().values() if path.name != "__init__.py"}
    unnamed = sorted(every - named - {"miner/__main__.py"})
    assert unnamed == [], "docs/architecture.md should name every module"


def test_the_folder_tree_is_the_one_docs_architecture_lists():
    """docs/architecture.md's folder tree names every module of each folder of miner/, workers/ and
    migrations/, and nothing else."""
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = text.split("<!-- tree -->", 1)[1].split("<!-- /tree -->", 1)[0]
    listed = {}
    for line in block.strip().splitlines():
        folder, rest = line.split(None, 1)
        listed[folder.rstrip("/")] = {name.strip().rstrip("/") for name in rest.rsplit(":", 1)[-1].split(",")}
    actual = {}
    for folder in sorted({p.parent for p in (ROOT / "miner").rglob("*.py")} - {ROOT / "miner"}) + [ROOT / "workers"]:
        actual[str(folder.relative_to(ROOT))] = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
    actual["migrations"] = {"env", "versions"}
    assert listed == actual
    loose = {p.name for p in (ROOT / "miner").glob("*.py")}
    assert loose == {"__init__.py", "__main__.py"}, "every module of miner/ lives in one of its layer folders"
