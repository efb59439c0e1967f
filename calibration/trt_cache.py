"""TensorRT int8 calibration cache, read and written in pure Python (TensorRT is not imported).

A TensorRT builder given this file through an ``IInt8Calibrator`` whose ``read_calibration_cache`` returns its bytes
skips calibration and uses the cached per-tensor scales, so the block's ranges computed once by
:mod:`calibration.ranges` drive the TensorRT int8 engine too.

Format (text, ASCII, ``\\n`` line ends)::

    TRT-8600-EntropyCalibration2
    x: 3c010a14
    /0/Conv_output_0: 3d8f5c29
    ...

* Line 1: ``TRT-<version>-EntropyCalibration2``, where ``<version>`` is the TensorRT version as digits
  (``8600`` for 8.6.0). TensorRT rejects a cache whose version does not match its own unless told otherwise.
* One line per tensor: ``<tensor name>: <scale>``, where the tensor name is the ONNX tensor name (which the ONNX
  parser keeps) and ``<scale>`` is the float32 scale as 8 lowercase hex digits of its big-endian IEEE-754 bytes,
  i.e. ``struct.pack('>f', scale).hex()`` (``1.0`` is ``3f800000``).
* The scale is symmetric: ``scale = max(|min|, |max|) / 127``, so that ``[-127 * scale, 127 * scale]`` covers the
  tensor's calibrated range.

The name is split from the scale at the last ``": "``, so names containing colons round-trip; names containing a
line break cannot be represented and are rejected.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

import numpy as np

from calibration.ranges import TensorRanges
from legocompile.errors import LegoCompileError
from legocompile.workspace import atomic_write_bytes

_HEADER_SUFFIX = "EntropyCalibration2"
_HEADER_RE = re.compile(r"^TRT-(\d+)-(\w+)$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]{8}$")
INT8_MAX = 127


def trt_scales(ranges: TensorRanges) -> dict[str, float]:
    """Returns the TensorRT (symmetric int8) scale of every tensor, rounded to float32.

    Args:
        ranges: Calibrated tensor ranges.

    Returns:
        Tensor name -> ``float32(max(|min|, |max|) / 127)`` as a Python float.
    """
    return {
        name: float(np.float32(max(abs(low), abs(high)) / INT8_MAX)) for name, (low, high) in ranges.ranges.items()
    }


def scale_to_hex(scale: float) -> str:
    """Returns the cache encoding of a scale: 8 hex digits of its big-endian float32 bytes (``1.0`` -> ``3f800000``)."""
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    """Decodes :func:`scale_to_hex`'s encoding back to the float32 scale (as a Python float)."""
    return struct.unpack(">f", bytes.fromhex(text))[0]


def write_trt_cache(ranges: TensorRanges, path: str | os.PathLike[str], *, trt_version: str = "8600") -> None:
    """Writes a TensorRT calibration cache holding the scale of every tensor of ``ranges``, atomically.

    Args:
        ranges: Calibrated tensor ranges of one block graph.
        path: Destination file (its folder is created if missing); written through a temporary file in the same
            folder and ``os.replace``.
        trt_version: TensorRT version as digits, as it appears in the header (``"8600"`` for 8.6.0).

    Raises:
        LegoCompileError: If ``trt_version`` is not digits or a tensor name contains a line break.
    """
    if not re.fullmatch(r"\d+", str(trt_version)):
        raise LegoCompileError(
            f"TensorRT version for the calibration cache must be digits (e.g. 8600), got {trt_version!r}"
        )
    lines = [f"TRT-{trt_version}-{_HEADER_SUFFIX}"]
    for name, scale in trt_scales(ranges).items():
        if "\n" in name or "\r" in name:
            raise LegoCompileError(f"tensor name {name!r} contains a line break; it cannot go in a TensorRT cache")
        lines.append(f"{name}: {scale_to_hex(scale)}")
    destination = Path(path)
    try:
        data = ("\n".join(lines) + "\n").encode("ascii")
    except UnicodeEncodeError:
        raise LegoCompileError(f"a tensor name is not ASCII; it cannot go in a TensorRT cache ({destination})") from None
    atomic_write_bytes(destination, data)


def read_trt_cache(path: str | os.PathLike[str]) -> dict[str, float]:
    """Reads a TensorRT calibration cache.

    Args:
        path: The cache file.

    Returns:
        Tensor name -> scale (the exact float32 value written, as a Python float), in file order.

    Raises:
        LegoCompileError: If the file is missing or is not a TensorRT calibration cache.
    """
    source = Path(path)
    try:
        text = source.read_text(encoding="ascii")
    except FileNotFoundError:
        raise LegoCompileError(f"TensorRT calibration cache not found: {source}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LegoCompileError(f"cannot read TensorRT calibration cache {source}: {error}") from None
    lines = text.splitlines()
    if not lines or not _HEADER_RE.match(lines[0].strip()):
        raise LegoCompileError(
            f"{source} is not a TensorRT calibration cache (expected a 'TRT-<version>-<name>' header)"
        )
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, separator, hex_scale = line.rpartition(": ")
        if not separator or not name or not _HEX_RE.match(hex_scale.strip()):
            raise LegoCompileError(f"{source}:{number}: expected '<tensor name>: <8 hex digits>', got {line!r}")
        scales[name] = hex_to_scale(hex_scale.strip())
    return scales
