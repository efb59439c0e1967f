"""Write a bundle so that it is whole or absent, and never destroy anything legocompile did not write.

* ``out`` must be missing, an empty folder, or a legocompile bundle (a folder whose ``manifest.json`` parses with a
  ``schema_version`` key); anything else is refused with a one-line error.
* Files are copied into ``.NAME.<pid>.tmp`` next to ``out`` (hashing the bytes as they are written: those hashes
  become ``Manifest.files``), ``manifest.json`` is written last, and the folder is swapped into place:
  on Linux with one atomic ``renameat2(RENAME_EXCHANGE)`` (there is always a bundle at ``out``); elsewhere, or
  where the file system lacks it, with two renames (old bundle to ``.NAME.<pid>.old``, new one into place).
* A write killed between those two renames leaves no folder at ``out`` but the old bundle in ``.NAME.<pid>.old``:
  the next write *restores* it before doing anything else. Leftovers are deleted only when provably ours: the name
  is ``.NAME.<pid>.tmp|old``, no running process has that pid, and the folder is a bundle or carries the marker
  file that a partial copy starts with.
* Written files and folders get the usual umask-respecting modes (0666/0777 minus the umask).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

from legocompile._log import logger
from legocompile.bundle.manifest import SCHEMA_VERSION, Manifest
from legocompile.bundle.reader import MANIFEST, unsafe_reason
from legocompile.errors import LegoCompileError
from legocompile.workspace import atomic_write_json

PARTIAL_MARKER = ".legocompile-partial"  # first file of a staging folder, removed just before the swap
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------------------ recognition
def is_bundle_dir(path: Path) -> bool:
    """A real folder (not a symlink) whose ``manifest.json`` parses as a JSON object with ``schema_version``."""
    if path.is_symlink() or not path.is_dir():
        return False
    manifest = path / MANIFEST
    if manifest.is_symlink() or not manifest.is_file():
        return False
    try:
        doc = json.loads(manifest.read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(doc, dict) and "schema_version" in doc


def _is_partial(path: Path) -> bool:
    marker = path / PARTIAL_MARKER
    return not path.is_symlink() and path.is_dir() and not marker.is_symlink() and marker.is_file()


def _pid_running(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: write_bundle is not re-entered while it stages
    if os.name != "posix":
        return True  # no safe liveness probe: treat as in use, leave it alone
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # exists but not ours (EPERM)
    return True


def _leftovers(out: Path) -> list[tuple[Path, str]]:
    """``(path, "tmp"|"old")`` for each staging/old folder of ``out`` left by a writer that is no longer running."""
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(\d+)\.(tmp|old)")
    found = []
    for p in out.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m and not _pid_running(int(m.group(1))):
            found.append((p, m.group(2)))
    return found


def _remove_ours(path: Path) -> bool:
    """Delete ``path`` if it is a bundle or a marked staging folder; otherwise leave it (and say so)."""
    if is_bundle_dir(path) or _is_partial(path):
        shutil.rmtree(path, ignore_errors=True)
        return True
    if os.path.lexists(path):
        logger.warning("left %s alone: it is not a folder legocompile wrote", path)
    return False


def _recover(out: Path) -> None:
    """Restore an old bundle that a killed write left aside, then delete the provable leftovers."""
    leftovers = _leftovers(out)
    if not os.path.lexists(out):
        olds = [p for p, kind in leftovers if kind == "old" and is_bundle_dir(p)]
        if olds:
            newest = max(olds, key=lambda p: (p / MANIFEST).stat().st_mtime)
            os.replace(newest, out)
            logger.warning("restored %s from %s (a previous write was interrupted)", out, newest.name)
            leftovers = [(p, k) for p, k in leftovers if p != newest]
    for p, _ in leftovers:
        _remove_ours(p)


def check_target(out: str | os.PathLike) -> None:
    """Raise a one-line :class:`LegoCompileError` unless ``out`` is missing, an empty folder or a legocompile bundle
    (callers may check before a long build; :func:`write_bundle` checks again)."""
    out = Path(out).resolve()
    if not os.path.lexists(out):
        return
    if not out.is_dir():
        raise LegoCompileError(f"{out} exists and is not a folder; choose another output folder for the bundle")
    if any(out.iterdir()) and not is_bundle_dir(out):
        raise LegoCompileError(
            f"{out} is not empty and is not a legocompile bundle; refusing to replace it "
            "(choose a new or empty output folder: --out or [build].out)"
        )


# ------------------------------------------------------------------------------------------------------ copying
def _fsync_dir(path: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder
    finally:
        os.close(fd)


def _copy_hashing(src: Path, dst: Path) -> str:
    """Copy ``src`` to the new file ``dst`` (umask-respecting mode), returning the sha256 of the bytes written."""
    h = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    with open(src, "rb") as fin, os.fdopen(fd, "wb") as fout:
        while chunk := fin.read(_CHUNK):
            h.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------ swapping
_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        try:
            fn = ctypes.CDLL(None, use_errno=True).renameat2
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
            _renameat2 = fn
        except (AttributeError, OSError):
            _renameat2 = False
    if not _renameat2:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if _renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_into_place(tmp: Path, out: Path) -> None:
    """Put the finished bundle ``tmp`` at ``out``; the previous bundle (if any) is deleted afterwards."""
    if not os.path.lexists(out) or not any(out.iterdir()):
        os.replace(tmp, out)  # onto nothing or an empty folder: one rename (fails if it gained files meanwhile)
    elif _exchange(tmp, out):
        _remove_ours(tmp)  # tmp now holds the previous bundle
    else:
        old = out.parent / f".{out.name}.{os.getpid()}.old"
        os.replace(out, old)
        try:
            os.replace(tmp, out)  # killed just before this: the next write restores `old`
        except BaseException:
            try:
                os.replace(old, out)
            except OSError:
                pass  # the next write restores it
            raise
        _remove_ours(old)
    _fsync_dir(out.parent)


# ------------------------------------------------------------------------------------------------------ writing
def write_bundle(out: str | os.PathLike, manifest: Manifest, files: dict[str, Path]) -> Path:
    """Create the bundle at ``out`` from ``files`` (bundle-relative path -> source file) and ``manifest``.

    The written manifest is ``manifest`` with ``schema_version`` set to :data:`SCHEMA_VERSION` and ``files`` set to
    the sha256 of every file as copied. Every option's ``engine`` and ``onnx`` must be among ``files``, and each
    option's ``sha256`` must match its engine as copied (else the engine changed after it was profiled).
    Raises :class:`LegoCompileError` if ``out`` exists and is neither empty nor a legocompile bundle.
    """
    out = Path(out).resolve()
    if not out.name:
        raise LegoCompileError(f"cannot write a bundle at {out}; choose a folder")
    for rel in files:
        reason = unsafe_reason(rel)
        if reason or rel == MANIFEST or rel == PARTIAL_MARKER:
            raise LegoCompileError(f"cannot write {rel!r} into a bundle: {reason or 'reserved name'}")
    for b in manifest.blocks:
        for o in b.options:
            for rel in (o.engine, o.onnx):
                if rel not in files:
                    raise LegoCompileError(f"{b.name} {o.variant}/{o.precision}: {rel!r} is not among the bundle files")
    check_target(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _recover(out)
    check_target(out)  # a restored bundle is a bundle; re-check anyway
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    tmp.mkdir()
    try:
        (tmp / PARTIAL_MARKER).write_text("a partial legocompile bundle; safe to delete\n")
        digests = {rel: _copy_hashing(Path(files[rel]), tmp / rel) for rel in sorted(files)}
        for b in manifest.blocks:
            for o in b.options:
                if digests[o.engine] != o.sha256:
                    raise LegoCompileError(
                        f"{o.engine}: the engine file changed after it was profiled (sha256 differs); rebuild"
                    )
        final = dataclasses.replace(manifest, schema_version=SCHEMA_VERSION, files=digests)
        atomic_write_json(tmp / MANIFEST, final.to_json())
        (tmp / PARTIAL_MARKER).unlink()
        _fsync_dir(tmp)
        _swap_into_place(tmp, out)
    except BaseException:
        if os.path.lexists(tmp):
            _remove_ours(tmp)
        raise
    return out
