"""Read and verify a bundle. A bundle is data: reading one never imports or runs anything named in it.

Checks, in order (the first failure is what :func:`read_bundle` raises, one line):

1. ``manifest.json`` exists, is a JSON object, has the schema version this legocompile reads, and matches the
   schema (types; missing and unknown keys).
2. Every path in the manifest (``files`` and each option's ``engine`` and ``onnx``) is a safe bundle-relative
   path: no absolute path, no ``..``, no backslash or drive letter, no empty or ``.`` component, no control
   character, and resolving it (symlinks included) stays inside the bundle folder.
3. Every option's engine and ONNX are listed in ``files``, and the option's ``sha256`` equals the listed one.
4. With ``verify`` (the default): every file in ``files`` is a regular file whose sha256 matches.

Files in the folder that ``files`` does not list are ignored, never reported: legocompile reads nothing but
``manifest.json`` and the listed files, so an unlisted file cannot change what runs. (Older legocompile versions
wrote ``pareto.json``/``pareto.png`` into the bundle; users may add a README.)

The messages are stable (tests pin them, and the C++ runtime reports the same ones):

* ``bundle not found: ROOT``
* ``ROOT is not a legocompile bundle (no manifest.json)``
* ``ROOT/manifest.json: not valid JSON (DETAIL)`` (a truncated manifest says this)
* ``ROOT: bundle schema version V is not supported (this legocompile reads 2); rebuild the bundle with this version``
  (for a newer V: ``...; upgrade legocompile to read it``)
* ``ROOT/manifest.json: malformed manifest: DETAIL``
* ``ROOT: unsafe path 'REL' in manifest: REASON``, REASON one of ``absolute path``, ``contains '..'``,
  ``contains a backslash``, ``starts with a drive letter``, ``has an empty or '.' component``,
  ``contains a control character``, ``not a non-empty string``, ``leads outside the bundle (symlink)``,
  ``cannot be resolved (symlink loop)``
* ``ROOT: file missing: REL``
* ``ROOT: not a regular file: REL``
* ``ROOT: checksum mismatch for REL (file changed after the build); rebuild the bundle``
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from legocompile.bundle.manifest import SCHEMA_VERSION, Manifest, ManifestError, check_consistency, quote
from legocompile.errors import LegoCompileError

MANIFEST = "manifest.json"
_DRIVE = re.compile(r"[A-Za-z]:")
_CHUNK = 1 << 20


# ------------------------------------------------------------------------------------------------------ paths
def unsafe_reason(rel: object) -> str | None:
    """Why ``rel`` is not a safe bundle-relative path (lexically), or None if it is."""
    if not isinstance(rel, str) or not rel:
        return "not a non-empty string"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in rel):
        return "contains a control character"
    if "\\" in rel:
        return "contains a backslash"
    if rel.startswith("/"):
        return "absolute path"
    if _DRIVE.match(rel):
        return "starts with a drive letter"
    parts = rel.split("/")
    if ".." in parts:
        return "contains '..'"
    if any(p in ("", ".") for p in parts):
        return "has an empty or '.' component"
    return None


def _unsafe(root: Path, rel: object, reason: str) -> LegoCompileError:
    return LegoCompileError(f"{root}: unsafe path {quote(rel)} in manifest: {reason}")


def safe_path(root: Path, rel: str) -> Path:
    """``root/rel`` resolved, after checking ``rel`` is safe and stays inside ``root`` (symlinks followed)."""
    root = Path(root)
    reason = unsafe_reason(rel)
    if reason:
        raise _unsafe(root, rel, reason)
    try:
        base = root.resolve()
        path = (root / rel).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        raise _unsafe(root, rel, "cannot be resolved (symlink loop)") from None
    if path == base or not path.is_relative_to(base):
        raise _unsafe(root, rel, "leads outside the bundle (symlink)")
    return path


def _manifest_paths(manifest: Manifest) -> list[str]:
    paths = list(manifest.files)
    for b in manifest.blocks:
        for o in b.options:
            paths += [o.engine, o.onnx]
    return list(dict.fromkeys(paths))


# ------------------------------------------------------------------------------------------------------ files
def _open_regular(root: Path, rel: str) -> int:
    """An fd on the checked file ``root/rel``; one-line errors for unsafe, missing and non-regular files."""
    path = safe_path(root, rel)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)  # non-blocking: a FIFO planted in a bundle must not hang the reader
    except FileNotFoundError:
        raise LegoCompileError(f"{root}: file missing: {rel}") from None
    except OSError:
        raise LegoCompileError(f"{root}: not a regular file: {rel}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise LegoCompileError(f"{root}: not a regular file: {rel}")
    return fd


def _mismatch(root: Path, rel: str) -> LegoCompileError:
    return LegoCompileError(f"{root}: checksum mismatch for {rel} (file changed after the build); rebuild the bundle")


def read_verified_bytes(root: Path, rel: str, sha256: str) -> bytes:
    """The bytes of ``root/rel``, read once and checked against ``sha256``.

    Load engines from these bytes (not by opening the path again), so that what runs is what was verified.
    Raises :class:`LegoCompileError` (one line) for an unsafe path, a missing or non-regular file, or a mismatch.
    """
    root = Path(root)
    fd = _open_regular(root, rel)
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise _mismatch(root, rel)
    return data


def _check_file(root: Path, rel: str, sha256: str) -> None:
    fd = _open_regular(root, rel)
    h = hashlib.sha256()
    with os.fdopen(fd, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    if h.hexdigest() != sha256:
        raise _mismatch(root, rel)


# ------------------------------------------------------------------------------------------------------ manifest
def _load(root: Path) -> Manifest:
    """The parsed, schema-checked manifest whose every path is safe; raises the first problem."""
    manifest_path = root / MANIFEST
    if not root.is_dir():
        raise LegoCompileError(f"bundle not found: {root}")
    if not manifest_path.is_file():
        raise LegoCompileError(f"{root} is not a legocompile bundle (no {MANIFEST})")
    try:
        text = safe_path(root, MANIFEST).read_bytes().decode("utf-8")
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise LegoCompileError(f"{manifest_path}: not valid JSON ({detail})") from None
    except OSError as e:
        raise LegoCompileError(f"{manifest_path}: cannot be read ({e.strerror})") from None
    if not isinstance(doc, dict):
        raise LegoCompileError(f"{manifest_path}: malformed manifest: not a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        shown = repr(version) if len(repr(version)) <= 40 else repr(version)[:37] + "..."
        newer = isinstance(version, int) and not isinstance(version, bool) and version > SCHEMA_VERSION
        fix = "upgrade legocompile to read it" if newer else "rebuild the bundle with this version"
        raise LegoCompileError(
            f"{root}: bundle schema version {shown} is not supported (this legocompile reads {SCHEMA_VERSION}); {fix}"
        )
    try:
        manifest = Manifest.from_json(doc)
    except ManifestError as e:
        raise LegoCompileError(f"{manifest_path}: malformed manifest: {e}") from None
    for rel in _manifest_paths(manifest):  # before the cross-field rules: an unsafe path is the news
        safe_path(root, rel)
    problems = check_consistency(manifest)
    if problems:
        raise LegoCompileError(f"{manifest_path}: malformed manifest: {problems[0]}")
    return manifest


def _file_problems(root: Path, manifest: Manifest) -> list[str]:
    problems = []
    for rel, sha256 in manifest.files.items():
        try:
            _check_file(root, rel, sha256)
        except LegoCompileError as e:
            problems.append(str(e))
    return problems


def verify_bundle(path: str | os.PathLike) -> list[str]:
    """Every problem with the bundle at ``path``, one line each; an empty list means it is whole.

    A manifest that cannot be used at all (missing, not JSON, wrong schema, malformed, unsafe path) is one problem;
    otherwise every listed file is checked and each missing, non-regular or changed file is reported. Unlisted
    files are ignored (see the module docstring).
    """
    root = Path(path)
    try:
        manifest = _load(root)
    except LegoCompileError as e:
        return [str(e)]
    return _file_problems(root, manifest)


def read_bundle(path: str | os.PathLike, *, verify: bool = True) -> Manifest:
    """Load ``path/manifest.json`` (schema and every path checked); with ``verify``, every listed file must exist
    and match its sha256. Raises the first problem as a one-line :class:`LegoCompileError`."""
    root = Path(path)
    manifest = _load(root)
    if verify:
        for rel, sha256 in manifest.files.items():
            _check_file(root, rel, sha256)
    return manifest
