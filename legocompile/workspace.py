"""Content-keyed work directory and atomic file writes.

Every stage writes its artefacts under ``<work>/<stage>/<key>.<ext>``, where ``key`` hashes everything the artefact
depends on (input bytes, options, tool versions). A rebuild with nothing changed finds every key present and builds
nothing; an interrupted build leaves only whole files, because every write goes to a temporary file that is renamed
into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Any, Callable

import numpy as np


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def content_key(*parts: Any) -> str:
    """A short stable hash of JSON-able parts, numpy arrays and bytes (order matters)."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            arr = np.ascontiguousarray(part)
            h.update(f"ndarray:{arr.dtype}:{arr.shape}".encode())
            h.update(arr.tobytes())
        elif isinstance(part, (bytes, bytearray)):
            h.update(b"bytes:")
            h.update(part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:24]


def _temp_file(directory: Path, prefix: str, suffix: str) -> tuple[int, Path]:
    """Create a new empty file in ``directory`` for writing, like ``tempfile.mkstemp`` but with the mode an ordinary
    file gets (0666 minus the umask), not 0600: artefacts are meant to be read by whoever may read the folder."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        path = directory / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {directory}")


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part.

    The file gets the mode any new file gets (0666 minus the umask)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_file(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def atomic_produce(path: str | os.PathLike, produce: Callable[[Path], None]) -> Path:
    """Have ``produce(tmp_path)`` write a file, then rename it to ``path`` (for writers that want a path).

    ``tmp_path`` exists (empty, mode 0666 minus the umask) when ``produce`` is called."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _temp_file(path.parent, f".{path.stem}.", path.suffix)
    os.close(fd)
    try:
        produce(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class Workspace:
    """The build's work directory: one folder per stage, files named by content key."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def path(self, stage: str, key: str, suffix: str) -> Path:
        return self.root / stage / f"{key}{suffix}"

    def cached_json(self, stage: str, key: str, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """Return (value, was_cached): the stored JSON for ``key`` or ``compute()``, stored atomically."""
        path = self.path(stage, key, ".json")
        if path.exists():
            try:
                return json.loads(path.read_text()), True
            except json.JSONDecodeError:
                pass  # a foreign or damaged file: recompute and replace it
        value = compute()
        atomic_write_json(path, value)
        return value, False
