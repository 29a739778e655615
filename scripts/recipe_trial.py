"""Train one candidate MagicPoint recipe and score it on the Synthetic Shapes validation set.

For comparing candidate recipes (``configs/magicpoint_shapes_*.yaml`` and overrides) without
touching the test set: a candidate trains exactly as ``scripts/main_job.sh`` would train it
(same config, the same shape cache), then its ``best.pt`` is scored with the test protocol
on the validation split (200 images per primitive, clean and noisy). A candidate's mAP at a
fixed number of steps does not depend on the machine's load, so trials can run on a busy
machine; their time on a quiet one is the step count over the recipe's measured throughput.

    python scripts/recipe_trial.py configs/magicpoint_shapes_avx2.yaml --exp avx2_a \
        --data data/synthetic_shapes_120x160 [key=value ...]

Prints one table row and writes ``<logdir>/<exp>/validation.json``. Re-running resumes the
training, or only scores it when it is complete.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from evaluators.synthetic_shapes import (  # noqa: E402
    build_parser,
    evaluate_all,
    load_entry,
)
from utils.arguments import ArgumentParser  # noqa: E402
from utils.errors import UserError, run_cli  # noqa: E402
from utils.io import atomic_write_text, load_checkpoint  # noqa: E402


def score_on_validation(checkpoint: Path, precision: str = "fp32") -> dict:
    """``{variant: Scorer.results() without the curve}`` of a checkpoint on the val split,
    run as ``evaluation.py synthetic_shapes`` runs it (``--precision``, default fp32)."""
    from engine.devices import inference_precision, resolve_device

    device = resolve_device("auto")
    precision = inference_precision(precision, device, int8="auto")
    entry = load_entry(checkpoint, device, precision)
    args = build_parser().parse_args(
        ["--num-images", str(entry[2]["split_sizes"]["val"]), "--workers", "1"]
    )
    out = {"step": load_checkpoint(checkpoint)["step"]}
    for variant in ("clean", "noisy"):
        res = evaluate_all([entry], variant, args, device, split="val")[entry[0]]
        out[variant] = {k: v for k, v in res.items() if k != "curve"}
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the recipe's YAML file")
    parser.add_argument("--exp", required=True, help="run name")
    parser.add_argument("--logdir", default="logs/trials", help="root of trial runs")
    parser.add_argument("--data", required=True, help="shape cache (data_gen.py)")
    parser.add_overrides("config overrides, as train_superpoint.py takes them")
    args = parser.parse_args(argv)

    def run() -> int:
        import train_superpoint

        exp_dir = Path(args.logdir) / args.exp
        train_args = [args.config, "--exp", args.exp, "--logdir", args.logdir]
        train_args += [f"data.cache_dir={args.data}", *args.overrides]
        if any((exp_dir / "checkpoints").glob("last_*.pt")):
            train_args.append("--resume")
        train_superpoint.run(train_args)
        best = exp_dir / "checkpoints" / "best.pt"
        if not best.is_file():
            raise UserError(f"{best} was not written (no validation ran)")
        result = score_on_validation(best)
        result["overrides"] = list(args.overrides)
        result["config"] = args.config
        atomic_write_text(exp_dir / "validation.json", json.dumps(result, indent=2))
        clean, noisy = result["clean"], result["noisy"]
        loc = clean["localization_error"]
        print(
            f"| {args.exp} | {args.config} {' '.join(args.overrides)} | "
            f"step {result['step']} | val mAP clean {clean['mAP']:.4f} | "
            f"noisy {noisy['mAP']:.4f} | loc. error "
            f"{'n/a' if loc is None else f'{loc:.3f}'} px |"
        )
        return 0

    return run_cli(run, "recipe_trial.py")


if __name__ == "__main__":
    sys.exit(main())
