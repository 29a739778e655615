"""Sub-command dispatch for the top-level scripts (``evaluation.py``, ``data_gen.py``, ...).

Each sub-command lives in its own module exposing ``main(argv) -> int``; the module is imported
only when its sub-command runs, so one task's heavy imports never slow another down.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence


def dispatch(
    prog: str,
    description: str,
    commands: dict[str, tuple[str, str]],
    argv: Sequence[str] | None,
) -> int:
    """Run ``commands[argv[0]]`` (``"module:function"``, help text) with the remaining args."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        width = max(len(name) for name in commands)
        lines = [
            f"usage: {prog} COMMAND [options]   ({prog} COMMAND --help for details)",
            "",
            description,
            "",
            "commands:",
        ]
        lines += [f"  {name:<{width}}  {text}" for name, (_, text) in commands.items()]
        print("\n".join(lines))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in commands:
        print(
            f"{prog}: error: unknown command '{name}'; valid: {', '.join(commands)}",
            file=sys.stderr,
        )
        return 2
    module, function = commands[name][0].split(":")
    return int(getattr(importlib.import_module(module), function)(rest) or 0)
