"""Run a command under ``torchrun`` with more processes than visible GPUs (ranks share them).

    torchrun --standalone --nproc_per_node=2 benchmarks/shared_gpu.py train_superpoint.py ...

``torchrun`` numbers the processes of a machine ``LOCAL_RANK`` 0..N-1 and the commands put rank
``i`` on ``cuda:i``; with a single GPU, rank 1 would ask for a GPU that is not there. This
launcher maps ``LOCAL_RANK`` to ``LOCAL_RANK % (visible GPUs)`` before it runs the command,
so two ranks run on one GPU, which is how ``scripts/gpu_check.sh`` checks data-parallel
training on a one-GPU machine. NCCL refuses two ranks on one GPU ("Duplicate GPU detected"),
so ``GPU_CHECK_BACKEND=gloo`` makes the process group use Gloo, which runs on CUDA tensors
too; unset or ``nccl`` leaves the command's own choice. With as many GPUs as ranks, or on the
CPU, the command runs unchanged.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def share_gpus(gpus: int, environ: dict[str, str]) -> None:
    """Map ``LOCAL_RANK`` onto the ``gpus`` visible GPUs (nothing without a GPU)."""
    if gpus > 0 and "LOCAL_RANK" in environ:
        environ["LOCAL_RANK"] = str(int(environ["LOCAL_RANK"]) % gpus)


def force_backend(backend: str | None) -> None:
    """Make ``torch.distributed.init_process_group`` use ``backend`` (None: unchanged)."""
    if not backend or backend == "nccl":
        return
    import torch.distributed as dist

    original = dist.init_process_group

    def init_process_group(*args, **kwargs):
        kwargs["backend"] = backend
        return original(*args[1:], **kwargs) if args else original(**kwargs)

    dist.init_process_group = init_process_group


def main(argv: list[str] | None = None) -> int:
    import argparse

    sys.path.insert(0, str(ROOT))
    from utils.arguments import ArgumentParser
    from utils.errors import UserError, run_cli

    parser = ArgumentParser(
        prog="benchmarks/shared_gpu.py", description=__doc__.split("\n")[0]
    )
    parser.add_argument("script", help="a script of the repository, e.g. export.py")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="the script's arguments")
    args = parser.parse_args(argv)

    def run() -> int:
        import torch

        script = ROOT / args.script
        if script.suffix != ".py" or not script.is_file():
            raise UserError(f"'{args.script}' is not a script of the repository")
        share_gpus(torch.cuda.device_count(), os.environ)
        force_backend(os.environ.get("GPU_CHECK_BACKEND"))
        os.chdir(ROOT)
        sys.argv = [str(script), *args.args]
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
            return code if isinstance(code, int) else (0 if code is None else 1)
        return 0

    return run_cli(run, "shared_gpu.py")


if __name__ == "__main__":
    sys.exit(main())
