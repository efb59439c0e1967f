"""Pipeline stages with declared inputs: a stage's cache key is derived from exactly what it declares.

A :class:`Stage` names its inputs (upstream artefacts' digests, the settings it reads), the tools whose versions
change its output, and a format number. :meth:`Stage.key` refuses a call that leaves out a declared input or passes
an undeclared one, so a key can't silently miss something: adding an input to a stage means adding it to the
declaration, in one place. ``legocompile``'s own version is an input of every stage.

Values are digested by :func:`digest`: arrays by dtype, shape and bytes; lists, tuples and dicts recursively; other
values through their JSON form (``repr`` for objects JSON doesn't know, e.g. frozen settings dataclasses).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

_TOOLS: dict[str, str] = {}


def tool_version(name: str) -> str:
    """The installed version of ``legocompile``, ``torch``, ``onnx`` or ``onnxruntime`` (cached per process)."""
    if name not in _TOOLS:
        if name == "legocompile":
            from legocompile import __version__ as version
        else:
            from importlib.metadata import PackageNotFoundError, version as dist_version

            try:
                version = dist_version(name)
            except PackageNotFoundError:
                version = "absent"
        _TOOLS[name] = version
    return _TOOLS[name]


def digest(value: Any) -> str:
    """A stable hex digest of a value (arrays, bytes, nested lists/tuples/dicts, JSON-able scalars)."""
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()[:24]


def _feed(h, value: Any) -> None:
    if isinstance(value, np.ndarray):
        arr = np.ascontiguousarray(value)
        h.update(f"ndarray:{arr.dtype}:{arr.shape}:".encode())
        h.update(arr.tobytes())
    elif isinstance(value, (bytes, bytearray)):
        h.update(b"bytes:%d:" % len(value))
        h.update(value)
    elif isinstance(value, (list, tuple)):
        h.update(b"seq:%d:" % len(value))
        for item in value:
            _feed(h, item)
    elif isinstance(value, dict):
        h.update(b"map:%d:" % len(value))
        for k in sorted(value, key=str):
            _feed(h, str(k))
            _feed(h, value[k])
    else:
        h.update(b"json:")
        h.update(json.dumps(value, sort_keys=True, default=repr).encode())
    h.update(b"\x00")


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: the work-dir folder it writes, and what its artefacts depend on.

    Attributes:
        name: the work directory's subfolder and the :class:`~legocompile.pipeline.BuildReport` counter.
        inputs: the names :meth:`key` must be given, no more and no fewer.
        tools: packages whose versions change the artefact (``legocompile`` is always included).
        format: bump when the artefact's format or meaning changes, so old caches are not reused.
    """

    name: str
    inputs: tuple[str, ...]
    tools: tuple[str, ...] = ()
    format: int = 1

    def key(self, **values: Any) -> str:
        """The artefact's key: a digest of the stage, its tools' versions and every declared input."""
        missing = [n for n in self.inputs if n not in values]
        extra = sorted(set(values) - set(self.inputs))
        if missing or extra:
            raise TypeError(f"stage {self.name!r}: missing inputs {missing}, undeclared inputs {extra}")
        tools = {t: tool_version(t) for t in ("legocompile", *self.tools)}
        return digest([self.name, self.format, tools, [(n, values[n]) for n in self.inputs]])
