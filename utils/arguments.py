"""The argument parser every command uses: one-line usage errors and honest ``--help``.

Two differences from :class:`argparse.ArgumentParser` with ``ArgumentDefaultsHelpFormatter``:

* a usage error (unknown option, missing or malformed value) is one line on stderr,
  ``PROG: error: MESSAGE (see PROG --help)``, and exit code 2, like every other bad input
  of the repository (argparse would print the whole usage block first);
* ``--help`` shows ``(default: X)`` only when the help text does not already say what the
  default is and the default says something (not ``None``, ``False`` or empty), so no option
  reads ``(default: the config file's stem) (default: None)``.

Example:
    >>> parser = ArgumentParser(prog="tool", description="Does one thing.")
    >>> _ = parser.add_argument("--size", type=int, default=3, help="tile size")
    >>> "(default: 3)" in parser.format_help()
    True
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to an option's help only when it adds information."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text.lower() or not _informative(action.default):
            return text
        return super()._get_help_string(action)


def _informative(default: Any) -> bool:
    if default is None or default is False or default is argparse.SUPPRESS:
        return False
    return not (isinstance(default, (list, tuple, str)) and len(default) == 0)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` with :class:`HelpFormatter` and one-line errors.

    Args:
        Those of :class:`argparse.ArgumentParser`; ``formatter_class`` defaults to
        :class:`HelpFormatter`.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` as one line and exit with code 2."""
        flat = " ".join(message.split())
        print(f"{self.prog}: error: {flat} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
