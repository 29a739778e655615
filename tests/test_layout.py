"""The code layout stays as README.md describes it: no import cycles, no source file over 600
lines, and no import from a higher layer (``layers.txt``, top first).

Runs the workplace's ``layout_check.py`` when it is there (``../shared/tools``); otherwise the
same rules are checked here with the standard library, so a clean clone tests them too.
"""

from __future__ import annotations

import ast
import fnmatch
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ROOT / "layers.txt"
TOOL = ROOT.parent / "shared" / "tools" / "layout_check.py"
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in ("tests", "__pycache__") for p in rel[:-1]):
            continue
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _resolve(name: str, mods: dict[str, Path]) -> str | None:
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(mod: str, path: Path, mods: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = (
                    mod.split(".")
                    if path.name == "__init__.py"
                    else mod.split(".")[:-1]
                )
                pkg = pkg[: len(pkg) - node.level + 1]
                base = ".".join(pkg + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in node.names] + [base]
        for name in names:
            target = _resolve(name, mods)
            if target and target != mod:
                found.add(target)
    return found


def _layer(path: Path, layers: list[list[str]]) -> int | None:
    top = path.relative_to(ROOT).parts[0]
    for index, patterns in enumerate(layers):
        if any(fnmatch.fnmatch(top, pattern) for pattern in patterns):
            return index
    return None


def layout_problems() -> list[str]:
    """Cycles, long files and upward imports of the tree, one line each."""
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    for m, targets in graph.items():
        if mods[m].name == "__init__.py":
            graph[m] = {t for t in targets if not t.startswith(m + ".")}
    problems = []
    # A cycle shows up as a module reachable from itself.
    for start in graph:
        stack, seen = list(graph[start]), set()
        while stack:
            node = stack.pop()
            if node == start:
                problems.append(f"import cycle through {mods[start].relative_to(ROOT)}")
                break
            if node not in seen:
                seen.add(node)
                stack.extend(graph[node])
    for path in mods.values():
        if len(path.read_text(encoding="utf-8").splitlines()) > MAX_LINES:
            problems.append(f"long file: {path.relative_to(ROOT)}")
    layers = [
        line.split()
        for line in LAYERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for m, path in mods.items():
        own = _layer(path, layers)
        for target in graph[m]:
            other = _layer(mods[target], layers)
            if own is not None and other is not None and other < own:
                problems.append(f"upward import: {path.relative_to(ROOT)} -> {target}")
    return sorted(problems)


def test_every_top_level_package_has_a_layer():
    layers = [
        pattern
        for line in LAYERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
        for pattern in line.split()
    ]
    tops = {p.relative_to(ROOT).parts[0] for p in _modules().values()}
    unplaced = [t for t in tops if not any(fnmatch.fnmatch(t, p) for p in layers)]
    assert not unplaced, f"add these to layers.txt: {sorted(unplaced)}"


def test_layout_rules_hold():
    assert layout_problems() == []


def test_workplace_layout_check_agrees():
    if not TOOL.is_file():
        import pytest

        pytest.skip(f"{TOOL} not present (checked by test_layout_rules_hold instead)")
    result = subprocess.run(
        [sys.executable, str(TOOL), str(ROOT), "--layers", str(LAYERS)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_check_finds_an_upward_import(tmp_path, monkeypatch):
    # The check must be able to fail: plant an upward import and a cycle in a copy.
    for name in ("geometry", "utils"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text("")
    (tmp_path / "utils" / "a.py").write_text("import geometry.b\n")
    (tmp_path / "geometry" / "b.py").write_text("import utils.a\n")
    (tmp_path / "layers.txt").write_text("geometry\nutils\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    monkeypatch.setattr(sys.modules[__name__], "LAYERS", tmp_path / "layers.txt")
    problems = layout_problems()
    assert any(p.startswith("upward import: utils/a.py") for p in problems)
    assert any(p.startswith("import cycle") for p in problems)
