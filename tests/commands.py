"""Every command of the repository, found the way a user finds them, for the generic CLI tests.

Commands are discovered, not listed, so a command added later is covered without editing the
tests: the top-level scripts (``*.py`` in the repository root with a ``main``), every
sub-command registered in the ``COMMANDS`` table of ``evaluation.py``, ``export.py`` and
``data_gen.py`` (and of any other top-level script that has one), every module that runs
as ``python -m`` (a ``__main__`` guard or a package ``__main__.py``) and the Python scripts
of ``scripts/``.

A command is an argv prefix: ``("train_superpoint.py",)``, ``("evaluation.py", "hpatches")``
or ``("-m", "models.weights")``; :func:`run_command` runs it in this process, as the shell
would, and returns its exit code.
"""

from __future__ import annotations

import ast
import importlib
import re
import runpy
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "datasets",
    "models",
    "losses",
    "pipelines",
    "evaluators",
    "visualization",
    "engine",
    "geometry",
    "utils",
    "benchmarks",
)


def _has_main(path: Path) -> bool:
    tree = ast.parse(path.read_text())
    return any(
        isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body
    )


def top_level_scripts() -> list[str]:
    """``train_*.py``, ``extract.py``, ``evaluation.py``... : root scripts with a ``main``."""
    return sorted(
        p.name for p in ROOT.glob("*.py") if p.name != "conftest.py" and _has_main(p)
    )


def sub_commands() -> list[tuple[str, str]]:
    """``(script, name)`` for every entry of every root script's ``COMMANDS`` table."""
    found = []
    for script in top_level_scripts():
        module = importlib.import_module(script[:-3])
        for name in getattr(module, "COMMANDS", {}):
            found.append((script, name))
    return found


def module_entry_points() -> list[str]:
    """Dotted names that run with ``python -m``: ``__main__`` guards, package mains."""
    names = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT).with_suffix("")
            if path.name == "__main__.py":
                names.append(".".join(relative.parent.parts))
            elif path.name != "__init__.py" and "__name__ == " in path.read_text():
                names.append(".".join(relative.parts))
    return sorted(names)


def helper_scripts() -> list[str]:
    """``scripts/*.py`` run as ``python scripts/NAME.py`` (those with a ``__main__`` guard)."""
    return sorted(
        str(p.relative_to(ROOT))
        for p in (ROOT / "scripts").glob("*.py")
        if "__name__ == " in p.read_text()
    )


def readme_module_mentions() -> list[str]:
    """Every ``python -m NAME`` of the README (``pytest`` aside)."""
    text = (ROOT / "README.md").read_text()
    names = set(re.findall(r"python -m ([A-Za-z_][\w.]*)", text))
    return sorted(names - {"pytest"})


def all_commands() -> list[tuple[str, ...]]:
    """Every command as an argv prefix (see the module docstring)."""
    commands: list[tuple[str, ...]] = [(s,) for s in top_level_scripts()]
    commands += sub_commands()
    commands += [("-m", name) for name in module_entry_points()]
    commands += [(path,) for path in helper_scripts()]
    return commands


def command_id(command: tuple[str, ...]) -> str:
    return " ".join(command).replace("-m ", "m:")


def run_command(command: tuple[str, ...], args: list[str]) -> int:
    """Run ``python COMMAND ARGS`` in this process; returns the exit code.

    Scripts run with ``runpy`` as ``__main__``, exactly what ``python FILE`` does, so a
    script's ``__main__`` block (and a module's ``python -m`` block) is what is tested.
    """
    if command[0] == "-m":
        argv = [command[1], *args]
    else:
        argv = [str(ROOT / command[0]), *command[1:], *args]
    saved = sys.argv
    sys.argv = argv
    try:
        with warnings.catch_warnings():
            # runpy warns when a module it runs as __main__ was imported before.
            warnings.simplefilter("ignore", RuntimeWarning)
            if command[0] == "-m":
                runpy.run_module(command[1], run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    finally:
        sys.argv = saved
    return 0
