"""The documentation's commands and links work as written.

Every Markdown page a user reads (``README.md``, every page under ``docs/`` and the READMEs of
``pretrained/`` and ``logs/``) is read, and:

* every command in a code block or an inline code span that runs ``python X.py ...``,
  ``python -m MODULE ...`` or ``bash scripts/...`` must name an existing script or module of
  the repository, an existing sub-command (the ``COMMANDS`` table of ``evaluation.py``,
  ``export.py``, ``data_gen.py``) and only options that its ``--help`` lists;
  ``key=value`` overrides, placeholders and ``[optional]`` brackets are allowed;
* every relative link or image (``[text](path)``, ``<img src=...>``) must point at an
  existing file, and a ``#section`` anchor at a heading of the page it names.

The checker is tested on planted broken commands and links, so it can fail.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import shlex
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from tests.commands import ROOT, run_command
from tests.test_cli_help import help_entries

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HTML_LINK = re.compile(r"""<(?:a|img)\b[^>]*?\b(?:href|src)\s*=\s*["']([^"']+)["']""")
REFERENCE_LINK = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
OPTION = re.compile(r"^--?[A-Za-z][\w-]*")


def doc_pages() -> list[Path]:
    """The Markdown pages a user reads."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    pages += [
        p for p in (ROOT / "pretrained" / "README.md", ROOT / "logs" / "README.md")
    ]
    return [p for p in pages if p.is_file()]


def command_lines(text: str) -> list[tuple[int, str]]:
    """``(line number, command)`` of every command in code blocks and inline code spans.

    Continuation lines (ending in ``\\``) are joined, shell comments dropped, and lines
    split at ``&&`` and ``;``.
    """
    found: list[tuple[int, str]] = []
    in_block, pending, start = False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_block, pending = not in_block, ""
            continue
        if in_block:
            if not pending:
                start = number
            pending += line.rstrip()
            if pending.endswith("\\"):
                pending = pending[:-1] + " "
                continue
            found += [(start, part) for part in _split(_strip_comment(pending))]
            pending = ""
        else:
            for span in INLINE_CODE.findall(line):
                found += [(number, part) for part in _split(span)]
    return found


def _strip_comment(line: str) -> str:
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def _split(line: str) -> list[str]:
    return [part.strip() for part in re.split(r"&&|;", line) if part.strip()]


def _is_repository_module(name: str) -> bool:
    top = name.split(".")[0]
    return (ROOT / top).is_dir() or (ROOT / f"{top}.py").is_file()


@cache
def _sub_commands(script: str) -> dict[str, object] | None:
    module = importlib.import_module(script[:-3]) if "/" not in script else None
    return getattr(module, "COMMANDS", None)


@cache
def options_of(command: tuple[str, ...]) -> frozenset[str]:
    """Every option the ``--help`` of ``command`` lists (``--out``, ``-n``, ...)."""
    if command[0] == "bash":
        result = subprocess.run(
            ["bash", command[1], "--help"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        text, code = result.stdout, result.returncode
    else:
        buffer = io.StringIO()
        with (
            contextlib.redirect_stdout(buffer),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            code = run_command(command, ["--help"])
        text = buffer.getvalue()
    if code != 0:
        return frozenset()
    names = set()
    for invocation, _ in help_entries(text):
        for alias in invocation.split(", "):
            match = OPTION.match(alias.strip())
            if match:
                names.add(match.group())
    return frozenset(names)


def command_problem(line: str) -> str | None:
    """What is wrong with one documented command, or None (also for other programs)."""
    try:
        tokens = shlex.split(line)
    except ValueError:
        tokens = line.split()
    while tokens and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", tokens[0]):
        tokens = tokens[1:]  # environment assignments
    if len(tokens) < 2:
        return None
    if tokens[0] in ("python", "python3") and tokens[1] == "-m":
        if len(tokens) < 3 or not _is_repository_module(tokens[2]):
            return None
        name = tokens[2]
        path = ROOT / Path(*name.split("."))
        if not (path.with_suffix(".py").is_file() or (path / "__main__.py").is_file()):
            return f"no module {name} runs with python -m"
        command, args = ("-m", name), tokens[3:]
    elif tokens[0] in ("python", "python3") and tokens[1].endswith(".py"):
        script = tokens[1]
        if not (ROOT / script).is_file():
            return f"no script {script}"
        command, args = (script,), tokens[2:]
        table = _sub_commands(script)
        if table is not None:
            first = args[0] if args else ""
            if first in table:
                command, args = (script, first), args[1:]
            elif first not in ("-h", "--help"):
                return f"{script}: no sub-command {first!r} (valid: {', '.join(table)})"
    elif tokens[0] == "bash" and tokens[1].startswith("scripts/"):
        if not (ROOT / tokens[1]).is_file():
            return f"no script {tokens[1]}"
        command, args = ("bash", tokens[1]), tokens[2:]
    else:
        return None
    used = []
    for token in args:
        token = token.strip("[]")
        match = OPTION.match(token)
        if match and not re.match(r"^-\d", token):
            used.append(match.group())
    used = [name for name in used if name not in ("-h", "--help")]
    if not used:
        return None
    known = options_of(command)
    unknown = sorted(set(used) - known)
    if unknown:
        shown = " ".join(command).replace("-m ", "-m ")
        return f"{shown}: unknown option(s) {', '.join(unknown)}"
    return None


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of the headings of a Markdown page."""
    anchors = set()
    in_block = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_block = not in_block
        if in_block or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        anchors.add(slug)
    return anchors


def link_problem(page: Path, target: str) -> str | None:
    """What is wrong with one link of ``page``, or None (external links are not fetched)."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):
        return None
    path_part, _, anchor = target.partition("#")
    linked = (page.parent / path_part).resolve() if path_part else page
    if not linked.exists():
        return f"link to {target}: {path_part} does not exist"
    if anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
        return f"link to {target}: no heading #{anchor} in {linked.name}"
    return None


def page_problems(page: Path) -> list[str]:
    """Every broken command and link of one page, as ``page:line: problem``."""
    text = page.read_text(encoding="utf-8")
    name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
    problems = []
    for number, line in command_lines(text):
        problem = command_problem(line)
        if problem:
            problems.append(f"{name}:{number}: {problem}")
    lines = text.splitlines()
    in_block = False
    for number, line in enumerate(lines, 1):
        if FENCE.match(line):
            in_block = not in_block
            continue
        if in_block:
            continue
        outside_code = INLINE_CODE.sub("", line)
        targets = LINK.findall(outside_code) + HTML_LINK.findall(outside_code)
        targets += REFERENCE_LINK.findall(outside_code)
        for target in targets:
            problem = link_problem(page, target)
            if problem:
                problems.append(f"{name}:{number}: {problem}")
    return problems


def test_pages_are_found():
    pages = {p.relative_to(ROOT).as_posix() for p in doc_pages()}
    assert "README.md" in pages and "docs/data.md" in pages


@pytest.mark.parametrize(
    "page", doc_pages(), ids=lambda p: p.relative_to(ROOT).as_posix()
)
def test_commands_and_links_of_every_page_work(page, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert page_problems(page) == []


def config_data_folders() -> set[str]:
    """``data/<name>`` of every path a shipped config reads or writes."""
    found = set()

    def walk(value) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str) and value.startswith("data/"):
            found.add("/".join(value.split("/")[:2]))

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        walk(yaml.safe_load(path.read_text()))
    return found


def test_the_data_guide_names_every_data_folder_of_the_configs():
    folders = config_data_folders()
    assert {"data/coco", "data/kitti", "data/aachen", "data/pointclouds"} <= folders
    guide = (ROOT / "docs" / "data.md").read_text()
    missing = sorted(f for f in folders if not re.search(rf"{f}(?![\w-])", guide))
    assert not missing, f"docs/data.md does not name {missing}"


PLANTED = """\
# Planted page

## A real section

```bash
python evaluation.py hpatches --data data/hpatches --preset d2net --model sift
python -m datasets.hpatches --check data/hpatches \\
    --sequences 0   # a comment --not-an-option
python train_superpoint.py configs/magicpoint_shapes.yaml train.lr=5e-4
python -m pytest -q --some-pytest-flag
python no_such_script.py --out x
python evaluation.py no_such_sub --data x
python evaluation.py hpatches --data x --no-such-option 3
python -m datasets.no_such_module --check x
bash scripts/no_such_script.sh
bash scripts/gpu_check.sh --device cpu --tiny --bogus
```

Run `python -m datasets.image_folder --check data/coco --layout coco --typo`, or
`CONFIG=configs/x.yaml bash scripts/main_job.sh`.

Links: [fine](#a-real-section), [data](../README.md), [missing](docs/missing.md),
[bad anchor](#no-such-section), ![image](no_such.png), [web](https://example.org/x).
"""


def test_the_checker_finds_planted_broken_commands_and_links(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    page = tmp_path / "docs" / "planted.md"
    page.parent.mkdir()
    page.write_text(PLANTED)
    (tmp_path / "README.md").write_text("# readme\n")
    problems = [p.split(": ", 1)[1] for p in page_problems(page)]
    assert problems == [
        "no script no_such_script.py",
        "evaluation.py: no sub-command 'no_such_sub' (valid: synthetic_shapes, "
        "hpatches, pointcloud, inversion)",
        "evaluation.py hpatches: unknown option(s) --no-such-option",
        "no module datasets.no_such_module runs with python -m",
        "no script scripts/no_such_script.sh",
        "bash scripts/gpu_check.sh: unknown option(s) --bogus",
        "-m datasets.image_folder: unknown option(s) --typo",
        "link to docs/missing.md: docs/missing.md does not exist",
        "link to #no-such-section: no heading #no-such-section in planted.md",
        "link to no_such.png: no_such.png does not exist",
    ]
    lines = [p.split(":")[1] for p in page_problems(page)]
    assert lines[:2] == ["11", "12"] and lines[-1] == "23"
