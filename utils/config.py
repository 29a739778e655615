"""Configuration: defaults in code, a YAML file on top, ``key.sub=value`` overrides last.

A config is a nested dict of plain containers (dict, list, str, int, float, bool, None) with the
sections ``data``, ``model``, ``loss``, ``train`` and ``eval``. Merging is strict:

* a key absent from the defaults is an error naming the key and the closest valid one;
* a value whose type does not match the default's is an error (ints are accepted for floats,
  a list of strings for a string such as ``"all"``, a ``None`` default accepts anything, and a
  default of ``{}`` is an open mapping whose keys are not checked, for free-form tables).

Merging never mutates its inputs, so module-level ``default_conf`` dicts stay intact.

Numbers in Python's decimal notations are numbers, in files and overrides alike: ``5e-4``,
``1E3``, ``.5`` and ``1_000`` (YAML 1.1, which PyYAML implements, reads the first two as
strings); ``inf``, ``nan`` and octal literals stay strings.

Example:
    >>> defaults = {"train": {"lr": 1e-3, "batch_size": 64}}
    >>> merge_config(defaults, {"train": {"lr": 1e-4}})
    {'train': {'lr': 0.0001, 'batch_size': 64}}
"""

from __future__ import annotations

import copy
import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from utils.errors import UserError

Config = dict[str, Any]


_EXPONENT_FLOAT = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9][0-9_]*)[eE][-+]?[0-9]+$"
)


def _exponent_floats(value: Any) -> Any:
    """``value`` with every string that is an exponent float without a dot or sign
    (``5e-4``, ``1E3``, ``-.5e3``, which YAML 1.1 leaves as strings) made a float."""
    if isinstance(value, str):
        return float(value.replace("_", "")) if _EXPONENT_FLOAT.match(value) else value
    if isinstance(value, list):
        return [_exponent_floats(v) for v in value]
    if isinstance(value, dict):
        return {_exponent_floats(k): _exponent_floats(v) for k, v in value.items()}
    return value


def load_yaml(text: Any) -> Any:
    """``yaml.safe_load`` of a string or a file, exponent floats read as Python reads
    them (a quoted ``"5e-4"`` is a number too)."""
    return _exponent_floats(yaml.safe_load(text))


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _check_type(default: Any, value: Any, path: str) -> Any:
    """Return ``value`` if it may replace ``default``, else raise :class:`UserError`."""
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, str):
        # "all"-or-names keys: a string default may be replaced by a list of strings.
        ok = isinstance(value, str) or (
            isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        )
    elif isinstance(default, (list, tuple)):
        ok = isinstance(value, (list, tuple))
        value = list(value) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise UserError(
            f"config key '{path}' expects {_type_name(default)} "
            f"(default {default!r}), got {_type_name(value)} {value!r}"
        )
    return value


# Names other code bases and papers use for our keys: a user typing one of them is told ours.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "learning_rate": ("lr",),
    "base_lr": ("lr",),
    "iters": ("max_steps", "steps"),
    "iterations": ("max_steps", "steps"),
    "max_iters": ("max_steps",),
    "max_iterations": ("max_steps",),
    "num_steps": ("max_steps", "steps"),
    "num_iters": ("max_steps", "steps"),
    "total_steps": ("max_steps",),
    "training_steps": ("max_steps",),
    "steps": ("max_steps",),
    "num_epochs": ("epochs",),
    "n_epochs": ("epochs",),
    "max_epochs": ("epochs",),
    "epoch": ("epochs",),
    "bs": ("batch_size",),
    "batch": ("batch_size",),
    "workers": ("num_workers",),
    "n_workers": ("num_workers",),
    "wd": ("weight_decay",),
    "optim": ("optimizer",),
    "scheduler": ("lr_schedule",),
    "lr_scheduler": ("lr_schedule",),
    "schedule": ("lr_schedule",),
    "clip_grad": ("grad_clip",),
    "grad_clip_norm": ("grad_clip",),
    "max_grad_norm": ("grad_clip",),
    "amp": ("precision",),
    "mixed_precision": ("precision",),
    "dtype": ("precision",),
    "gpu": ("device",),
    "checkpoint_every": ("save_every",),
    "ckpt_every": ("save_every",),
    "eval_every": ("val_every",),
    "validate_every": ("val_every",),
    "resolution": ("image_size",),
    "img_size": ("image_size",),
    "size": ("image_size",),
    "resize": ("image_size",),
}


def suggest_key(key: str, valid: Sequence[str]) -> str | None:
    """The valid key a user most likely meant by ``key``, or None.

    A known synonym wins (``learning_rate`` -> ``lr``, ``iterations`` -> ``max_steps``);
    otherwise the closest spelling (``batch_sise`` -> ``batch_size``).

    Example:
        >>> suggest_key("learning_rate", ["lr", "batch_size"])
        'lr'
    """
    for candidate in SYNONYMS.get(key.lower(), ()):
        if candidate in valid:
            return candidate
    close = difflib.get_close_matches(key, list(valid), n=1)
    return close[0] if close else None


def merge_config(
    defaults: Mapping, overrides: Mapping | None, prefix: str = ""
) -> Config:
    """Strictly merge ``overrides`` into a deep copy of ``defaults`` (see module docstring)."""
    result = copy.deepcopy(dict(defaults))
    if overrides is None:
        return result
    if not isinstance(overrides, Mapping):
        raise UserError(
            f"config section '{prefix.rstrip('.') or '<root>'}' must be a mapping, "
            f"got {_type_name(overrides)}"
        )
    open_mapping = len(defaults) == 0
    for key, value in overrides.items():
        path = f"{prefix}{key}"
        if key not in defaults:
            if open_mapping:
                result[key] = copy.deepcopy(value)
                continue
            close = suggest_key(str(key), [str(k) for k in defaults])
            hint = f"; did you mean '{prefix}{close}'?" if close else ""
            raise UserError(f"unknown config key '{path}'{hint}")
        default = defaults[key]
        if isinstance(default, Mapping) and default and value is not None:
            result[key] = merge_config(default, value, prefix=f"{path}.")
        elif isinstance(default, Mapping) and value is not None:
            if not isinstance(value, Mapping):
                raise UserError(f"config key '{path}' expects a mapping, got {value!r}")
            result[key] = copy.deepcopy(dict(value))
        else:
            result[key] = _check_type(default, copy.deepcopy(value), path)
    return result


def resolve_names(
    spec: str | Sequence[str], valid: Sequence[str], what: str
) -> list[str]:
    """Resolve an "``'all'``, one name or a list of names" config value.

    Args:
        spec: ``"all"`` (every valid name, in order), one name, or a list of names.
        valid: the names that exist.
        what: what the names are, for the message (``"photometric augmentation"``).

    Raises:
        UserError: an unknown name, listing the valid ones.
    """
    if isinstance(spec, str):
        names = list(valid) if spec == "all" else [spec]
    else:
        names = list(spec)
    for name in names:
        if name not in valid:
            raise UserError(
                f"unknown {what} {name!r}; valid names: {', '.join(valid)} (or 'all')"
            )
    return names


def parse_overrides(items: Sequence[str]) -> Config:
    """Turn ``["train.lr=1e-4", "data.primitives=[star,cube]"]`` into a nested dict.

    Values are parsed as YAML (:func:`load_yaml`), so numbers in any Python notation,
    booleans, ``null``, lists and ``{key: value}`` mappings work.
    """
    tree: Config = {}
    for item in items:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise UserError(f"override '{item}' has an empty key part")
        try:
            value = load_yaml(raw) if raw != "" else ""
        except yaml.YAMLError as err:
            raise UserError(f"override '{item}': cannot parse value: {err}") from None
        node = tree
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return tree


def deep_update(base: Mapping, update: Mapping) -> Config:
    """Non-strict recursive update (used to stack file + overrides before validation)."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_update(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_yaml(path: str | Path) -> Config:
    """Read a YAML mapping, with one-line errors for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file '{path}' not found")
    try:
        with open(path) as f:
            data = load_yaml(f)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise UserError(f"config file '{path}' is not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file '{path}' must hold a mapping, got {_type_name(data)}"
        )
    return data


def load_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    defaults: Config | Callable[[Config], Config] = None,
) -> Config:
    """Resolve a run's configuration.

    Args:
        path: YAML file, or ``None`` for defaults only.
        overrides: ``key.sub=value`` strings applied on top of the file.
        defaults: a config dict, or a function of the (unvalidated) user config returning the
            defaults, for tasks whose defaults depend on a choice such as ``data.name``.

    Returns:
        The validated, fully resolved config (plain containers).
    """
    user = read_yaml(path) if path is not None else {}
    user = deep_update(user, parse_overrides(overrides))
    base = defaults(user) if callable(defaults) else (defaults or {})
    return merge_config(base, user)


def save_config(conf: Config, path: str | Path) -> None:
    """Write a config as YAML atomically (temp file, then rename)."""
    from utils.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_plain(conf), sort_keys=False))


def to_plain(obj: Any) -> Any:
    """Convert tuples and other sequences/mappings to plain lists/dicts for saving."""
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` to ``(i, n)`` with ``0 <= i < n``; ``None`` is ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise UserError(f"--shard '{text}': expected i/n, e.g. 0/4") from None
    if not 0 <= i < n:
        raise UserError(f"--shard '{text}': need 0 <= i < n")
    return i, n
