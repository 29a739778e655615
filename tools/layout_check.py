"""Import-structure rules of the repository: no import cycle, no long file, no upward import.

    python tools/layout_check.py [ROOT] [--layers layers.txt] [--max-lines 600]

Reads every ``.py`` file under ROOT (default: the repository; ``tests/``, ``test/``, hidden
folders and ``__pycache__`` are skipped), resolves the ``import x`` and ``from x import y``
statements that name the project's own modules (absolute and relative, inside functions
too: a deferred import is still a dependency) and prints one line per problem:

* an import cycle between files (a strongly connected component of the file graph);
* a file longer than ``--max-lines``;
* with ``--layers FILE`` (one layer per line, top first, each a space-separated list of
  top-level names or patterns such as ``train_*.py``): an import of a higher layer. A
  module may import its own layer and any layer below it.

A package's ``__init__`` importing its own submodules is not a cycle. Exit status: 0 when
nothing is printed, 1 otherwise. ``tests/test_layout.py`` runs the same rules.
"""

from __future__ import annotations

import argparse
import ast
import fnmatch
import sys
from pathlib import Path

SKIPPED_FOLDERS = ("tests", "test", "__pycache__")
MAX_LINES = 600


def collect_modules(root: Path) -> dict[str, Path]:
    """Dotted module name of every source file under ``root`` (packages by ``__init__``)."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        folders = path.relative_to(root).parts[:-1]
        if any(p.startswith(".") or p in SKIPPED_FOLDERS for p in folders):
            continue
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The project module an imported name belongs to (``a.b.c`` -> ``a.b``), if any."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``module`` (file ``path``) imports anywhere in its body."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return set()
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if path.name != "__init__.py":
                    package = package[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for name in names:
            target = _resolve(name, modules)
            if target and target != module:
                found.add(target)
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def read_layers(path: Path) -> list[list[str]]:
    """Layers of a layers file, top first; ``#`` lines are comments."""
    lines = path.read_text().splitlines()
    return [line.split() for line in lines if line.strip() and not line.startswith("#")]


def layer_of(
    module: str, path: Path, root: Path, layers: list[list[str]]
) -> int | None:
    """Index of the layer a module belongs to (0 = top), or None when it has none."""
    top = path.relative_to(root).parts[0]
    for number, patterns in enumerate(layers):
        for pattern in patterns:
            if fnmatch.fnmatch(top, pattern) or fnmatch.fnmatch(
                module.split(".")[0], pattern
            ):
                return number
    return None


def layout_problems(
    root: Path, layers_file: Path | None = None, max_lines: int = MAX_LINES
) -> list[str]:
    """Every import cycle, long file and upward import under ``root``, one line each."""
    root = root.resolve()
    modules = collect_modules(root)
    graph = {m: imports_of(m, p, modules) for m, p in modules.items()}
    for module, targets in graph.items():
        if modules[module].name == "__init__.py":
            graph[module] = {t for t in targets if not t.startswith(module + ".")}
    problems = []
    for component in _cycles(graph):
        files = " -> ".join(str(modules[m].relative_to(root)) for m in component)
        problems.append(f"import cycle ({len(component)} files): {files}")
    for _, path in sorted(modules.items()):
        count = len(path.read_text(encoding="utf-8", errors="replace").splitlines())
        if count > max_lines:
            problems.append(
                f"long file: {path.relative_to(root)} has {count} lines (> {max_lines})"
            )
    if layers_file is not None:
        layers = read_layers(layers_file)
        for module, path in sorted(modules.items()):
            own = layer_of(module, path, root, layers)
            if own is None:
                continue
            for target in sorted(graph[module]):
                other = layer_of(target, modules[target], root, layers)
                if other is not None and other < own:
                    problems.append(
                        f"upward import: {path.relative_to(root)} (layer {own + 1}) "
                        f"imports {target} (layer {other + 1})"
                    )
    return problems


def main(argv: list[str] | None = None) -> int:
    """Print the layout problems of a tree; exit status 1 when there is any."""
    parser = argparse.ArgumentParser(
        prog="python tools/layout_check.py",
        description="Print import cycles, long files and upward imports of a tree.",
    )
    parser.add_argument(
        "root",
        nargs="?",
        default=str(Path(__file__).resolve().parent.parent),
        help="tree to check (default: this repository)",
    )
    parser.add_argument(
        "--layers", type=Path, help="layers file: one layer per line, top first"
    )
    parser.add_argument(
        "--max-lines",
        type=int,
        default=MAX_LINES,
        help="longest allowed source file",
    )
    args = parser.parse_args(argv)
    problems = layout_problems(Path(args.root), args.layers, args.max_lines)
    for line in problems:
        print(line)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
