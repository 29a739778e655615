"""Checks of a data folder before a long run: counts, and the first problems found.

Every dataset module that reads real data has a ``--check DIR`` (``python -m
datasets.hpatches --check data/hpatches``, ...). Each walks the folder the way its loader
would, counts what it finds into a :class:`CheckReport` and records every problem (a
missing or truncated file, a malformed homography, a listed file that is not there);
:meth:`CheckReport.finish` prints the counts and the first problems and gives the exit
code: 0 when the folder is sound, 1 when problems were found. A folder that does not exist
at all is a usage error (:class:`utils.errors.UserError`, exit code 2).

Image files are checked by :func:`image_file_problem` from their size, header and last
bytes, without decoding them: that finds what an interrupted download or extraction leaves
(empty, truncated or mislabelled files) in seconds over 100,000 images.
"""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8\xff"
JPEG_END = b"\xff\xd9"
# Bytes read from the end of a file to find its end marker: JPEG and PNG writers may
# pad a few bytes after it.
TAIL_BYTES = 1024
NETPBM_HEADER = re.compile(
    rb"(P[56])(?:\s|#[^\n]*\n)+(\d+)(?:\s|#[^\n]*\n)+(\d+)(?:\s|#[^\n]*\n)+(\d+)\s"
)


def _netpbm_problem(head: bytes, size: int) -> str | None:
    """Binary PGM/PPM: the header's width x height x channels must fit in the file."""
    match = NETPBM_HEADER.match(head)
    if match is None:
        return "malformed PGM/PPM header"
    kind, width, height, maxval = match.groups()
    channels = 3 if kind == b"P6" else 1
    sample = 2 if int(maxval) > 255 else 1
    expected = match.end() + int(width) * int(height) * channels * sample
    if size < expected:
        return f"truncated ({size:,} of {expected:,} bytes)"
    return None


def image_file_problem(path: str | Path) -> str | None:
    """Why an image file would not load, or None when it looks sound.

    JPEG must end with its end-of-image marker, PNG with its ``IEND`` chunk, binary
    PGM/PPM must hold the pixels its header announces; other formats are decoded.

    Args:
        path: the image file.

    Returns:
        A short reason (``missing``, ``empty file``, ``truncated ...``, ``not an image``)
        or None.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(256)
            f.seek(max(0, size - TAIL_BYTES))
            tail = f.read()
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if size == 0:
        return "empty file"
    if head.startswith(JPEG_START):
        return None if JPEG_END in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(PNG_SIGNATURE):
        return None if b"IEND" in tail else "truncated PNG (no IEND chunk)"
    if head[:2] in (b"P5", b"P6"):
        return _netpbm_problem(head, size)
    data = np.fromfile(str(path), dtype=np.uint8)
    previous = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(previous)
    return None if image is not None else "not an image (cannot be decoded)"


class CheckReport:
    """Counts and problems of one folder check, printed by :meth:`finish`.

    Args:
        title: what was checked, e.g. ``HPatches data/hpatches``.

    Example:
        >>> report = CheckReport("images demo")
        >>> report.count("images", 3)
        >>> report.problem("demo/a.jpg: empty file")
        >>> report.finish()  # doctest: +NORMALIZE_WHITESPACE
        images demo: 3 images
        1 problem; the first 1:
          demo/a.jpg: empty file
        1
    """

    def __init__(self, title: str):
        self.title = title
        self.counts: dict[str, int] = {}
        self.notes: list[str] = []
        self.problems: list[str] = []

    def count(self, name: str, number: int = 1) -> None:
        """Add ``number`` to the count called ``name`` (printed in first-count order)."""
        self.counts[name] = self.counts.get(name, 0) + number

    def note(self, text: str) -> None:
        """A line printed after the counts that is not a problem."""
        self.notes.append(text)

    def problem(self, text: str) -> None:
        """One problem, naming the file and what is wrong with it."""
        self.problems.append(text)

    def check_image(self, path: str | Path) -> bool:
        """Record the problem of image ``path``, if any; True when it looks sound."""
        reason = image_file_problem(path)
        if reason is not None:
            self.problem(f"{path}: {reason}")
        return reason is None

    def finish(self, limit: int = 10) -> int:
        """Print the counts, the notes and the first ``limit`` problems.

        Returns:
            The exit code: 0 without problems, 1 with.
        """
        counts = ", ".join(f"{n:,} {name}" for name, n in self.counts.items())
        print(f"{self.title}: {counts or 'nothing found'}")
        for note in self.notes:
            print(note)
        if not self.problems:
            print("no problems found")
            return 0
        total = len(self.problems)
        shown = min(limit, total)
        print(f"{total:,} problem{'s' if total > 1 else ''}; the first {shown}:")
        for text in self.problems[:shown]:
            print(f"  {text}")
        return 1
