"""``evaluation.py inversion``: how well images are recovered from their sparse features.

    python evaluation.py inversion --checkpoint COARSE.pt [--refiner REFINE.pt] \\
        --images DIR|LIST|builtin (--features TAG | --model EXTRACTOR) --out DIR \\
        [--keep 0.05 0.1 0.25 0.5 1.0]

For every kept fraction of the keypoints (``--keep``; a random subset per image, the same
for every method), each test image is resized to the short side ``--size`` and processed
whole. The methods, all on exactly the same inputs:

* ``coarse`` (and ``refined`` with ``--refiner``): the networks;
* ``mean image``: the mean of the coarse run's training images (``--train-images`` to
  override), see :func:`evaluators.inversion_baselines.mean_image`;
* ``interpolation``: the keypoint colours of the input spread by linear scattered
  interpolation (``--interpolation inpaint``: OpenCV's Telea inpainting), when the network
  takes colours as input.

Metrics per image and in the mean: MAE and PSNR on [0, 1] images, and SSIM as
scikit-image's ``structural_similarity`` (7 x 7 uniform window, ``data_range`` 1, the mean
over colour channels). ``--out`` receives ``summary.json`` (every number), ``results.md``
(tables), ``grid_keep<f>.png`` (per image: input map, baselines, prediction(s), target) and,
for several fractions, ``sweep.png`` (PSNR and SSIM against the kept fraction). Everything is
computed first and written at the end, each file atomically.
"""

from __future__ import annotations

import io
import json
from typing import Any

import cv2
import numpy as np
import torch
from tqdm import tqdm

from evaluators.inversion_baselines import (
    INTERPOLATIONS,
    interpolate_colors,
    mean_image,
    resize_to,
)
from losses.image_quality import mae, psnr, ssim
from pipelines.reconstruction import (
    InversionNetworks,
    add_input_arguments,
    evaluation_dataset,
    extractor_conf,
    load_networks,
)
from utils.arguments import ArgumentParser
from utils.errors import UserError, run_cli
from utils.io import atomic_write, atomic_write_text, ensure_writable_dir

METRICS = ("mae", "psnr", "ssim")


def image_scores(prediction: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """MAE, PSNR and SSIM of one ``(C, H, W)`` prediction in [0, 1] (float64)."""
    p = torch.from_numpy(np.clip(prediction, 0, 1)).double()[None]
    t = torch.from_numpy(target).double()[None]
    return {
        "mae": float(mae(p, t)),
        "psnr": float(psnr(p, t)),
        "ssim": float(ssim(p, t)),
    }


def _input_tile(sample: dict[str, Any], color_slice: slice | None) -> np.ndarray:
    mask = sample["keypoint_mask"][0].numpy() > 0
    if color_slice is not None:
        tile = sample["input"][color_slice].numpy() * mask
    else:
        tile = mask[None].astype(np.float32)
    tile = np.stack([cv2.dilate(plane, np.ones((3, 3), np.uint8)) for plane in tile])
    return tile


def _to_bgr(image: np.ndarray) -> np.ndarray:
    image = (np.clip(image, 0, 1) * 255.0 + 0.5).astype(np.uint8).transpose(1, 2, 0)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return cv2.cvtColor(image, cv2.COLOR_RGB2BGR)


def grid_png(rows: list[list[np.ndarray]], labels: list[str]) -> bytes:
    """PNG of tiles ``(C, H, W)`` in [0, 1], one row per image, labelled columns."""
    height = max(t.shape[1] for row in rows for t in row)
    width = max(t.shape[2] for row in rows for t in row)
    header = np.full((22, width * len(labels), 3), 255, np.uint8)
    for column, label in enumerate(labels):
        cv2.putText(
            header, label, (column * width + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5,
            (0, 0, 0), 1, cv2.LINE_AA,
        )  # fmt: skip
    lines = [header]
    for row in rows:
        tiles = []
        for tile in row:
            canvas = np.zeros((height, width, 3), np.uint8)
            image = _to_bgr(tile)
            canvas[: image.shape[0], : image.shape[1]] = image
            tiles.append(canvas)
        lines.append(np.concatenate(tiles, axis=1))
    ok, data = cv2.imencode(".png", np.concatenate(lines, axis=0))
    if not ok:
        raise UserError("could not encode the PNG grid")
    return data.tobytes()


def evaluate_fraction(
    networks: InversionNetworks,
    dataset: Any,
    mean: np.ndarray,
    interpolation: str | None,
    grids: int,
) -> tuple[dict[str, Any], bytes | None]:
    """Scores of every method on ``dataset`` (one kept fraction) and the PNG grid."""
    device = next(networks.coarse.parameters()).device
    descriptor_dim = dataset.descriptor_dim
    colors = dataset.conf["colors"]
    color_slice = (
        slice(descriptor_dim, descriptor_dim + dataset.color_channels)
        if colors
        else None
    )
    per_image, rows = [], []
    for index in tqdm(range(len(dataset)), desc="inversion", leave=False):
        sample = dataset[index]
        target = sample["image"].numpy().astype(np.float64)
        height, width = target.shape[1:]
        outputs = {
            name: image[0].float().cpu().numpy()
            for name, image in networks.predict(
                sample["input"][None].to(device)
            ).items()
        }
        outputs["mean image"] = resize_to(mean, height, width)
        if interpolation is not None:
            mask = sample["keypoint_mask"][0].numpy() > 0
            outputs[f"interpolation ({interpolation})"] = interpolate_colors(
                sample["input"][color_slice].numpy(), mask, interpolation
            )
        record = {
            "name": sample["name"],
            "keypoints": int(sample["keypoint_mask"].sum()),
            "scores": {k: image_scores(v, target) for k, v in outputs.items()},
        }
        per_image.append(record)
        if index < grids:
            rows.append([_input_tile(sample, color_slice), *outputs.values(), target])
    methods = list(per_image[0]["scores"])
    means = {
        method: {
            metric: float(np.mean([r["scores"][method][metric] for r in per_image]))
            for metric in METRICS
        }
        for method in methods
    }
    labels = ["input", *methods, "target"]
    grid = grid_png(rows, labels) if rows else None
    keypoints = float(np.mean([r["keypoints"] for r in per_image]))
    return {"mean": means, "keypoints": keypoints, "per_image": per_image}, grid


def results_markdown(summary: dict[str, Any]) -> str:
    """The tables of ``results.md``."""
    lines = [
        "# Feature inversion",
        "",
        f"- checkpoint: `{summary['checkpoint']}`"
        + (f", refiner: `{summary['refiner']}`" if summary["refiner"] else ""),
        f"- images: `{summary['images']}` ({summary['num_images']}), features: "
        f"`{summary['features']}`, short side {summary['size']} px, at most "
        f"{summary['max_points']} keypoints",
        "- SSIM: scikit-image structural_similarity (7x7 uniform window, data_range 1); "
        "MAE and PSNR on [0, 1]",
    ]
    for entry in summary["results"]:
        lines += [
            "",
            f"## {entry['keep']:.0%} of the keypoints kept "
            f"({entry['keypoints']:.0f} keypoint pixels per image on average)",
            "",
            "| method | MAE | PSNR (dB) | SSIM |",
            "|---|---|---|---|",
        ]
        for method, scores in entry["mean"].items():
            lines.append(
                f"| {method} | {scores['mae']:.4f} | {scores['psnr']:.2f} | "
                f"{scores['ssim']:.4f} |"
            )
    return "\n".join(lines) + "\n"


def sweep_png(summary: dict[str, Any]) -> bytes:
    """PSNR and SSIM against the kept fraction, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keeps = [entry["keep"] for entry in summary["results"]]
    methods = list(summary["results"][0]["mean"])
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for axis, metric, unit in zip(axes, ("psnr", "ssim"), ("PSNR (dB)", "SSIM")):
        for method in methods:
            values = [entry["mean"][method][metric] for entry in summary["results"]]
            axis.plot(keeps, values, marker="o", label=method)
        axis.set_xscale("log")
        axis.set_xticks(keeps, [f"{k:g}" for k in keeps])
        axis.set_xlabel("fraction of keypoints kept")
        axis.set_ylabel(unit)
        axis.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    """Command line of ``evaluation.py inversion`` (see the module docstring)."""
    parser = ArgumentParser(
        prog="evaluation.py inversion",
        description="MAE/PSNR/SSIM of feature inversion against the mean-image and "
        "colour-interpolation baselines, per kept fraction of the keypoints.",
    )
    add_input_arguments(parser)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--keep",
        type=float,
        nargs="+",
        default=[1.0],
        help="fractions of the keypoints kept (a sweep when several)",
    )
    parser.add_argument(
        "--train-images",
        help="images of the mean-image baseline (None: the checkpoint's data.images)",
    )
    parser.add_argument(
        "--interpolation",
        default="linear",
        choices=INTERPOLATIONS,
        help="colour baseline: linear scattered interpolation or Telea inpainting",
    )
    parser.add_argument(
        "--grids", type=int, default=8, help="images drawn in each PNG grid"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        for keep in args.keep:
            if not 0 < keep <= 1:
                raise UserError(f"--keep {keep}: expected fractions in (0, 1]")
        networks = load_networks(
            args.checkpoint, args.refiner, args.device, args.precision
        )
        options = extractor_conf(args)
        first = evaluation_dataset(
            networks, args.images, args.features, args.model, args.keep[0],
            args.size, args.max_points, extractor_conf=options, device=args.device,
            features_dir=args.features_dir,
        )  # fmt: skip
        size = first.conf["eval_size"] or 256
        train_images = args.train_images or networks.data_conf["images"]
        mean = mean_image(train_images, first.color_channels, size)
        interpolation = args.interpolation if first.conf["colors"] else None
        # Inputs are checked above; the folder is made only now, so bad input leaves none.
        out = ensure_writable_dir(args.out)
        summary: dict[str, Any] = {
            "checkpoint": args.checkpoint,
            "refiner": args.refiner,
            "images": args.images,
            "num_images": len(first),
            "features": (
                f"online {first.conf['extractor']}"
                if first.online
                else f".{first.conf['features']} files"
            ),
            "size": first.conf["eval_size"],
            "max_points": first.conf["max_points"],
            "train_images": train_images,
            "precision": networks.precision,
            "results": [],
        }
        grids: dict[float, bytes] = {}
        extractor = first.extractor if first.online else None
        for keep in args.keep:
            dataset = evaluation_dataset(
                networks, args.images, args.features, args.model, keep, args.size,
                args.max_points, extractor_conf=options, device=args.device,
                extractor=extractor, features_dir=args.features_dir,
            )  # fmt: skip
            result, grid = evaluate_fraction(
                networks, dataset, mean, interpolation, args.grids
            )
            summary["results"].append({"keep": keep, **result})
            if grid is not None:
                grids[keep] = grid
            means = ", ".join(
                f"{method} {scores['psnr']:.2f} dB / {scores['ssim']:.3f}"
                for method, scores in result["mean"].items()
            )
            print(f"keep {keep:g}: {means}")
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=1))
        atomic_write_text(out / "results.md", results_markdown(summary))
        for keep, grid in grids.items():
            atomic_write(out / f"grid_keep{keep:g}.png", lambda f, g=grid: f.write(g))
        if len(args.keep) > 1:
            plot = sweep_png(summary)
            atomic_write(out / "sweep.png", lambda f: f.write(plot))
        print(f"wrote {out}/summary.json, results.md and the PNG figures")
        return 0

    return run_cli(run, "evaluation.py inversion")
