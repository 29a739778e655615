"""D2-Net-format result caches (``.npy`` holding ``(i_err, v_err, [seq_type, n_feats,
n_matches])``): read them safely, so published methods appear in the same plot, and write ours.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from utils.errors import UserError
from utils.io import atomic_write


class _CacheUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays/scalars and plain containers.

    D2-Net caches are pickled object arrays; a plain ``np.load(allow_pickle=True)`` would
    run whatever a crafted file asks for, so only the classes such a cache needs resolve.
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("builtins", "dict"),
        ("builtins", "list"),
        ("builtins", "tuple"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"forbidden object {module}.{name}")
        if module.startswith("numpy") and name in ("_reconstruct", "scalar"):
            from numpy._core import multiarray

            return getattr(multiarray, name)
        if module == "numpy":
            return getattr(np, name)
        if module == "collections":
            import collections

            return collections.OrderedDict
        return getattr(__import__("builtins"), name)


def read_d2net_cache(path: str | Path, name: str | None = None) -> dict:
    """Read a D2-Net-format cache: ``(i_err, v_err, [seq_type, n_feats, n_matches])``.

    ``i_err[t]`` sums the per-pair MMA@t over illumination pairs (``v_err`` likewise), so
    MMA@t = (i_err[t] + v_err[t]) / #pairs; the pair counts come from ``seq_type`` (one
    entry per pair), or the D2-Net protocol's 52 i and 56 v sequences when absent.

    Returns:
        ``name``, ``thresholds`` (T,), ``mma`` / ``mma_i`` / ``mma_v`` (T,),
        ``num_features``, ``num_matches``, ``num_pairs_i``, ``num_pairs_v``.

    Raises:
        UserError: unreadable file or not of that structure.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                _, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                _, _, dtype = np.lib.format.read_array_header_2_0(f)
            if dtype.hasobject:
                obj = _CacheUnpickler(io.BytesIO(f.read())).load()
            else:
                raise ValueError("holds a plain array, not (i_err, v_err, stats)")
        i_err, v_err, stats = obj[0], obj[1], obj[2]
        thresholds = sorted(float(t) for t in i_err)
        mma_i_sum = np.array([float(i_err[_key(i_err, t)]) for t in thresholds])
        mma_v_sum = np.array([float(v_err[_key(v_err, t)]) for t in thresholds])
        seq_type, n_feats, n_matches = (np.asarray(s) for s in stats)
    except (OSError, ValueError, KeyError, IndexError, TypeError, EOFError) as err:
        raise UserError(f"{path}: not a D2-Net cache ({err})") from None
    except pickle.UnpicklingError as err:
        raise UserError(f"{path}: not a D2-Net cache ({err})") from None
    if len(seq_type) == len(n_matches) and len(seq_type):
        n_i, n_v = int((seq_type == "i").sum()), int((seq_type == "v").sum())
    else:
        n_i, n_v = 52 * 5, 56 * 5
    n_all = n_i + n_v
    return {
        "name": name or path.stem,
        "thresholds": np.array(thresholds),
        "mma": (mma_i_sum + mma_v_sum) / n_all,
        "mma_i": mma_i_sum / n_i if n_i else np.full(len(thresholds), np.nan),
        "mma_v": mma_v_sum / n_v if n_v else np.full(len(thresholds), np.nan),
        "num_features": float(np.mean(n_feats)) if n_feats.size else float("nan"),
        "num_matches": float(np.sum(n_matches) / n_all) if n_all else float("nan"),
        "num_pairs_i": n_i,
        "num_pairs_v": n_v,
    }


def _key(d: dict, t: float) -> Any:
    for k in d:
        if float(k) == t:
            return k
    raise KeyError(t)


def write_d2net_cache(
    path: Path, records: list[dict], n_feats: list[int], thresholds: tuple[float, ...]
) -> None:
    """Write this run's D2-Net-format cache (readable by the D2-Net notebook)."""
    i_err = {int(t): 0.0 for t in thresholds if float(t).is_integer()}
    v_err = dict(i_err)
    for r in records:
        target = i_err if r["kind"] == "i" else v_err
        for t in target:
            target[t] += r[f"mma@{t:g}"]
    stats = [
        np.array([r["kind"] for r in records]),
        np.array(n_feats, dtype=np.int64),
        np.array([r["num_matches"] for r in records], dtype=np.int64),
    ]
    cache = np.empty(3, dtype=object)
    cache[0], cache[1], cache[2] = i_err, v_err, stats
    atomic_write(path, lambda f: np.save(f, cache, allow_pickle=True))
