"""User-facing errors: one clear line for bad input, and a helper that turns them into exit codes.

Library code raises :class:`UserError` with a message that names the file, key or value and what
was expected; every command's ``main`` wraps its work in :func:`run_cli`, which prints that single
line to stderr and returns a non-zero exit code instead of a traceback.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """Bad input from the user (file, config key, value): shown as one line, exit code 2."""


def run_cli(fn: Callable[[], int | None], prog: str) -> int:
    """Run ``fn`` and map :class:`UserError` (and Ctrl-C) to a one-line message and exit code."""
    try:
        return int(fn() or 0)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
