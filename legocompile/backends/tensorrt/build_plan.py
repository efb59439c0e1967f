"""What to build for (TensorRT version, precision, calibration): a frozen plan from a pure function.

:func:`plan_build` decides everything version-dependent about a build before TensorRT is touched: which of the
three ONNX files to parse, the network-creation flags, the builder flags, and whether an int8 calibrator is needed.
:mod:`legocompile.backends.tensorrt.builder` only carries a plan out. Flags are named by their enum member names
so that a plan is a plain, comparable, JSON-able value; the builder turns each name into the enum member with an
explicit (type-checked) lookup, only for the names a plan contains.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final, Literal

from legocompile.backends.tensorrt import version as v
from legocompile.errors import LegoCompileError

PRECISIONS: Final = ("fp32", "fp16", "int8")
CALIBRATIONS: Final = ("qdq", "implicit")

OnnxKind = Literal["fp32", "fp16", "int8-qdq"]


@dataclass(frozen=True)
class BuildPlan:
    """How one engine is built on one TensorRT version.

    Attributes:
        tensorrt_version: The parsed TensorRT version the plan is for.
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        calibration: ``"qdq"`` or ``"implicit"`` for int8, None otherwise.
        onnx: Which prepared ONNX the parser reads: ``"fp32"`` (the exported block), ``"fp16"`` (fp16-typed graph
            with fp32 inputs/outputs) or ``"int8-qdq"`` (symmetric int8 Q/DQ graph with fp32 inputs/outputs).
        strongly_typed: Whether the network is strongly typed (tensor types come from the ONNX).
        network_flags: ``NetworkDefinitionCreationFlag`` member names passed to ``create_network``.
        builder_flags: ``BuilderFlag`` member names set on the builder config.
        needs_calibrator: Whether an ``IInt8EntropyCalibrator2`` reading a calibration cache is attached.
        calibration_cache_version: The header digits that cache must carry (implicit calibration only).
    """

    tensorrt_version: v.Version
    precision: str
    calibration: str | None
    onnx: OnnxKind
    strongly_typed: bool
    network_flags: tuple[str, ...]
    builder_flags: tuple[str, ...]
    needs_calibrator: bool
    calibration_cache_version: str | None = None

    def summary(self) -> dict[str, Any]:
        """The plan as JSON-able data (recorded in every engine file's header)."""
        data = asdict(self)
        data["tensorrt_version"] = v.version_string(self.tensorrt_version)
        data["network_flags"] = list(self.network_flags)
        data["builder_flags"] = list(self.builder_flags)
        return data


def plan_build(version: v.Version, precision: str, calibration: str = "qdq") -> BuildPlan:
    """Decides how to build a ``precision`` engine on TensorRT ``version``.

    Args:
        version: Parsed TensorRT version (:func:`legocompile.backends.tensorrt.version.parse_version`).
        precision: ``"fp32"``, ``"fp16"`` or ``"int8"``.
        calibration: For int8: ``"qdq"`` (default; the int8 QDQ ONNX, explicit quantization, every version) or
            ``"implicit"`` (the fp32 ONNX plus TensorRT's entropy calibrator reading the block's calibration cache;
            TensorRT 8.6 and 10.x only). Ignored for fp32 and fp16.

    Raises:
        LegoCompileError: One line saying why, for an unsupported version, an unknown precision or calibration, or
            implicit calibration on TensorRT 11 and later.
    """
    v.check_supported(version)
    if precision not in PRECISIONS:
        raise LegoCompileError(f"tensorrt backend: unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if calibration not in CALIBRATIONS:
        raise LegoCompileError(
            f"tensorrt backend: unknown int8 calibration {calibration!r}; choose one of {', '.join(CALIBRATIONS)}"
        )
    weak_flags = v.has_precision_builder_flags(version) and not v.strong_typing_default(version)

    if precision == "int8" and calibration == "implicit":
        if not v.has_implicit_calibration(version):
            raise LegoCompileError(
                f"TensorRT {v.version_string(version)} removed implicit int8 calibration (IInt8Calibrator and "
                "BuilderFlag.INT8); use calibration='qdq', which builds int8 engines from the block's int8 QDQ ONNX"
            )
        # A calibrator needs BuilderFlag.INT8, which a strongly typed network refuses: weak typing, on every version.
        return BuildPlan(
            tensorrt_version=version,
            precision=precision,
            calibration=calibration,
            onnx="fp32",
            strongly_typed=False,
            network_flags=v.network_creation_flags(version, strongly_typed=False),
            builder_flags=("INT8",),
            needs_calibrator=True,
            calibration_cache_version=v.calibration_cache_version(version),
        )

    onnx: OnnxKind = "fp32" if precision == "fp32" else "fp16" if precision == "fp16" else "int8-qdq"
    builder_flags: tuple[str, ...] = ()
    if weak_flags and precision == "fp16":
        builder_flags = ("FP16",)  # 8.6: types in the ONNX are hints; the flag lets TensorRT pick fp16 kernels
    elif weak_flags and precision == "int8":
        builder_flags = ("INT8",)  # 8.6: explicit quantization (Q/DQ) still needs the INT8 flag
    strongly_typed = v.strong_typing_default(version)
    return BuildPlan(
        tensorrt_version=version,
        precision=precision,
        calibration=calibration if precision == "int8" else None,
        onnx=onnx,
        strongly_typed=strongly_typed,
        network_flags=v.network_creation_flags(version, strongly_typed=strongly_typed),
        builder_flags=builder_flags,
        needs_calibrator=False,
    )
