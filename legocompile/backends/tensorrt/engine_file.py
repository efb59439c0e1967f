"""The ``.engine`` file: a small compatibility header in front of TensorRT's serialized plan.

A serialized TensorRT engine loads only on the TensorRT release and the GPU it was built for, and TensorRT's own
refusal (or, across GPUs of one compute capability, silent acceptance with another device's tactics and
profiles) says nothing about how to fix it. So every engine file says where it was built::

    b"LEGOTRT\\0"                       8 bytes, magic
    header length                       4 bytes, unsigned little-endian
    header                              UTF-8 JSON object (sorted keys)
    plan                                TensorRT's serialized engine, to the end of the file

The header holds ``engine_header_version`` (:data:`ENGINE_HEADER_VERSION`), ``tensorrt_version``, ``gpu_name``,
``compute_capability``, the plan's length and sha256, the legocompile version and the build plan. Reading checks
the framing and the checksum; :func:`compatibility_error` (pure) compares a header with the local device and
returns the one-line reason an engine cannot be used here, which says how to rebuild it.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from legocompile.backends.tensorrt import version as v
from legocompile.errors import LegoCompileError

MAGIC: Final = b"LEGOTRT\x00"
ENGINE_HEADER_VERSION: Final = 1
_LENGTH = struct.Struct("<I")
_MAX_HEADER_BYTES: Final = 1 << 20
REBUILD_HINT: Final = "rebuild it on this device with `legocompile build --backend tensorrt`"


@dataclass(frozen=True)
class DeviceFacts:
    """What an engine is tied to: the TensorRT release and the GPU."""

    tensorrt_version: v.Version
    gpu_name: str
    compute_capability: tuple[int, int]

    def describe(self) -> str:
        major, minor = self.compute_capability
        return f"TensorRT {v.version_string(self.tensorrt_version)} on {self.gpu_name} (compute capability {major}.{minor})"


@dataclass(frozen=True)
class EngineHeader:
    """The compatibility header of one engine file."""

    device: DeviceFacts
    plan_bytes: int
    plan_sha256: str
    precision: str
    build: dict[str, Any] = field(default_factory=dict)
    legocompile_version: str = ""
    engine_header_version: int = ENGINE_HEADER_VERSION

    def to_json(self) -> dict[str, Any]:
        return {
            "engine_header_version": self.engine_header_version,
            "tensorrt_version": v.version_string(self.device.tensorrt_version),
            "gpu_name": self.device.gpu_name,
            "compute_capability": f"{self.device.compute_capability[0]}.{self.device.compute_capability[1]}",
            "plan_bytes": self.plan_bytes,
            "plan_sha256": self.plan_sha256,
            "precision": self.precision,
            "build": self.build,
            "legocompile_version": self.legocompile_version,
        }

    @classmethod
    def from_json(cls, data: Any, source: str) -> EngineHeader:
        if not isinstance(data, dict):
            raise LegoCompileError(f"{source}: engine header is not a JSON object; {REBUILD_HINT}")
        try:
            header_version = int(data["engine_header_version"])
            if header_version > ENGINE_HEADER_VERSION:
                raise LegoCompileError(
                    f"{source}: engine header version {header_version} is newer than this legocompile reads "
                    f"({ENGINE_HEADER_VERSION}); upgrade legocompile or {REBUILD_HINT}"
                )
            cc_major, cc_minor = (int(part) for part in str(data["compute_capability"]).split("."))
            device = DeviceFacts(
                tensorrt_version=v.parse_version(str(data["tensorrt_version"])),
                gpu_name=str(data["gpu_name"]),
                compute_capability=(cc_major, cc_minor),
            )
            return cls(
                device=device,
                plan_bytes=int(data["plan_bytes"]),
                plan_sha256=str(data["plan_sha256"]),
                precision=str(data["precision"]),
                build=dict(data.get("build") or {}),
                legocompile_version=str(data.get("legocompile_version", "")),
                engine_header_version=header_version,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise LegoCompileError(f"{source}: malformed engine header ({error}); {REBUILD_HINT}") from None


def make_header(plan: bytes, device: DeviceFacts, precision: str, build: dict[str, Any] | None = None) -> EngineHeader:
    from legocompile import __version__

    return EngineHeader(
        device=device,
        plan_bytes=len(plan),
        plan_sha256=hashlib.sha256(plan).hexdigest(),
        precision=precision,
        build=dict(build or {}),
        legocompile_version=__version__,
    )


def pack(header: EngineHeader, plan: bytes) -> bytes:
    """The engine file's bytes: magic, header length, header JSON, plan."""
    if header.plan_bytes != len(plan) or header.plan_sha256 != hashlib.sha256(plan).hexdigest():
        raise ValueError("engine header does not describe this plan")
    body = json.dumps(header.to_json(), sort_keys=True, separators=(",", ":")).encode("utf-8")
    return MAGIC + _LENGTH.pack(len(body)) + body + plan


def unpack(data: bytes, source: str = "engine") -> tuple[EngineHeader, bytes]:
    """Splits an engine file's bytes into its header and the TensorRT plan, checking framing and checksum.

    Raises:
        LegoCompileError: If the bytes are not a legocompile TensorRT engine, are truncated, or the plan's sha256
            does not match its header.
    """
    view = memoryview(data)
    if bytes(view[: len(MAGIC)]) != MAGIC:
        raise LegoCompileError(
            f"{source} is not a legocompile TensorRT engine (no '{MAGIC[:-1].decode()}' header); {REBUILD_HINT}"
        )
    start = len(MAGIC) + _LENGTH.size
    if len(view) < start:
        raise LegoCompileError(f"{source}: truncated engine file; {REBUILD_HINT}")
    (length,) = _LENGTH.unpack(view[len(MAGIC) : start])
    if length > _MAX_HEADER_BYTES or len(view) < start + length:
        raise LegoCompileError(f"{source}: truncated or corrupt engine header; {REBUILD_HINT}")
    try:
        raw = json.loads(bytes(view[start : start + length]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise LegoCompileError(f"{source}: unreadable engine header ({error}); {REBUILD_HINT}") from None
    header = EngineHeader.from_json(raw, source)
    plan = bytes(view[start + length :])
    if len(plan) != header.plan_bytes or hashlib.sha256(plan).hexdigest() != header.plan_sha256:
        raise LegoCompileError(
            f"{source}: the TensorRT plan does not match its header (truncated or modified file); {REBUILD_HINT}"
        )
    return header, plan


def read_header(path: str | Path) -> EngineHeader:
    """The header of an engine file (reads the whole file: the plan's checksum is verified too)."""
    source = Path(path)
    try:
        data = source.read_bytes()
    except FileNotFoundError:
        raise LegoCompileError(f"engine file not found: {source}") from None
    return unpack(data, str(source))[0]


def compatibility_error(header: EngineHeader, local: DeviceFacts, source: str = "engine") -> str | None:
    """The one-line reason an engine built as ``header`` says cannot run on ``local``, or None if it can.

    Refused: another TensorRT release (major.minor.patch; TensorRT rejects the plan), another compute capability
    (the kernels do not run), or another GPU model (the plan may load, but its tactics, and the latency and memory
    profiles in the bundle, were measured on the other GPU).
    """
    built = header.device
    mismatches: list[str] = []
    if v.release(built.tensorrt_version) != v.release(local.tensorrt_version):
        mismatches.append("TensorRT release")
    if built.compute_capability != local.compute_capability:
        mismatches.append("compute capability")
    if built.gpu_name.strip() != local.gpu_name.strip():
        mismatches.append("GPU")
    if not mismatches:
        return None
    return (
        f"{source} was built for {built.describe()}, but this device has {local.describe()} "
        f"(different {' and '.join(mismatches)}); TensorRT engines run only where they were built: {REBUILD_HINT}"
    )
