"""Classical (OpenCV) local features as extractors with the learned models' contract.

SIFT and ORB are the baselines of every evaluation and the inputs of feature inversion. They
take a uint8 image and return NumPy ``keypoints`` (N, 2) in the repository's pixel convention
(OpenCV's: the centre of the top-left pixel at (0, 0)), ``scores`` (N,) and ``descriptors``:
SIFT (N, 128) float32, L2-normalised; ORB (N, 32) uint8, the packed bits OpenCV returns.
"""

from __future__ import annotations

import cv2
import numpy as np

ORB_DEFAULT_FEATURES = 1000
"""ORB keeps this many keypoints when no ``--top-k`` is given (OpenCV's default: 500)."""


class OpenCVExtractor:
    """SIFT or ORB from OpenCV on the grayscale image.

    Args:
        kind: ``sift`` or ``orb``.
        top_k: keep the ``top_k`` strongest responses (SIFT default: all; ORB default:
            :data:`ORB_DEFAULT_FEATURES`).

    Attributes:
        identity: ``{"id": "sift (OpenCV 4.x.y)"}``, recorded in feature files.
        options: the options it was built with (``top_k``).
    """

    grayscale = True

    def __init__(self, kind: str, top_k: int | None = None):
        self.tag = kind
        self.top_k = top_k
        # Feature-file provenance: results can change between OpenCV releases.
        self.identity = {"id": f"{kind} (OpenCV {cv2.__version__})"}
        self.options: dict = {} if top_k is None else {"top_k": top_k}
        if kind == "sift":
            self.detector = cv2.SIFT_create(nfeatures=top_k or 0)
        elif kind == "orb":
            self.detector = cv2.ORB_create(nfeatures=top_k or ORB_DEFAULT_FEATURES)
        else:
            raise ValueError(f"unknown OpenCV extractor {kind!r}")

    def __call__(self, image: np.ndarray) -> dict[str, np.ndarray]:
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        kps, desc = self.detector.detectAndCompute(image, None)
        dim, dtype = (128, np.float32) if self.tag == "sift" else (32, np.uint8)
        if desc is None or not kps:
            desc = np.zeros((0, dim), dtype)
        keypoints = np.array([kp.pt for kp in kps], np.float32).reshape(-1, 2)
        scores = np.array([kp.response for kp in kps], np.float32)
        if self.tag == "sift":
            desc = desc.astype(np.float32)
            desc /= np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-12)
        return {"keypoints": keypoints, "scores": scores, "descriptors": desc}
