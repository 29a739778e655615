"""The code layout stays as ``layers.txt`` declares it: no import cycle, no source file over
600 lines, and no import from a higher layer.

The rules live in ``tools/layout_check.py`` (standard library only, so a clean clone checks
them with nothing else installed); these tests run it on the repository, through its command
line too, and on planted trees where it must find each kind of problem.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ROOT / "layers.txt"
TOOL = ROOT / "tools" / "layout_check.py"

_spec = importlib.util.spec_from_file_location("layout_check", TOOL)
layout_check = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(layout_check)


def test_every_top_level_package_has_a_layer():
    patterns = [p for layer in layout_check.read_layers(LAYERS) for p in layer]
    modules = layout_check.collect_modules(ROOT)
    tops = {path.relative_to(ROOT).parts[0] for path in modules.values()}
    unplaced = [t for t in tops if not any(fnmatch.fnmatch(t, p) for p in patterns)]
    assert not unplaced, f"add these to layers.txt: {sorted(unplaced)}"


def test_layout_rules_hold():
    assert layout_check.layout_problems(ROOT, LAYERS) == []


def test_command_line_passes_on_the_repository():
    result = subprocess.run(
        [sys.executable, str(TOOL), str(ROOT), "--layers", str(LAYERS)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def planted_tree(root: Path) -> None:
    """utils imports geometry (upward) and geometry imports utils back (a cycle)."""
    for name in ("geometry", "utils", "tests"):
        (root / name).mkdir()
        (root / name / "__init__.py").write_text("")
    (root / "utils" / "a.py").write_text("def f():\n    import geometry.b\n")
    (root / "geometry" / "b.py").write_text("from utils import a\n")
    (root / "geometry" / "long.py").write_text("x = 1\n" * 601)
    (root / "geometry" / "c.py").write_text("from . import b\nfrom .b import *\n")
    # Tests may import anything: they are not part of the layout.
    (root / "tests" / "t.py").write_text("import utils.a\nimport geometry.b\n")
    (root / "layers.txt").write_text("# top first\ngeometry\nutils\n")


def test_the_check_finds_an_upward_import_a_cycle_and_a_long_file(tmp_path):
    planted_tree(tmp_path)
    problems = layout_check.layout_problems(tmp_path, tmp_path / "layers.txt")
    assert problems == [
        "import cycle (2 files): geometry/b.py -> utils/a.py",
        "long file: geometry/long.py has 601 lines (> 600)",
        "upward import: utils/a.py (layer 2) imports geometry.b (layer 1)",
    ]
    result = subprocess.run(
        [sys.executable, str(TOOL), str(tmp_path), "--layers", "layers.txt"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert result.returncode == 1 and result.stdout.splitlines() == problems


def test_a_package_importing_its_own_submodules_is_no_cycle(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from pkg.sub import f\n")
    (tmp_path / "pkg" / "sub.py").write_text("import pkg\n\ndef f():\n    pass\n")
    assert layout_check.layout_problems(tmp_path) == []
