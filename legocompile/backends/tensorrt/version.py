"""TensorRT versions, and every decision that depends on one, as pure functions of a parsed version.

A version is a tuple of ints (``(10, 13, 0, 35)``), never a string: ``"10.13" < "8.6"`` as strings. Everything
version-dependent in this backend asks one of the functions below, so the support matrix lives in one place and
is unit-tested without TensorRT:

========================  ==========================  ===========================  ==========================
decision                  8.6                         10.x                         11.x
========================  ==========================  ===========================  ==========================
network typing            weak (builder flags)        strong (``STRONGLY_TYPED``)  strong, always (no flag)
``EXPLICIT_BATCH`` flag   required                    ignored: not passed          removed: not passed
fp16                      fp16 ONNX + ``FP16`` flag   fp16 ONNX                    fp16 ONNX
int8 (``qdq``, default)   QDQ ONNX + ``INT8`` flag    QDQ ONNX                     QDQ ONNX
int8 (``implicit``)       fp32 ONNX + ``INT8`` flag   same, weakly typed           refused: no calibrators,
                          + entropy calibrator that   network (deprecated          no ``BuilderFlag.INT8``
                          reads the cache             since 10.1)
engine scratch size       ``device_memory_size``      ``device_memory_size_v2``    ``device_memory_size_v2``
                                                      (10.1+)
context scratch memory    one per context             shared, ``USER_MANAGED``     shared, ``IRuntimeConfig``
                                                      (10.1+)
calibration cache header  ``TRT-8601-...``            ``TRT-101300-...``           (no calibration)
========================  ==========================  ===========================  ==========================

Execution is ``set_tensor_address`` + ``execute_async_v3`` everywhere (TensorRT 8.5 and later); older versions are
refused (:data:`MIN_SUPPORTED`). A major version newer than 11 is handled by the 11.x rules.

What the 10.13 type stubs cannot see about TensorRT 11.x
---------------------------------------------------------
mypy checks this backend against ``tensorrt-stubs`` 10.13, generated from the 10.13 bindings. TensorRT 11 removed
or changed names that still type-check there, so these are guarded by the version functions instead, and each
guarded attribute is only evaluated on a version that has it:

* ``BuilderFlag.FP16`` / ``INT8`` (and BF16, FP8, INT4, FP4, ``OBEY_``/``PREFER_PRECISION_CONSTRAINTS``,
  ``DIRECT_IO``) are removed: :func:`has_precision_builder_flags` is False from 11, so :func:`plan_build
  <legocompile.backends.tensorrt.build_plan.plan_build>` never names them and the builder never looks them up.
* ``IBuilderConfig.int8_calibrator``, ``IInt8EntropyCalibrator2`` and the other calibrators are removed:
  :func:`has_implicit_calibration` is False from 11; implicit calibration is refused with a one-line error before
  any TensorRT call, and the calibrator class is only defined (inside a factory) when a plan needs one.
* ``NetworkDefinitionCreationFlag.EXPLICIT_BATCH`` is removed, and ``STRONGLY_TYPED`` is deprecated and ignored
  (its enum value also changed, so flags are always built with ``1 << int(flag)`` from the enum, never from a
  hard-coded bit): :func:`network_creation_flags` passes no flag on 11.
* ``ICudaEngine.device_memory_size`` is removed (``device_memory_size_v2`` stays):
  :func:`device_memory_size_attribute`.
* ``Builder.platform_has_fast_fp16`` / ``platform_has_fast_int8`` are removed: never used here.
* JetPack does not ship TensorRT 11 (11.3 and 11.4 list it as unsupported): on Jetson this backend runs 10.x rules.

None of this has been run against a real TensorRT 11 (or 8.6, or 10.x): the rules come from NVIDIA's 10.x-to-11.x
migration guide and API references, and are checked here only as pure functions and by mypy against the 10.13
stubs.
"""

from __future__ import annotations

import re
from typing import Final

from legocompile.errors import LegoCompileError, MissingDependencyError

Version = tuple[int, ...]

MIN_SUPPORTED: Final[Version] = (8, 6)
NEWEST_KNOWN_MAJOR: Final = 11
INSTALL_EXTRA: Final = "tensorrt"

_COMPONENT = re.compile(r"(\d+)(.*)")


def parse_version(text: str) -> Version:
    """Parses a TensorRT version string into a tuple of ints, padded to at least (major, minor, patch).

    Numeric dot-separated components are kept up to the first one with a suffix, whose leading digits are kept too:
    ``"10.13.0.35"`` -> ``(10, 13, 0, 35)``; ``"8.6.1.post1"`` -> ``(8, 6, 1)``; ``"10.0.0b6"`` -> ``(10, 0, 0)``;
    ``"11.0"`` -> ``(11, 0, 0)``. Surrounding whitespace and a leading ``v`` are ignored.

    Raises:
        LegoCompileError: If the text does not start with a number.
    """
    cleaned = str(text).strip()
    if cleaned[:1] in ("v", "V"):
        cleaned = cleaned[1:]
    parts: list[int] = []
    for component in cleaned.split("."):
        match = _COMPONENT.fullmatch(component)
        if match is None:
            break
        parts.append(int(match.group(1)))
        if match.group(2):
            break
    if not parts:
        raise LegoCompileError(f"cannot read TensorRT version {text!r} (expected digits such as '10.13.0.35')")
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def version_string(version: Version) -> str:
    return ".".join(str(part) for part in version)


def release(version: Version) -> Version:
    """(major, minor, patch): what must match for a serialized engine to load (the build number may differ)."""
    return tuple((list(version) + [0, 0, 0])[:3])


def unsupported_reason(version: Version) -> str | None:
    """Why this backend refuses a TensorRT version, or None if it is supported."""
    if version[:2] < MIN_SUPPORTED:
        return (
            f"TensorRT {version_string(version)} is too old for legocompile's tensorrt backend (needs 8.6 or later: "
            "named I/O tensors, set_tensor_address and execute_async_v3); upgrade TensorRT"
        )
    return None


def check_supported(version: Version) -> None:
    reason = unsupported_reason(version)
    if reason is not None:
        raise LegoCompileError(reason)


def rules_major(version: Version) -> int:
    """The major version whose rules apply (a major newer than any known gets the newest known rules)."""
    return min(version[0], NEWEST_KNOWN_MAJOR)


def has_precision_builder_flags(version: Version) -> bool:
    """Whether ``BuilderFlag.FP16`` / ``BuilderFlag.INT8`` exist (removed in TensorRT 11)."""
    return rules_major(version) < 11


def has_implicit_calibration(version: Version) -> bool:
    """Whether ``IInt8EntropyCalibrator2`` and ``IBuilderConfig.int8_calibrator`` exist (deprecated 10.1, removed 11)."""
    return rules_major(version) < 11


def strong_typing_default(version: Version) -> bool:
    """Whether legocompile builds strongly typed networks by default (10 and later; always on from 11)."""
    return rules_major(version) >= 10


def strong_typing_only(version: Version) -> bool:
    """Whether strong typing is the only mode (TensorRT 11 removed weakly typed networks)."""
    return rules_major(version) >= 11


def network_creation_flags(version: Version, *, strongly_typed: bool) -> tuple[str, ...]:
    """Names of the ``NetworkDefinitionCreationFlag`` members to pass to ``create_network``.

    8.6 needs ``EXPLICIT_BATCH`` (implicit batch is deprecated there and the ONNX parser requires explicit batch).
    10.x ignores ``EXPLICIT_BATCH`` (networks are always explicit batch), so it is not passed; a strongly typed
    network needs ``STRONGLY_TYPED``. 11.x removed ``EXPLICIT_BATCH`` and ignores ``STRONGLY_TYPED`` (strong typing
    is unconditional), so nothing is passed.
    """
    major = rules_major(version)
    if major < 10:
        if strongly_typed:
            raise LegoCompileError("legocompile builds strongly typed networks on TensorRT 10 and later only")
        return ("EXPLICIT_BATCH",)
    if major < 11:
        return ("STRONGLY_TYPED",) if strongly_typed else ()
    if not strongly_typed:
        raise LegoCompileError("TensorRT 11 has no weakly typed networks")
    return ()


def has_execute_async_v3(version: Version) -> bool:
    """``execute_async_v3`` + ``set_tensor_address`` exist from TensorRT 8.5."""
    return version[:2] >= (8, 5)


def device_memory_size_attribute(version: Version) -> str:
    """The ``ICudaEngine`` attribute giving an execution context's scratch size (``_v2`` from 10.1; the other is gone in 11)."""
    return "device_memory_size_v2" if version[:2] >= (10, 1) else "device_memory_size"


def user_managed_scratch(version: Version) -> bool:
    """Whether contexts can be created with ``USER_MANAGED`` scratch and ``set_device_memory(ptr, size)`` (10.1+).

    Then every engine of a chain (they run one after another on one stream) shares one scratch allocation of the
    largest size, instead of one per context.
    """
    return version[:2] >= (10, 1)


def context_creation(version: Version, *, shared_scratch: bool) -> str:
    """How to create an execution context: ``"static"`` (TensorRT allocates its scratch), ``"strategy"``
    (``create_execution_context(ExecutionContextAllocationStrategy.USER_MANAGED)``, 10.1 to 10.x) or
    ``"runtime_config"`` (an ``IRuntimeConfig`` set to ``USER_MANAGED``, 11 and later, where that is the documented
    route and the strategy overload may be gone)."""
    if not shared_scratch or not user_managed_scratch(version):
        return "static"
    return "runtime_config" if rules_major(version) >= 11 else "strategy"


def calibration_cache_version(version: Version) -> str:
    """The version digits TensorRT writes in (and expects from) a calibration cache header.

    TensorRT 8.x: ``major*1000 + minor*100 + patch`` (8.6.1 -> ``8601``). TensorRT 10.x: ``major*10000 +
    minor*100 + patch`` (10.13.0 -> ``101300``), as ``NV_TENSORRT_VERSION`` changed encoding in 10.

    Raises:
        LegoCompileError: On TensorRT 11 and later, which has no calibration caches.
    """
    major, minor, patch = release(version)
    if not has_implicit_calibration(version):
        raise LegoCompileError(
            f"TensorRT {version_string(version)} has no int8 calibrators, hence no calibration cache; "
            "use calibration='qdq' (an int8 QDQ ONNX)"
        )
    if major < 10:
        return str(major * 1000 + minor * 100 + patch)
    return str(major * 10000 + minor * 100 + patch)


def installed_version() -> Version:
    """The version of the TensorRT Python package that imports here.

    Raises:
        MissingDependencyError: If TensorRT does not import, or only its type stubs are installed (``tensorrt-stubs``
            installs a ``tensorrt`` folder holding ``__init__.pyi`` only, which imports as an empty namespace
            package).
    """
    ensure_tensorrt()
    import tensorrt as trt

    return parse_version(trt.__version__)


def ensure_tensorrt() -> None:
    """Raises MissingDependencyError unless a real TensorRT Python package imports."""
    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError("tensorrt", "the tensorrt backend", extra=INSTALL_EXTRA) from None
    except OSError as error:  # the Python package is there but its libraries (libnvinfer) do not load
        raise MissingDependencyError(
            "tensorrt", f"the tensorrt backend (its libraries do not load: {error})", extra=INSTALL_EXTRA
        ) from None
    if not isinstance(getattr(trt, "__version__", None), str) or not hasattr(trt, "Builder"):
        raise MissingDependencyError(
            "tensorrt", "the tensorrt backend (only type stubs or an empty 'tensorrt' package import here)",
            extra=INSTALL_EXTRA,
        )
