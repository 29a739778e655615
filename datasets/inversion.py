"""Feature-inversion samples: an image and the sparse map of its local features.

``data.name: inversion``. Each sample is built from one image of ``data.images`` (a folder, a
``.txt`` list or ``builtin:train|test|all``; see :mod:`datasets.inversion_sources`):

1. **Geometry.** Training samples are rescaled so the short side is drawn uniformly in
   ``scale`` (pixels), cropped at random to ``crop`` x ``crop`` and flipped (``hflip``,
   ``vflip``, each with probability 1/2). Validation and evaluation samples are resized to
   the short side ``eval_size`` and centre-cropped to ``crop`` (``crop: 0`` keeps the whole
   resized image, as evaluation does, one image per batch).
2. **Features.** ``features: online`` runs ``extractor`` (``sift``, ``orb`` or a local
   SuperPoint/MagicPoint/R2D2 checkpoint, options in ``extractor_conf``) on the final crop,
   so descriptors see exactly the pixels of the target. ``features: TAG`` reads the
   ``<image>.<TAG>`` files of ``extract.py`` (next to the images or under ``features_dir``),
   computed once on the whole image; their keypoints follow the rescale, crop and flips.
   ORB's packed bits become D = 256 channels of +-1.
3. **Sparsity.** The ``max_points`` strongest keypoints, then a random fraction drawn
   uniformly in ``keep_range`` (InvSfM: 5-100 %), see :func:`datasets.sparse_maps.select_points`.
4. **Rasterisation** (:func:`datasets.sparse_maps.rasterize`, its rounding convention):
   descriptors, then optional channels: the image colour at the keypoints (``colors``; 3
   channels, 1 for ``color: gray``), the depth there (``depth_dir``) and a presence mask
   (``mask``).

Sample keys: ``input (C_in, H, W)`` float32, ``image (C_out, H, W)`` target in [0, 1]
(``color: rgb`` gives 3 channels, ``gray`` 1), ``keypoint_mask (1, H, W)`` (1 at the pixels
written), ``keypoints (K, 2)`` (x, y) of the kept keypoints, ``name`` (relative image name).
Every random choice is drawn from (``seed``, epoch, index), so samples are reproducible and
resumable with any number of loader workers.

``python -m datasets.inversion --show`` writes a grid of samples (sparse map / target);
``python -m datasets.inversion --export-builtin DIR`` writes the built-in photographs as
PNGs under ``DIR/train`` and ``DIR/test`` (for ``extract.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from datasets.inversion_sources import (
    ImageSource,
    depth_path,
    descriptor_size,
    feature_path,
    float_descriptors,
    list_images,
    load_rgb,
    read_depth,
    read_feature_file,
)
from datasets.sparse_maps import (
    flip_keypoints,
    rasterize,
    resize_keypoints,
    resize_short_side,
    sample_at_keypoints,
    select_points,
)
from utils.config import merge_config
from utils.errors import UserError

Array = np.ndarray


class InversionDataset(Dataset):
    """Images and their rasterised sparse features (see module docstring).

    Args:
        conf: the ``data`` section (keys of :attr:`default_conf`).
        split: ``train`` (random geometry and keep fraction) or ``val`` (fixed geometry,
            fraction drawn from the fixed validation stream).
        extractor: an online extractor to use instead of building ``conf["extractor"]``
            (tests, and evaluation sharing one extractor).
    """

    default_conf: dict[str, Any] = {
        "name": "inversion",
        "images": "builtin:train",
        # "online" (extractor on each crop) or the tag of extract.py feature files.
        "features": "online",
        "extractor": "sift",
        "extractor_conf": {},
        "extractor_device": "auto",
        # Folder of the feature files (extract.py --out-dir); None: next to the images.
        "features_dir": None,
        "max_points": 1000,
        "keep_range": [0.05, 1.0],
        # Target (and keypoint colour) channels: rgb | gray.
        "color": "rgb",
        "colors": True,
        "depth_dir": None,
        "depth_scale": 1.0,
        "mask": False,
        "crop": 256,
        "scale": [256, 512],
        "hflip": True,
        "vflip": False,
        # Short side of validation/evaluation images (0: their own size).
        "eval_size": 256,
        # Samples per epoch = repeat x images (each with its own random crop).
        "repeat": 1,
        "seed": 0,
    }

    def __init__(
        self,
        conf: dict[str, Any] | None = None,
        split: str = "train",
        extractor: Any = None,
    ):
        self.conf = merge_config(self.default_conf, conf or {}, prefix="data.")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        self._check_conf()
        self.split, self.epoch = split, 0
        self.sources: list[ImageSource] = list_images(self.conf["images"])
        self.online = self.conf["features"] == "online"
        self._extractor = extractor
        # One built here (not handed in) is built again by each spawned loader worker.
        self._own_extractor = extractor is None
        if self.online:
            self.descriptor_dim = self._online_descriptor_dim()
        else:
            self.descriptor_dim = self._offline_descriptor_dim()
        if self.conf["depth_dir"]:
            for source in self.sources:
                depth_path(self.conf["depth_dir"], source)

    def _check_conf(self) -> None:
        conf = self.conf
        if conf["color"] not in ("rgb", "gray"):
            raise UserError(
                f"config key 'data.color' must be rgb or gray, got {conf['color']!r}"
            )
        keep = conf["keep_range"]
        if len(keep) != 2 or not 0 <= keep[0] <= keep[1] <= 1:
            raise UserError(
                "config key 'data.keep_range' must be [low, high] with 0 <= low <= "
                f"high <= 1, got {keep}"
            )
        scale = conf["scale"]
        if len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise UserError(
                f"config key 'data.scale' must be [min, max] pixels, got {scale}"
            )
        smallest = min(scale[0], conf["eval_size"] or scale[0])
        if (
            conf["crop"] < 0
            or conf["eval_size"] < 0
            or (conf["crop"] and smallest < conf["crop"])
        ):
            raise UserError(
                f"config key 'data.crop' ({conf['crop']}) must be >= 0 and at most "
                f"data.scale[0] ({scale[0]}) and data.eval_size ({conf['eval_size']})"
            )
        if conf["repeat"] < 1:
            raise UserError(
                f"config key 'data.repeat' must be >= 1, got {conf['repeat']}"
            )

    # ------------------------------------------------------------ features
    @property
    def extractor(self) -> Any:
        """The online extractor, built on first use: by the descriptor-width probe of the
        constructor, and again by each spawned loader worker (:meth:`__getstate__`)."""
        if self._extractor is None:
            from models.extractor import build_extractor

            self._extractor = build_extractor(
                self.conf["extractor"],
                self.conf["extractor_device"],
                dict(self.conf["extractor_conf"]),
            )
        return self._extractor

    @property
    def worker_start_method(self) -> str | None:
        """``spawn`` when the online extractor runs on a GPU, else None (the default).

        A forked loader worker cannot use CUDA once its parent has (the training process
        always has), so each worker is spawned and builds its own extractor on the GPU
        of this process: one CUDA context and one copy of the model per worker.
        """
        if not self.online:
            return None
        device = str(getattr(self.extractor, "device", "cpu"))
        return "spawn" if device.startswith("cuda") else None

    def __getstate__(self) -> dict[str, Any]:
        """What a spawned loader worker receives: the dataset without the extractor built
        here, and with its GPU named by index (``cuda`` or ``auto`` means this process's
        current GPU, which a new process would take as GPU 0)."""
        state = dict(self.__dict__)
        if self._own_extractor and state["_extractor"] is not None:
            device = self.conf["extractor_device"]
            if device in ("auto", "cuda") and torch.cuda.is_initialized():
                device = f"cuda:{torch.cuda.current_device()}"
            state["conf"] = {**self.conf, "extractor_device": device}
            state["_extractor"] = None
        return state

    def _online_descriptor_dim(self) -> int:
        # A textured probe image: the descriptor width is known even if it finds nothing.
        probe = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
        probe = cv2.GaussianBlur(probe, (5, 5), 1.0)
        feats = self._extract(probe)
        return int(feats["descriptors"].shape[1])

    def _offline_descriptor_dim(self) -> int:
        tag, folder = self.conf["features"], self.conf["features_dir"]
        first = feature_path(self.sources[0], tag, folder)
        dim = descriptor_size(first)
        for source in self.sources[1:]:
            path = feature_path(source, tag, folder)
            other = descriptor_size(path)
            if other != dim:
                raise UserError(
                    f"feature file '{path}' gives {other}-D descriptors, but '{first}' "
                    f"gives {dim}-D: one tag must come from one extractor"
                )
        return dim

    def _extract(self, image: Array) -> dict[str, Array]:
        extractor = self.extractor
        gray = getattr(extractor, "grayscale", True)
        view = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if gray else image
        feats = extractor(view)
        if feats.get("descriptors") is None:
            raise UserError(
                f"extractor '{self.conf['extractor']}' gives no descriptors (a "
                "detector-only model cannot be inverted)"
            )
        keypoints = np.asarray(feats["keypoints"], np.float32).reshape(-1, 2)
        scores = np.asarray(
            feats.get("scores", np.ones(len(keypoints))), np.float32
        ).reshape(-1)
        return {
            "keypoints": keypoints,
            "scores": scores,
            "descriptors": float_descriptors(np.asarray(feats["descriptors"])),
        }

    @property
    def color_channels(self) -> int:
        """Channels of the target and of the keypoint colours: 3 (rgb) or 1 (gray)."""
        return 3 if self.conf["color"] == "rgb" else 1

    @property
    def input_channels(self) -> int:
        """Channels of ``input``: descriptors + colour + depth + mask."""
        conf = self.conf
        return (
            self.descriptor_dim
            + (self.color_channels if conf["colors"] else 0)
            + (1 if conf["depth_dir"] else 0)
            + (1 if conf["mask"] else 0)
        )

    def describe_input(self) -> str:
        """Human-readable channel count, for error messages."""
        source = (
            f"extractor '{self.conf['extractor']}'"
            if self.online
            else f"feature files '.{self.conf['features']}'"
        )
        return (
            f"{source} give {self.descriptor_dim}-D descriptors, {self.input_channels} "
            "input channels with the optional ones"
        )

    # ------------------------------------------------------------- samples
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose random draws training samples use."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.sources) * self.conf["repeat"]

    def rng(self, index: int) -> np.random.Generator:
        """The random generator of sample ``index`` (a function of seed, epoch, index)."""
        # Validation draws from epoch 0 of its own stream whatever the training epoch.
        epoch = self.epoch if self.split == "train" else 0
        stream = 0 if self.split == "train" else 1
        return np.random.default_rng([self.conf["seed"], stream, epoch, index])

    def _geometry(
        self, image: Array, rng: np.random.Generator
    ) -> tuple[Array, dict[str, Any]]:
        """Rescale, crop and flip ``image``; returns it and the parameters applied."""
        conf, crop = self.conf, self.conf["crop"]
        if self.split == "train":
            short = int(round(rng.uniform(*conf["scale"])))
        else:
            short = conf["eval_size"]
        resized = resize_short_side(image, short) if short else image
        height, width = resized.shape[:2]
        x0 = y0 = 0
        if crop:
            if self.split == "train":
                x0 = int(rng.integers(0, width - crop + 1))
                y0 = int(rng.integers(0, height - crop + 1))
            else:
                x0, y0 = (width - crop) // 2, (height - crop) // 2
            resized = resized[y0 : y0 + crop, x0 : x0 + crop]
        hflip = self.split == "train" and conf["hflip"] and rng.random() < 0.5
        vflip = self.split == "train" and conf["vflip"] and rng.random() < 0.5
        params = {
            "size": (height, width),
            "offset": (x0, y0),
            "hflip": bool(hflip),
            "vflip": bool(vflip),
        }
        return self._apply_flips(resized, params), params

    @staticmethod
    def _apply_flips(image: Array, params: dict[str, Any]) -> Array:
        if params["hflip"]:
            image = image[:, ::-1]
        if params["vflip"]:
            image = image[::-1]
        return np.ascontiguousarray(image)

    @staticmethod
    def _move_keypoints(
        keypoints: Array,
        original: tuple[int, int],
        params: dict[str, Any],
        out: tuple[int, int],
    ) -> Array:
        points = resize_keypoints(keypoints, original, params["size"])
        points = points - np.array(params["offset"], np.float32)
        if params["hflip"]:
            points = flip_keypoints(points, out[1])
        if params["vflip"]:
            points[:, 1] = (out[0] - 1) - points[:, 1]
        return np.ascontiguousarray(points, np.float32)

    def features_for(
        self,
        source: ImageSource,
        image: Array,
        params: dict[str, Any] | None,
        crop: Array,
    ) -> dict[str, Array]:
        """Features of the final ``crop`` of ``image`` (online: extracted on it)."""
        if self.online:
            return self._extract(crop)
        path = feature_path(source, self.conf["features"], self.conf["features_dir"])
        feats = read_feature_file(path, image.shape[:2])
        if feats["descriptors"].shape[1] != self.descriptor_dim:
            raise UserError(
                f"feature file '{path}' gives {feats['descriptors'].shape[1]}-D "
                f"descriptors, expected {self.descriptor_dim}"
            )
        feats["keypoints"] = self._move_keypoints(
            feats["keypoints"], image.shape[:2], params, crop.shape[:2]
        )
        return feats

    def __getitem__(self, index: int) -> dict[str, Any]:
        source = self.sources[index % len(self.sources)]
        rng = self.rng(index)
        image = load_rgb(source)
        crop, params = self._geometry(image, rng)
        feats = self.features_for(source, image, params, crop)
        keep = select_points(
            feats["scores"], self.conf["max_points"], self.conf["keep_range"], rng
        )
        return self.build_sample(source, image, crop, params, feats, keep)

    def build_sample(
        self,
        source: ImageSource,
        image: Array,
        crop: Array,
        params: dict[str, Any],
        feats: dict[str, Array],
        keep: Array,
    ) -> dict[str, Any]:
        """The sample dict of ``crop`` with the keypoints ``keep`` (see module docstring)."""
        conf = self.conf
        target = (
            crop if conf["color"] == "rgb" else cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
        )
        target = target.astype(np.float32) / 255.0
        keypoints = feats["keypoints"][keep]
        size = crop.shape[:2]
        colors = sample_at_keypoints(target, keypoints) if conf["colors"] else None
        depths = None
        if conf["depth_dir"]:
            depth = read_depth(
                depth_path(conf["depth_dir"], source),
                image.shape[:2],
                conf["depth_scale"],
            )
            depth = resize_nearest(depth, params["size"])
            x0, y0 = params["offset"]
            depth = depth[y0 : y0 + size[0], x0 : x0 + size[1]]
            depths = sample_at_keypoints(self._apply_flips(depth, params), keypoints)[
                :, 0
            ]
        sparse = rasterize(
            keypoints,
            feats["descriptors"][keep],
            size,
            scores=feats["scores"][keep],
            colors=colors,
            depths=depths,
            mask=True,
        )
        presence = sparse[-1:]
        if not conf["mask"]:
            sparse = sparse[:-1]
        target = target[None] if target.ndim == 2 else target.transpose(2, 0, 1)
        return {
            "input": torch.from_numpy(sparse),
            "image": torch.from_numpy(np.ascontiguousarray(target)),
            "keypoint_mask": torch.from_numpy(np.ascontiguousarray(presence)),
            "keypoints": torch.from_numpy(np.ascontiguousarray(keypoints, np.float32)),
            "name": source.name,
        }


TRAINING_DATA_DEFAULTS: dict[str, Any] = {
    **InversionDataset.default_conf,
    # Validation images (folder, list or builtin[:split]); None: the training images,
    # at their fixed validation crops (the held-out photographs stay unseen).
    "val_images": None,
}
"""The ``data`` section of ``train_reconstruct.py`` and ``train_refine.py``."""


def build_datasets(
    conf: dict[str, Any],
) -> tuple[InversionDataset, InversionDataset]:
    """Training and validation sets of a ``data`` section (:data:`TRAINING_DATA_DEFAULTS`).

    One online extractor serves both sets, so a model checkpoint is read once.
    """
    if conf["name"] != "inversion":
        raise UserError(
            f"config key 'data.name': expected 'inversion', got {conf['name']!r}"
        )
    data = {k: v for k, v in conf.items() if k != "val_images"}
    train_set = InversionDataset(data, "train")
    val_conf = {**data, "images": conf["val_images"] or data["images"], "repeat": 1}
    extractor = train_set.extractor if train_set.online else None
    val_set = InversionDataset(val_conf, "val", extractor=extractor)
    # Same extractor settings: spawned loader workers build it again, as for training.
    val_set._own_extractor = True
    return train_set, val_set


def fill_input_channels(
    model_conf: dict[str, Any],
    dataset: InversionDataset,
    key: str = "model.in_channels",
) -> None:
    """Set ``model_conf['in_channels']`` from the data when 0, else check that they agree.

    The config is updated in place so that the saved config (and every checkpoint) records
    the real channel count.

    Raises:
        UserError: a set value that differs from the data's channel count.
    """
    channels = dataset.input_channels
    if model_conf["in_channels"] == 0:
        model_conf["in_channels"] = channels
    elif model_conf["in_channels"] != channels:
        raise UserError(
            f"config key '{key}' is {model_conf['in_channels']}, but "
            f"{dataset.describe_input()}"
        )


def resize_nearest(depth: Array, size: tuple[int, int]) -> Array:
    """Depth resized to ``size`` (H, W) with nearest neighbours (no mixed depths)."""
    if depth.shape[:2] == tuple(size):
        return depth
    return cv2.resize(depth, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


def sample_grid(dataset: InversionDataset, count: int = 8) -> Array:
    """RGB uint8 grid: one column per sample, rows sparse map (dilated) / target."""
    columns = []
    for index in range(min(count, len(dataset))):
        sample = dataset[index]
        target = sample["image"].numpy().transpose(1, 2, 0)
        target = np.repeat(target, 3, axis=2) if target.shape[2] == 1 else target
        mask = sample["keypoint_mask"].numpy()[0][..., None]
        sparse = cv2.dilate(target * mask, np.ones((3, 3), np.uint8))
        columns.append(np.concatenate([sparse, target], axis=0))
    grid = np.concatenate(columns, axis=1)
    return (np.clip(grid, 0, 1) * 255).round().astype(np.uint8)


def export_builtin(folder: str | Path) -> list[Path]:
    """Write the built-in photographs as ``folder/{train,test}/<name>.png`` (atomically)."""
    from datasets.inversion_sources import builtin_photos, builtin_split
    from utils.io import atomic_write_image

    written = []
    for split in ("train", "test"):
        for name in builtin_split(split):
            path = Path(folder) / split / f"{name}.png"
            if not path.is_file():
                bgr = cv2.cvtColor(builtin_photos()[name], cv2.COLOR_RGB2BGR)
                atomic_write_image(path, bgr)
            written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """``python -m datasets.inversion --show | --export-builtin DIR`` (see module docstring)."""
    from utils.arguments import ArgumentParser
    from utils.errors import run_cli
    from utils.io import atomic_write_image

    parser = ArgumentParser(
        prog="python -m datasets.inversion",
        description="Show feature-inversion samples, or write the built-in photographs.",
    )
    parser.add_argument("--show", action="store_true", help="write a grid of samples")
    parser.add_argument(
        "--export-builtin",
        metavar="DIR",
        help="write the built-in photographs to DIR/train and DIR/test as PNG",
    )
    parser.add_argument(
        "--images", default="builtin:train", help="folder, .txt list or builtin[:split]"
    )
    parser.add_argument(
        "--features", default="online", help="online, or the tag of extract.py files"
    )
    parser.add_argument(
        "--extractor",
        default="sift",
        help="online extractor: sift, orb or a checkpoint",
    )
    parser.add_argument(
        "--split",
        default="train",
        choices=("train", "val"),
        help="train: random crops/flips and keep fraction; val: fixed",
    )
    parser.add_argument("--count", type=int, default=8, help="samples in the grid")
    parser.add_argument(
        "--out", type=Path, default=Path("inversion_samples.png"), help="grid PNG file"
    )
    args = parser.parse_args(argv)

    def run() -> int:
        if args.export_builtin:
            paths = export_builtin(args.export_builtin)
            print(
                f"{len(paths)} photographs under {args.export_builtin}/{{train,test}}"
            )
        if not args.show:
            if not args.export_builtin:
                parser.print_help()
            return 0
        conf = {
            "images": args.images,
            "features": args.features,
            "extractor": args.extractor,
        }
        grid = sample_grid(InversionDataset(conf, args.split), args.count)
        atomic_write_image(args.out, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))
        print(f"wrote {args.out} (rows: sparse map, target)")
        return 0

    return run_cli(run, "python -m datasets.inversion")


if __name__ == "__main__":
    import sys

    sys.exit(main())
