"""``--help`` of every command: it works, every option is explained, no default is said twice.

The commands are discovered (root scripts, the ``COMMANDS`` tables, ``python -m`` modules;
see ``tests/commands.py``), so commands added later are checked too.
"""

from __future__ import annotations

import pytest

from tests.commands import (
    ROOT,
    all_commands,
    command_id,
    module_entry_points,
    readme_module_mentions,
    run_command,
    sub_commands,
)

COMMANDS = all_commands()


def help_entries(text: str) -> list[tuple[str, str]]:
    """``(invocation, help)`` of every argument listed in an argparse help text.

    An entry starts on a line indented by exactly two spaces; its help follows after two
    or more spaces on that line, or on the lines indented deeper below it.
    """
    entries: list[list[str]] = []
    in_section = False
    for line in text.splitlines():
        if line and not line[0].isspace():
            # A section heading ("options:") or prose (usage, description, epilog).
            in_section = line.rstrip().endswith(":")
            continue
        if not in_section or not line.strip():
            continue
        if line.startswith("  ") and not line.startswith("   "):
            invocation, _, rest = line[2:].partition("  ")
            entries.append([invocation.strip(), rest.strip()])
        elif entries:
            entries[-1][1] = (entries[-1][1] + " " + line.strip()).strip()
    return [(a, b) for a, b in entries]


def test_help_entries_parser_finds_missing_help_and_continuations():
    text = (
        "usage: tool [-h]\n\nDoes things.\n\noptions:\n"
        "  -h, --help            show this help message and exit\n"
        "  --size H W            tile size\n"
        "                        (default: [1, 2])\n"
        "  --bare BARE\n"
        "  --a-very-long-option-name VALUE\n"
        "                        explained below\n"
    )
    assert help_entries(text) == [
        ("-h, --help", "show this help message and exit"),
        ("--size H W", "tile size (default: [1, 2])"),
        ("--bare BARE", ""),
        ("--a-very-long-option-name VALUE", "explained below"),
    ]


def test_discovery_sees_every_kind_of_command():
    ids = {command_id(c) for c in COMMANDS}
    assert {"train_superpoint.py", "extract.py", "evaluation.py"} <= ids
    assert ("evaluation.py", "hpatches") in sub_commands()
    assert ("export.py", "onnx") in sub_commands()
    assert ("data_gen.py", "hpatches_demo") in sub_commands()
    # Every `python -m` the README tells users to run is one of the checked modules.
    assert set(readme_module_mentions()) <= set(module_entry_points())


@pytest.mark.parametrize("command", COMMANDS, ids=command_id)
def test_help_explains_every_option_once(command, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    code = run_command(command, ["--help"])
    captured = capsys.readouterr()
    assert code == 0, f"--help exited with {code}: {captured.err.strip()[-300:]}"
    text = captured.out
    assert "usage:" in text, f"--help printed no usage: {text[:200]!r}"
    entries = help_entries(text)
    assert entries, "no option listed"
    missing = [inv for inv, help_text in entries if not help_text]
    assert not missing, f"options without help text: {missing}"
    repeated = [inv for inv, help_text in entries if help_text.count("(default:") > 1]
    assert not repeated, f"default said twice: {repeated}"
