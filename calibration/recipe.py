"""Which int8 format a QDQ engine uses, chosen from what the CPU that runs it can do.

ONNX Runtime's x86 int8 convolution and GEMM kernels multiply uint8 activations by int8 weights ("u8s8"). Without
VNNI they do it with ``VPMADDUBSW``, which adds two u8×s8 products into a *saturating* int16: large activations
against large weights clip. ORT documents this and suggests U8U8 or ``reduce_range`` (7-bit weights) on such CPUs.
CPUs with AVX-512 VNNI, AVX-VNNI or AMX accumulate in int32 and do not saturate; ARM's kernels widen first.

Measured on an AMD EPYC (AVX2, no VNNI), relative L2 error against the fp32 block on held-out inputs:

* the tests' tiny ResNet, first block (stem + first residual block): u8s8 34.5%, u8s8 with reduce_range 1.6%,
  u8u8 1.4%, s8s8 62%; its other blocks 1.4-2.1% with either fix;
* the built-in example's 24 block variants (``benchmarks/bench_int8.py``): u8s8 is 20-22% off on the first block
  (stem + first residual block) and 0.9-1.7% elsewhere; u8u8 is at most 1.67% off, reduce_range at most 1.75%.
  Single-threaded, the 16 engines of the s0 and s0.4 variants took 4.05 ms in total with reduce_range, 4.11 ms
  with u8s8, 5.34 ms with u8u8 and 7.29 ms in fp32: reduce_range keeps u8s8's fast ``VPMADDUBSW`` kernel (7-bit
  weights cannot saturate it), while u8u8 falls back to a slower one.

So :func:`choose_recipe` keeps u8s8 where it is exact and fast, and picks reduce_range on x86 without VNNI. The
recipe is recorded in the manifest and is an input of every int8 engine's cache key. ``[build] int8_format`` forces
one (``auto`` is the default), which is how the tests exercise every path on any machine.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass
from pathlib import Path

from legocompile.errors import LegoCompileError


@dataclass(frozen=True, kw_only=True)
class Int8Recipe:
    """How ORT's quantizer writes a block's QDQ graph.

    Attributes:
        name: ``u8s8``, ``u8u8`` or ``u8s8-reduce-range``.
        activation: ``uint8`` (asymmetric; the type ORT's x86 kernels take for activations).
        weight: ``int8`` (symmetric) or ``uint8`` (asymmetric).
        reduce_range: 7-bit weights, which keeps ``VPMADDUBSW``'s pair sums below int16's limit.
        per_channel: per-output-channel weight scales.
        quantize_bias: int32 biases behind a DequantizeLinear (ORT's kernels); False keeps them float (TensorRT
            folds float biases itself and does not dequantize int32 ones).
    """

    name: str
    activation: str = "uint8"
    weight: str = "int8"
    reduce_range: bool = False
    per_channel: bool = True
    quantize_bias: bool = True

    def to_json(self) -> dict:
        return asdict(self)


RECIPES: dict[str, Int8Recipe] = {
    "u8s8": Int8Recipe(name="u8s8"),
    "u8u8": Int8Recipe(name="u8u8", weight="uint8"),
    "u8s8-reduce-range": Int8Recipe(name="u8s8-reduce-range", reduce_range=True),
}
FORMATS = ("auto", *RECIPES)
# TensorRT's explicit int8 is symmetric signed int8 with float biases; one QDQ writer serves both backends.
TENSORRT_RECIPE = Int8Recipe(name="s8s8-symmetric", activation="int8", weight="int8", quantize_bias=False)
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8", "avx_vnni_int8"})
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})

# Chosen by measurement on the built-in example (AMD EPYC, AVX2; see the module docstring): as accurate as u8u8
# within 0.1-0.2 points, and as fast as u8s8.
DEFAULT_WITHOUT_VNNI = "u8s8-reduce-range"


def choose_recipe(requested: str, *, machine: str, cpu_flags: frozenset[str]) -> tuple[Int8Recipe, str]:
    """The recipe for ``requested`` (a name from :data:`FORMATS`) on a CPU, and the reason, in words.

    Args:
        requested: ``auto`` picks from the CPU; any other name forces that recipe.
        machine: ``platform.machine()`` of the CPU that runs the engines.
        cpu_flags: its feature flags (as in ``/proc/cpuinfo``).
    """
    if requested not in FORMATS:
        raise LegoCompileError(f"unknown int8 format {requested!r}; choose from {', '.join(FORMATS)}")
    if requested != "auto":
        return RECIPES[requested], f"{requested} requested"
    if machine.lower() not in X86_MACHINES:
        return RECIPES["u8s8"], f"u8s8: {machine} kernels do not saturate"
    vnni = sorted(VNNI_FLAGS & cpu_flags)
    if vnni:
        return RECIPES["u8s8"], f"u8s8: the CPU has {vnni[0]} (int32 accumulation, no saturation)"
    return (RECIPES[DEFAULT_WITHOUT_VNNI],
            f"{DEFAULT_WITHOUT_VNNI}: x86 without VNNI, where u8s8 saturates (VPMADDUBSW's int16 pair sums)")


def host_cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """This machine's CPU feature flags (empty where ``/proc/cpuinfo`` does not exist)."""
    try:
        for line in cpuinfo.read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def host_recipe(requested: str = "auto") -> tuple[Int8Recipe, str]:
    """:func:`choose_recipe` for the CPU this process runs on."""
    return choose_recipe(requested, machine=platform.machine(), cpu_flags=host_cpu_flags())
