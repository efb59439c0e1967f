"""Evaluation data from an ``.npz`` file (``--data`` of ``legocompile run`` / ``retarget`` and the Jetson suite).

Arrays ``x`` (inputs shaped like the bundle's, any batch size) and ``y`` (labels: one row per input, any shape the
bundle's metric reads: class ids, per-pixel masks, boxes). Read with ``allow_pickle=False``: object arrays are
refused, never unpickled. Every problem is a one-line :class:`LegoCompileError`.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from legocompile.errors import LegoCompileError


def load_eval_npz(path: str | Path, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from an .npz with arrays ``x`` (inputs shaped like the bundle's) and ``y`` (labels); no pickles."""
    p = Path(path)
    if not p.is_file():
        raise LegoCompileError(f"data file not found: {p}")

    def first_line(e: BaseException) -> str:
        return str(e).splitlines()[0] if str(e) else type(e).__name__

    try:
        archive = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise LegoCompileError(f"{p}: not a readable .npz file ({first_line(e)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise LegoCompileError(f"{p}: not an .npz archive (--data needs an .npz with arrays x and y)")
    with archive:
        for key in ("x", "y"):
            if key not in archive.files:
                have = ", ".join(archive.files) or "none"
                raise LegoCompileError(f"{p}: no array {key!r} (--data needs arrays x and y; it has {have})")
        try:
            x, y = archive["x"], archive["y"]
        except ValueError:
            raise LegoCompileError(f"{p}: holds object arrays, which are not read (no pickles); "
                                   "save numeric arrays") from None
        except (OSError, EOFError, zipfile.BadZipFile) as e:
            raise LegoCompileError(f"{p}: damaged .npz file ({first_line(e)})") from None
    expected = tuple(input_shape[1:])
    if x.ndim != len(expected) + 1 or tuple(x.shape[1:]) != expected:
        raise LegoCompileError(f"{p}: x has shape {tuple(x.shape)}; the bundle's input is "
                               f"(N, {', '.join(map(str, expected))})")
    if y.ndim == 0 or len(y) != len(x):
        raise LegoCompileError(f"{p}: y has shape {tuple(y.shape)}; it must hold one label per row of x ({len(x)},)")
    if len(x) == 0:
        raise LegoCompileError(f"{p}: x and y are empty")
    return np.ascontiguousarray(x, dtype=np.float32), np.asarray(y)
