"""Shared pieces of the benchmark scripts: the CPU line printed above every figure, and which
precisions the CPU runs natively (emulated bf16 is many times slower than fp32, so benchmarks
skip it with a note instead of spending minutes on a number nobody would use)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from engine.devices import cpu_has_native_bf16, cpu_line


def print_header(title: str) -> None:
    """Title, then the CPU line (model, speed flags, caps, native bf16, threads)."""
    print(title)
    print(cpu_line(), flush=True)


def native_precisions(candidates: tuple[str, ...] = ("fp32", "bf16")) -> list[str]:
    """``candidates`` without bf16 on a CPU that would emulate it (a note is printed)."""
    keep = [p for p in candidates if p != "bf16" or cpu_has_native_bf16()]
    if "bf16" in candidates and "bf16" not in keep:
        print("note: no native bf16 on this CPU (or capped below it): bf16 skipped")
    return keep


def interleaved_medians(
    runs: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Median seconds of each run, the runs alternating so that background load on a
    shared machine affects them alike."""
    with torch.inference_mode():
        for fn in runs.values():
            for _ in range(warmup):
                fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def items_per_second(
    step: Callable[[], None], items: int, steps: int, warmup: int = 2
) -> float:
    """Items/s of ``step`` (``items`` per call) over ``steps`` timed calls after ``warmup``."""
    for _ in range(warmup):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return items * steps / (time.perf_counter() - start)
