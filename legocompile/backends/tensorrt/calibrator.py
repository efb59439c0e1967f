"""Implicit int8 calibration from a block's calibration cache (TensorRT 8.6 and 10.x only).

legocompile never feeds TensorRT calibration data: the block's ranges are computed once, on the block's own inputs
(:mod:`calibration.ranges`), and written as a TensorRT calibration cache (:mod:`calibration.trt_cache`). The
calibrator hands TensorRT that cache from ``read_calibration_cache``, so TensorRT takes the scales from it and
never asks for a batch. If TensorRT rejects the cache it asks for batches, gets none, and the build fails;
:class:`CacheCalibratorCore` records that so the error can say why.

The calibrator must subclass a TensorRT class, so it is defined inside :func:`make_entropy_calibrator`, on first
use; everything else here is TensorRT-free and unit-tested. TensorRT 11 removed calibrators: plans for it never
ask for one (:func:`legocompile.backends.tensorrt.build_plan.plan_build`).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from legocompile.backends.tensorrt import version as v
from legocompile.errors import LegoCompileError

if TYPE_CHECKING:
    import tensorrt as trt
    from typing_extensions import Buffer

ALGORITHM = "EntropyCalibration2"
_HEADER = re.compile(r"TRT-(\d+)-(\w+)")


def cache_header_error(cache: bytes, expected_version: str, source: str = "calibration cache") -> str | None:
    """Why TensorRT with header digits ``expected_version`` would not use this cache, or None if it would.

    TensorRT ignores a cache whose first line is not ``TRT-<its version digits>-EntropyCalibration2`` and then tries
    to calibrate with data, which legocompile never provides.
    """
    first = cache.split(b"\n", 1)[0].decode("ascii", "replace").strip()
    match = _HEADER.fullmatch(first)
    if match is None:
        return f"{source} is not a TensorRT calibration cache (first line {first[:60]!r}, expected 'TRT-<version>-{ALGORITHM}')"
    digits, algorithm = match.groups()
    if algorithm != ALGORITHM:
        return f"{source} was written for the {algorithm} calibrator; legocompile's TensorRT calibrator is {ALGORITHM}"
    if digits != expected_version:
        return (
            f"{source} was written for TensorRT version digits {digits}, but this TensorRT expects {expected_version} "
            f"and would ignore it; rewrite it with calibration.trt_cache.write_trt_cache(ranges, path, "
            f"trt_version='{expected_version}')"
        )
    return None


def cache_from_ranges(ranges: Any, version: v.Version) -> bytes:
    """The calibration cache for ``ranges`` (a :class:`calibration.ranges.TensorRanges`) for TensorRT ``version``.

    Written by :func:`calibration.trt_cache.write_trt_cache`, so the format is the one tested there.
    """
    from calibration.trt_cache import write_trt_cache

    with tempfile.TemporaryDirectory(prefix="legocompile-trt-cache-") as tmp:
        path = Path(tmp) / "calibration.cache"
        write_trt_cache(ranges, path, trt_version=v.calibration_cache_version(version))
        return path.read_bytes()


class CacheCalibratorCore:
    """The TensorRT-free half of the calibrator: serves one cache, never data.

    Args:
        cache: The calibration cache bytes.
        expected_version: The header digits the running TensorRT expects
            (:func:`legocompile.backends.tensorrt.version.calibration_cache_version`).
        source: Where the cache came from, for messages.

    Raises:
        LegoCompileError: If TensorRT would not use the cache (:func:`cache_header_error`) or it does not parse.
    """

    def __init__(self, cache: bytes, expected_version: str, source: str = "calibration cache") -> None:
        error = cache_header_error(cache, expected_version, source)
        if error is not None:
            raise LegoCompileError(error)
        self.source = source
        self.scales = _parse_scales(cache, source)
        self._cache = bytes(cache)
        self.written: bytes | None = None
        self.batches_requested = 0

    @classmethod
    def from_file(cls, path: str | Path, expected_version: str) -> CacheCalibratorCore:
        source = Path(path)
        try:
            return cls(source.read_bytes(), expected_version, str(source))
        except FileNotFoundError:
            raise LegoCompileError(f"TensorRT calibration cache not found: {source}") from None

    def get_batch_size(self) -> int:
        return 1

    def get_batch(self, names: list[str]) -> list[int]:
        """No data: an empty list tells TensorRT calibration data has run out. Only called if it rejected the cache."""
        self.batches_requested += 1
        return []

    def read_calibration_cache(self) -> bytes:
        return self._cache

    def write_calibration_cache(self, cache: bytes) -> None:
        self.written = bytes(cache)

    def rejection_message(self) -> str | None:
        """Set once TensorRT asked for data, i.e. did not accept the cache."""
        if self.batches_requested == 0:
            return None
        return (
            f"TensorRT did not accept the calibration cache {self.source} and asked for calibration data, which "
            "legocompile does not provide; build with calibration='qdq' or regenerate the cache for this TensorRT"
        )


def _parse_scales(cache: bytes, source: str) -> dict[str, float]:
    """Tensor name -> scale, through :func:`calibration.trt_cache.read_trt_cache` (the format's one reader)."""
    from calibration.trt_cache import read_trt_cache

    with tempfile.TemporaryDirectory(prefix="legocompile-trt-cache-") as tmp:
        path = Path(tmp) / "calibration.cache"
        path.write_bytes(cache)
        try:
            return read_trt_cache(path)
        except LegoCompileError as error:
            raise LegoCompileError(str(error).replace(str(path), source)) from None


def make_entropy_calibrator(core: CacheCalibratorCore) -> trt.IInt8EntropyCalibrator2:
    """A TensorRT ``IInt8EntropyCalibrator2`` serving ``core``'s cache (TensorRT 8.6 / 10.x; removed in 11)."""
    v.ensure_tensorrt()
    import tensorrt as trt

    class _CacheCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self, core: CacheCalibratorCore) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)  # pybind11 needs the base initialised explicitly
            self.core = core

        def get_batch_size(self) -> int:
            return self.core.get_batch_size()

        def get_batch(self, names: list[str]) -> list[int]:
            return self.core.get_batch(names)

        def read_calibration_cache(self) -> bytes:
            return self.core.read_calibration_cache()

        def write_calibration_cache(self, cache: Buffer) -> None:
            self.core.write_calibration_cache(bytes(cache))

    return _CacheCalibrator(core)
