"""The argument parser every command uses: one-line usage errors, honest ``--help`` and
``key.sub=value`` overrides.

Three differences from :class:`argparse.ArgumentParser` with ``ArgumentDefaultsHelpFormatter``:

* a usage error (unknown option, missing or malformed value) is one line on stderr,
  ``PROG: error: MESSAGE (see PROG --help)``, and exit code 2, like every other bad input
  of the repository (argparse would print the whole usage block first);
* ``--help`` shows ``(default: X)`` only when the help text does not already say what the
  default is and the default says something (not ``None``, ``False`` or empty), so no option
  reads ``(default: the config file's stem) (default: None)``;
* :meth:`ArgumentParser.add_overrides` gives a command positional ``key.sub=value``
  overrides, the grammar of the ``train_*.py`` scripts: words of that form are overrides
  wherever they stand, even after a list option such as ``--images a.png b.png``
  (an existing file of that name stays a file). With ``keys="config"`` they are kept
  in ``args.overrides`` for the command's configuration (``utils.config.parse_overrides``
  turns them into a tree); with ``keys="options"`` the keys are the command's own
  options, so ``nms_radius=2`` means ``--nms-radius 2``, and a misspelled key is one
  line naming the closest one.

Example:
    >>> parser = ArgumentParser(prog="tool", description="Does one thing.")
    >>> _ = parser.add_argument("--size", type=int, default=3, help="tile size")
    >>> "(default: 3)" in parser.format_help()
    True
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*=")
"""The start of a ``key.sub=value`` override."""


def is_override(word: str) -> bool:
    """Whether a command-line word is a ``key.sub=value`` override (not an existing
    file whose name has that form)."""
    return bool(OVERRIDE.match(word)) and not Path(word).exists()


def _root(override: str) -> str:
    """``a`` of ``a.b.c=value``."""
    return override.split("=", 1)[0].split(".")[0]


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
        self._override_keys: str | None = None
        self._sections: tuple[str, ...] = ()
        self._keeps_assignments: set[str] = set()

    def add_overrides(
        self, help: str, keys: str = "config", sections: Sequence[str] = ()
    ) -> None:
        """Positional ``key.sub=value`` overrides (see the module docstring).

        Args:
            help: what the keys are, for ``--help``.
            keys: ``"config"``: the words go to ``args.overrides`` for the command;
                ``"options"``: each key names an option (``top_k=5`` is ``--top-k 5``).
            sections: with ``"options"``, keys that are not options but mappings the
                command reads itself (``extractor_conf.nms_radius=2``): those words go
                to ``args.overrides``.
        """
        if keys not in ("config", "options"):
            raise ValueError(f"keys={keys!r}: expected 'config' or 'options'")
        self._override_keys = keys
        self._sections = tuple(sections)
        if keys == "options":
            help += " (every option, e.g. --some-option V as some_option=V)"
        self.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=help)

    def keep_assignments(self, option: str) -> None:
        """Let the list option ``option`` take ``name=value`` words as its own values
        (``--compare NAME=FILE``), instead of as overrides."""
        self._keeps_assignments.add(option)

    def parse_args(self, args: Sequence[str] | None = None, namespace=None):
        words, overrides = self._take_overrides(args)
        parsed = super().parse_args(words, namespace)
        if self._override_keys is not None:
            parsed.overrides = overrides
        return parsed

    def parse_intermixed_args(self, args: Sequence[str] | None = None, namespace=None):
        words, overrides = self._take_overrides(args)
        parsed = super().parse_intermixed_args(words, namespace)
        if self._override_keys is not None:
            parsed.overrides = overrides
        return parsed

    def _take_overrides(
        self, args: Sequence[str] | None
    ) -> tuple[list[str] | None, list[str]]:
        """Split ``args`` into the words argparse parses and the overrides."""
        if self._override_keys is None:
            return (None if args is None else list(args)), []
        words = list(sys.argv[1:] if args is None else args)
        rest: list[str] = []
        overrides: list[str] = []
        owed = 0  # values still owed to an option of fixed arity
        keep = False  # inside the values of a keep_assignments option
        for index, word in enumerate(words):
            if word == "--":
                rest += words[index:]
                break
            if owed:
                rest.append(word)
                owed -= 1
                continue
            if word.startswith("-") and word in self._option_string_actions:
                action = self._option_string_actions[word]
                rest.append(word)
                owed = 1 if action.nargs is None else 0
                owed = action.nargs if isinstance(action.nargs, int) else owed
                keep = word in self._keeps_assignments
                continue
            if word.startswith("-") and not self._negative_number_matcher.match(word):
                rest.append(word)  # --opt=value, or unknown: argparse reports it
                keep = False
                continue
            if is_override(word) and not keep:
                overrides.append(word)
            else:
                rest.append(word)
        if self._override_keys == "options":
            ours = [o for o in overrides if _root(o) in self._sections]
            rest += self._option_words([o for o in overrides if o not in ours])
            overrides = ours
        return rest, overrides

    def _option_words(self, overrides: list[str]) -> list[str]:
        """``key=value`` overrides of option-keyed commands as option words."""
        from utils.config import suggest_key

        actions = {
            action.dest: action
            for action in self._actions
            if action.option_strings and action.dest not in ("help", "version")
        }
        words: list[str] = []
        for item in overrides:
            key, raw = item.split("=", 1)
            if key not in actions:
                close = suggest_key(key, sorted([*actions, *self._sections]))
                hint = f"; did you mean '{close}'?" if close else ""
                self.error(f"unknown config key '{key}'{hint}")
            action = actions[key]
            longs = [o for o in action.option_strings if o.startswith("--")]
            flag = (longs or action.option_strings)[0]
            if action.nargs == 0:
                value = self._yaml(key, raw) if raw else None
                if not isinstance(value, bool):
                    self.error(f"config key '{key}' expects true or false, got {raw!r}")
                if isinstance(action, argparse.BooleanOptionalAction):
                    words.append(flag if value else "--no-" + flag[2:])
                elif value == (action.const is not False):
                    words.append(flag)
            elif isinstance(action, argparse._AppendAction) and raw.startswith("["):
                value = self._yaml(key, raw)
                if not isinstance(value, list):
                    self.error(f"config key '{key}' expects a list, got {raw!r}")
                words += [f"{flag}={v}" for v in value]
            elif action.nargs in (None, "?"):
                words.append(f"{flag}={raw}")
            else:
                value = self._yaml(key, raw) if raw.startswith("[") else [raw]
                if not isinstance(value, list):
                    self.error(f"config key '{key}' expects a list, got {raw!r}")
                words += [flag, *(str(v) for v in value)]
        return words

    def _yaml(self, key: str, raw: str) -> Any:
        """``raw`` read as YAML (``utils.config.load_yaml``), or a one-line error."""
        import yaml

        from utils.config import load_yaml

        try:
            return load_yaml(raw)
        except yaml.YAMLError:
            self.error(f"config key '{key}': cannot read {raw!r}")

    def error(self, message: str) -> NoReturn:
        """Print ``PROG: error: MESSAGE`` as one line and exit with code 2."""
        flat = " ".join(message.split())
        print(f"{self.prog}: error: {flat} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)
