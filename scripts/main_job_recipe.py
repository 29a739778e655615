"""Which MagicPoint recipe the main job (``scripts/main_job.sh``) trains here, why, and the
shape cache it trains from.

The machine decides: a CUDA GPU trains the reference recipe on the GPU; on a CPU the recipe
follows what bf16 costs there, each CPU recipe sized to finish within an hour on 2 cores:

* ``configs/magicpoint_shapes.yaml``: CUDA GPU (the reference GPU recipe);
* ``configs/magicpoint_shapes_cpu.yaml``: bf16 on AMX tiles (Intel Xeon 4th gen and later);
* ``configs/magicpoint_shapes_avx512bf16.yaml``: native bf16 without AMX (AVX512-BF16, e.g.
  AMD Zen 4 and 5), where a bf16 step is slower than on AMX;
* ``configs/magicpoint_shapes_avx2.yaml``: no native bf16 (AVX2 only, or the instruction set
  capped below AVX512-BF16): fp32.

The job draws the training and validation shapes once (``data_gen.py synthetic_shapes``)
and trains from that cache, re-augmenting every epoch: drawing each of the 90,000 training
shapes once instead of once per epoch frees the cores for the training step.

Prints one line, tab-separated: the config, why it was chosen, the cache folder, and the
``data_gen.py synthetic_shapes`` options that write it (settings of the config's data
section after the overrides):

    python scripts/main_job_recipe.py [--config CONFIG] [key=value ...]
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.devices import cpu_has_amx_bf16, cpu_has_native_bf16  # noqa: E402
from utils.arguments import ArgumentParser  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.errors import run_cli  # noqa: E402

RECIPES = {
    "cuda": "configs/magicpoint_shapes.yaml",
    "amx": "configs/magicpoint_shapes_cpu.yaml",
    "avx512_bf16": "configs/magicpoint_shapes_avx512bf16.yaml",
    "fp32": "configs/magicpoint_shapes_avx2.yaml",
}
WHY = {
    "cuda": "a CUDA GPU is available: the reference recipe, trained on the GPU",
    "amx": "bf16 runs on AMX tiles here: the AMX bf16 recipe",
    "avx512_bf16": "bf16 is native here (AVX512-BF16) but without AMX, slower per step "
    "than on AMX: the bf16 recipe sized for it",
    "fp32": "no native bf16 here (AVX2, or the instruction set capped below "
    "AVX512-BF16): the fp32 recipe",
}
# Data settings and their defaults (datasets.synthetic_shapes.SyntheticShapes).
CACHE_KEYS = {"seed": 0, "supersample": 1, "blur_size": 11}


def machine_kind(cuda: bool, native_bf16: bool, amx_bf16: bool) -> str:
    """One of :data:`RECIPES`' keys: ``cuda`` first, then the CPU's bf16 support."""
    if cuda:
        return "cuda"
    if amx_bf16:
        return "amx"
    return "avx512_bf16" if native_bf16 else "fp32"


def resolve(config: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The config as ``train_superpoint.py`` resolves it."""
    from train_superpoint import defaults

    return load_config(config, overrides, defaults)


def describe(conf: dict[str, Any]) -> str:
    """The recipe in a few words."""
    model, train = conf["model"], conf["train"]
    channels = "-".join(str(c) for c in model["channels"])
    crop = conf["data"].get("crop")
    window = f" windows of {crop[0]}x{crop[1]}" if crop else ""
    return (
        f"channels {channels}, heads {model['head_channels']}, "
        f"{train['max_steps']} steps x {train['batch_size']}{window}, "
        f"precision {train['precision']}"
    )


def cache_folder(data: dict[str, Any], root: str = "data") -> str:
    """Folder of the shape cache: one per image size and content settings."""
    h, w = data["image_size"]
    name = f"synthetic_shapes_{h}x{w}"
    for key, default in CACHE_KEYS.items():
        if data[key] != default:
            name += f"_{key}{data[key]}"
    sizes = data["split_sizes"]
    if (sizes["train"], sizes["val"]) != (10000, 200):
        name += f"_train{sizes['train']}_val{sizes['val']}"
    return f"{root}/{name}"


def data_gen_args(data: dict[str, Any], workers: int) -> list[str]:
    """``data_gen.py synthetic_shapes`` options writing the training and validation
    shapes of ``data`` (the folder is given separately with ``--out``)."""
    sizes = data["split_sizes"]
    return [
        "--size",
        *(str(v) for v in data["image_size"]),
        "--splits",
        "train",
        "val",
        "--split-sizes",
        f"train={sizes['train']}",
        f"val={sizes['val']}",
        "--primitives",
        *(
            [data["primitives"]]
            if isinstance(data["primitives"], str)
            else data["primitives"]
        ),
        "--seed",
        str(data["seed"]),
        "--supersample",
        str(data["supersample"]),
        "--blur-size",
        str(data["blur_size"]),
        "--workers",
        str(workers),
    ]


def choose() -> tuple[str, str]:
    """``(config, reason)`` for this machine."""
    import torch

    cuda = torch.cuda.is_available()
    kind = machine_kind(cuda, cpu_has_native_bf16(), cpu_has_amx_bf16())
    why = WHY[kind]
    if cuda:
        why += f" ({torch.cuda.get_device_name(0)})"
    return RECIPES[kind], why


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="a config instead of the machine's choice")
    parser.add_argument("--workers", type=int, default=None, help="drawing processes")
    parser.add_overrides("config overrides, as train_superpoint.py takes them")
    args = parser.parse_args(argv)

    def run() -> int:
        import os

        config, why = (args.config, "CONFIG set by the caller")
        if not args.config:
            config, why = choose()
        conf = resolve(config, args.overrides)
        data = conf["data"]
        workers = args.workers or os.cpu_count() or 1
        options = shlex.join(data_gen_args(data, workers))
        print(f"{config}\t{why}; {describe(conf)}\t{cache_folder(data)}\t{options}")
        return 0

    return run_cli(run, "main_job_recipe.py")


if __name__ == "__main__":
    sys.exit(main())
