"""Running and checking the steps of ``scripts/gpu_check.sh`` (see ``gpu_check_plan``).

A step's command runs in a subprocess of its own (its own timeout; the whole process group is
killed when it runs over, ``torchrun`` children included), or in this process with
``in_process`` (the ``--tiny`` CPU check: no interpreter start per step). Its output goes to
``OUT/logs/<step>.log``. Then its outputs are checked: the exit code, the checkpoint of the
expected step, finite training and validation losses (TensorBoard events), the step a resumed
run continued from, and the files it had to write.
"""

from __future__ import annotations

import contextlib
import math
import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.gpu_check_plan import Step

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm")
# Ranks sharing one GPU try NCCL first (a refusal comes at once), then Gloo on the GPU.
PROBE = ("nccl", "gloo")
NCCL_PROBE_SECONDS = 120.0


@dataclass
class Result:
    """What a step did: ``status`` is ``ok``, ``failed`` or ``skipped``."""

    name: str
    status: str = "ok"
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)

    def fail(self, problem: str) -> None:
        self.status = "failed"
        self.problems.append(problem)


def command_line(step: Step, python: str = sys.executable) -> list[str]:
    """The full command of ``step``: ``python SCRIPT ...``, ``python -m MODULE ...`` or
    ``torchrun`` (``--standalone``: a free port) through ``benchmarks/shared_gpu.py``."""
    if step.torchrun:
        launcher = [python, "-m", "torch.distributed.run", "--standalone"]
        launcher += [f"--nproc_per_node={step.torchrun}", "benchmarks/shared_gpu.py"]
        return [*launcher, *step.argv]
    return [python, *step.argv]


def run_subprocess(
    argv: list[str], env: dict[str, str], timeout: float, log: Path
) -> tuple[int | None, str]:
    """Exit code (None: timed out, the process group killed) and the log text."""
    with open(log, "w") as sink:
        process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            code: int | None = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code = None
    return code, log.read_text(errors="replace")


class _StepTimeout(Exception):
    pass


def run_in_process(
    argv: list[str], env: dict[str, str], timeout: float, log: Path
) -> tuple[int | None, str]:
    """As :func:`run_subprocess`, in this process (``argv`` without the interpreter)."""
    saved_argv, saved_env = sys.argv, dict(os.environ)

    def alarm(signum, frame):
        raise _StepTimeout

    code: int | None = 0
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    with open(log, "w") as sink, contextlib.redirect_stdout(sink):
        with contextlib.redirect_stderr(sink):
            try:
                os.environ.update(env)
                if argv[0] == "-m":
                    sys.argv = [argv[1], *argv[2:]]
                    runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
                else:
                    sys.argv = [str(ROOT / argv[0]), *argv[1:]]
                    runpy.run_path(sys.argv[0], run_name="__main__")
            except SystemExit as exit_:
                value = exit_.code
                code = value if isinstance(value, int) else (0 if value is None else 1)
            except _StepTimeout:
                code = None
            except Exception:  # noqa: BLE001 - any crash is this step's failure
                traceback.print_exc()
                code = 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
                sys.argv = saved_argv
                os.environ.clear()
                os.environ.update(saved_env)
    return code, log.read_text(errors="replace")


def last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar of the run's TensorBoard events: ``{tag: [(step, value), ...]}``."""
    from tensorboard.backend.event_processing.event_accumulator import (
        EventAccumulator,
    )

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)]
        for tag in events.Tags()["scalars"]
    }


def check_training(step: Step, log: str, result: Result) -> None:
    """Checkpoint of the expected step, finite losses, images/s, the resumed step."""
    from utils.io import load_checkpoint

    run_dir = Path(step.run_dir or "")
    path = run_dir / "checkpoints" / f"last_{step.steps:08d}.pt"
    if not path.is_file():
        result.fail(f"no checkpoint {path}")
        return
    saved = load_checkpoint(path)["step"]
    if saved != step.steps:
        result.fail(f"{path.name} holds step {saved}, expected {step.steps}")
    values = scalars(run_dir)
    for tag in ("train/loss/total", "val/loss/total"):
        if tag not in values:
            result.fail(f"no {tag} in the TensorBoard events")
            continue
        bad = [s for s, v in values[tag] if not math.isfinite(v)]
        if bad:
            result.fail(f"{tag} is not finite at step {bad[0]}")
        result.metrics[tag.replace("/", "_")] = round(values[tag][-1][1], 5)
    if values.get("perf/images_per_s"):
        # The last logging window: the first includes start-up (allocation, autotuning).
        result.metrics["images_per_s"] = round(values["perf/images_per_s"][-1][1], 2)
    if step.resumed_from is not None:
        said = f"resumed from step {step.resumed_from}"
        if said not in log:
            result.fail(f"the log does not say '{said}'")
        else:
            result.metrics["resumed_from"] = step.resumed_from


def count_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def check_outputs(step: Step, photos: Path, result: Result) -> None:
    """Every output exists (a folder: not empty); labels and features: one per photo."""
    for output in map(Path, step.outputs):
        if not output.exists():
            result.fail(f"{output} was not written")
        elif output.is_dir() and not any(output.iterdir()):
            result.fail(f"{output} is empty")
        elif step.kind in ("ha", "extract") and output.is_dir() and photos.is_dir():
            # HA writes <name>.npz, extract.py <name>.<ext>.<tag>, one per image.
            written = [p for p in output.iterdir() if p.is_file()]
            if step.kind == "ha":
                written = [p for p in written if p.suffix == ".npz"]
            if len(written) != count_images(photos):
                result.fail(
                    f"{output} holds {len(written)} outputs for "
                    f"{count_images(photos)} images"
                )


class Runner:
    """Runs the steps of a plan in order and checks them (see the module docstring)."""

    def __init__(
        self,
        out: Path,
        photos: Path,
        in_process: bool = False,
        fail_step: str | None = None,
        setup=None,
    ):
        self.out, self.photos = out, photos
        self.in_process, self.fail_step, self.setup = in_process, fail_step, setup
        self.logs = out / "step_logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # The process-group backend of ranks sharing one GPU: None until a DDP step found
        # which one works (NCCL refuses two ranks on one GPU in most versions).
        self.shared_backend: str | None = None
        self.results: dict[str, Result] = {}

    def run(self, plan: list[Step]) -> dict[str, Result]:
        for step in plan:
            blocked = [
                n for n in step.needs if self.results.get(n, Result(n)).status != "ok"
            ]
            if blocked:
                result = Result(step.name, "skipped", problems=[f"needs {blocked[0]}"])
            else:
                result = self.run_step(step)
            self.results[step.name] = result
            summary = "; ".join(result.problems) or format_metrics(result.metrics)
            print(
                f"[{result.status}] {step.name} ({result.seconds:.1f} s) {summary}",
                flush=True,
            )
        return self.results

    def run_step(self, step: Step) -> Result:
        result = Result(step.name)
        start = time.perf_counter()
        try:
            if step.kind == "setup" and self.setup is not None:
                if step.name == self.fail_step:
                    raise RuntimeError("injected failure (--fail-step)")
                self.setup()
                check_outputs(step, self.photos, result)
            else:
                self.execute(step, result)
        except Exception as err:  # noqa: BLE001 - reported as this step's failure
            result.fail(f"{type(err).__name__}: {err}"[:300])
        result.seconds = round(time.perf_counter() - start, 1)
        return result

    def execute(self, step: Step, result: Result) -> None:
        env = {"PYTHONUNBUFFERED": "1", **step.env}
        log = self.logs / f"{step.name}.log"
        backend = None
        if step.kind == "ddp" and step.env.get("GPU_CHECK_SHARED"):
            # Two ranks on one GPU: NCCL unless it refused that before, then Gloo.
            for backend in [self.shared_backend] if self.shared_backend else PROBE:
                env["GPU_CHECK_BACKEND"] = backend
                limit = step.timeout if backend == "gloo" else NCCL_PROBE_SECONDS
                log = self.logs / f"{step.name}.{backend}.log"
                code, text = self.launch(step, env, log, limit)
                if code == 0:
                    self.shared_backend = backend
                    break
                result.metrics[f"{backend}_failed"] = last_line(text)
        else:
            code, text = self.launch(step, env, log, step.timeout)
        if step.kind == "ddp":
            on_gpu = "cuda" in step.argv
            result.metrics["backend"] = backend or ("nccl" if on_gpu else "gloo")
        if code is None:
            result.fail(f"timed out after {step.timeout:.0f} s (log: {log})")
            return
        if code != 0:
            result.fail(f"exit code {code}: {last_line(text)} (log: {log})")
            return
        if step.run_dir is not None:
            check_training(step, text, result)
        check_outputs(step, self.photos, result)

    def launch(self, step: Step, env: dict[str, str], log: Path, timeout: float):
        if step.name == self.fail_step:
            argv = ["-c", "import sys; print('injected failure'); sys.exit(3)"]
            if self.in_process and not step.torchrun:
                log.write_text("injected failure\n")
                return 3, "injected failure"
            return run_subprocess(
                [sys.executable, *argv], {**os.environ, **env}, timeout, log
            )
        if self.in_process and not step.torchrun:
            return run_in_process(step.argv, env, timeout, log)
        full_env = {**os.environ, **env}
        return run_subprocess(command_line(step), full_env, timeout, log)


def format_metrics(metrics: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in metrics.items())
