"""Synthetic Shapes: the procedural corner/junction dataset used to train MagicPoint (package).

Nine primitives (lines, polygon, multiple polygons, ellipses, star, checkerboard, stripes,
cube, noise) are drawn over a random smooth background following the recipe of the
SuperPoint TensorFlow reference (rpautrat/SuperPoint, ``synthetic_dataset.py``): same
random choices, with every size given relative to the image so that drawing at any
resolution reproduces the reference's 960x1280 proportions. Each primitive returns the
image and its exact ground truth: the corners and junctions of what was drawn that lie
inside the image, in the repository's pixel convention (x, y; centre of the top-left
pixel at (0, 0)).

Speed: the reference draws at 960x1280, blurs and resizes, so most of its time goes to
pixels that are then thrown away (``benchmarks/bench_synthetic_shapes.py`` times both
recipes). Here shapes are drawn directly at the output size with analytic anti-aliasing: every
polygon and thick segment gets the exact signed distance of each boundary pixel centre
to its outline (coverage ``clip(0.5 + d, 0, 1)``), and tilings (checkerboard, stripes)
are rasterised through their board homography with 4x4 supersampling of the boundary
pixels only. OpenCV's own ``LINE_AA`` fill is not used for labelled shapes because it
dilates by about 0.7 px and rounds vertical positions to whole pixels, which
would bias every corner; with the analytic rasteriser the drawn corner is where the
label says, so ``supersample`` (draw larger, then ``INTER_AREA``) defaults to 1 and is
only kept as an option. The background's blobs and box blur (kernel >= 12% of the image)
are computed on a grid of at most 160 columns and upsampled: the blur removes everything
finer. The reference's thresholded-noise layer is replaced by its mean, since after that
blur its standard deviation is below one grey level.

Dataset: :class:`SyntheticShapes` (glue-factory style ``default_conf``). Sample ``j`` of a
primitive and split is a pure function of ``(seed, primitive, split, j)``; its
augmentation also depends on the epoch set with :meth:`SyntheticShapes.set_epoch`, so runs
are reproducible with any number of DataLoader workers. ``cache_dir`` reads shards written
by :func:`generate_main` (``data_gen.py synthetic_shapes``), identical to on-the-fly
samples.

Cache format: ``DIR/<primitive>/<split>-<k:04d>.npz`` (uncompressed, memory-mapped when
read), shard ``k`` holding samples ``[k * shard_size, ...)`` as ``images`` (n, H, W)
uint8, ``keypoints`` (K, 2) float32 (all samples concatenated), ``offsets`` (n + 1,)
int64 (sample ``i`` owns ``keypoints[offsets[i]:offsets[i + 1]]``) and ``meta`` (a JSON
string with the generation settings, checked on read).
"""

from datasets.synthetic_shapes.generate import generate_main
from datasets.synthetic_shapes.painters import PAINTERS
from datasets.synthetic_shapes.primitives import (
    PRIMITIVE_FUNCTIONS,
    augmentation_rng,
    content_rng,
    generate_sample,
    parse_primitives,
)
from datasets.synthetic_shapes.raster import GENERATOR_VERSION, PRIMITIVES, SPLITS

# The dataset (a torch Dataset) and the sample grid are imported when first used, so that
# drawing (data_gen.py synthetic_shapes, the reference benchmark) starts without torch.
_LAZY = {
    "MAGICPOINT_HOMOGRAPHY": "datasets.synthetic_shapes.dataset",
    "SyntheticShapes": "datasets.synthetic_shapes.dataset",
    "main": "datasets.synthetic_shapes.show",
    "render_grid": "datasets.synthetic_shapes.show",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "GENERATOR_VERSION",
    "MAGICPOINT_HOMOGRAPHY",
    "PAINTERS",
    "PRIMITIVES",
    "PRIMITIVE_FUNCTIONS",
    "SPLITS",
    "SyntheticShapes",
    "augmentation_rng",
    "content_rng",
    "generate_main",
    "generate_sample",
    "main",
    "parse_primitives",
    "render_grid",
]
