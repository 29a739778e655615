"""Benchmark: peak memory of the dense descriptor loss (forward + backward).

Batch 32 of 240x320 image pairs (30x40 cells), D = 256, random homographies. The loss is
computed from per-image (1200 x 1200) similarity matrices with checkpointed batch chunks
(``losses.descriptor.dense_descriptor_loss``); the naive formulation would materialise a
B x Hc x Wc x Hc x Wc x D float tensor, whose size is printed beside it. Exits 1 when a
setting's peak reaches 2 GB.

On CPU, peak memory is the growth of the process's peak resident set (``VmHWM``, reset
through ``/proc/self/clear_refs`` after the inputs are built); on CUDA it is
``torch.cuda.max_memory_allocated``. Each setting runs in a fresh process.

    python benchmarks/bench_descriptor_loss_memory.py [--batch 32] [--dim 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.devices import add_device_argument  # noqa: E402
from utils.arguments import ArgumentParser  # noqa: E402

GB = 1024**3


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def measure(batch: int, dim: int, shape: tuple[int, int], chunk: int, device: str):
    """Run one forward/backward in this process; returns a dict of measurements."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from engine.devices import resolve_device
    from geometry.homography import sample_homography
    from losses.descriptor import dense_descriptor_loss

    torch.manual_seed(0)
    hc, wc = shape[0] // 8, shape[1] // 8
    dev = resolve_device(device)
    rng = np.random.default_rng(0)
    H = torch.from_numpy(
        np.stack([sample_homography(shape, rng) for _ in range(batch)])
    ).to(dev)
    raw0 = torch.randn(batch, dim, hc, wc, device=dev, requires_grad=True)
    raw1 = torch.randn(batch, dim, hc, wc, device=dev, requires_grad=True)
    valid = torch.ones(batch, *shape, device=dev)
    # Warm-up on one pair so that loading kernels and libraries is not counted.
    dense_descriptor_loss(
        F.normalize(raw0[:1], dim=1), F.normalize(raw1[:1], dim=1), H[:1], valid[:1]
    ).backward()
    raw0.grad = raw1.grad = None
    base = _status_kb("VmRSS")
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start_alloc = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    t0 = time.perf_counter()
    d0, d1 = F.normalize(raw0, dim=1), F.normalize(raw1, dim=1)
    loss = dense_descriptor_loss(d0, d1, H, valid, chunk_size=chunk)
    loss.backward()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - start_alloc
    else:
        peak = (_status_kb("VmHWM") - base) * 1024
    seconds = time.perf_counter() - t0
    naive = batch * hc * wc * hc * wc * dim * 4
    finite = bool(torch.isfinite(raw0.grad).all() and torch.isfinite(raw1.grad).all())
    return {
        "batch": batch,
        "dim": dim,
        "chunk": chunk,
        "device": str(dev),
        "peak_bytes": peak,
        "naive_bytes": naive,
        "seconds": seconds,
        "loss": float(loss),
        "finite_grad": finite,
    }


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--dim", type=int, default=256, help="descriptor size")
    parser.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=[240, 320],
        metavar=("H", "W"),
        help="image height and width",
    )
    parser.add_argument(
        "--chunks", type=int, nargs="+", default=[4, 32], help="chunk sizes to test"
    )
    add_device_argument(parser)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        import torch

        torch.set_num_threads(args.threads)
        out = measure(args.batch, args.dim, tuple(args.size), args.child, args.device)
        print(json.dumps(out))
        return 0
    ok = True
    for chunk in args.chunks:
        cmd = [sys.executable, __file__, "--child", str(chunk)]
        cmd += ["--batch", str(args.batch), "--dim", str(args.dim)]
        cmd += ["--size", *map(str, args.size), "--device", args.device]
        cmd += ["--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return 1
        r = json.loads(done.stdout.strip().splitlines()[-1])
        passed = r["peak_bytes"] < 2 * GB
        ok &= passed
        print(
            f"dense loss B={r['batch']} {args.size[0]}x{args.size[1]} D={r['dim']} "
            f"chunk={r['chunk']} on {r['device']}: peak {r['peak_bytes'] / GB:.3f} GB "
            f"({'<' if passed else '>='} 2 GB), naive tensor would be "
            f"{r['naive_bytes'] / GB:.1f} GB; fwd+bwd {r['seconds']:.2f} s, "
            f"loss {r['loss']:.4f}, grads finite: {r['finite_grad']}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
