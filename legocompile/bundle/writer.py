"""Write a bundle so that it is whole or absent.

Files are copied into a hidden sibling folder, ``manifest.json`` is written last, and the folder is swapped into
place with two renames. A build killed before the swap leaves the previous bundle untouched; one killed between the
renames leaves no bundle (and the next write cleans up the leftovers).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from legocompile.bundle.manifest import Manifest
from legocompile.workspace import atomic_write_json


def _clean_leftovers(out: Path) -> None:
    for p in out.parent.glob(f".{out.name}.*"):
        if p.is_dir() and (p.name.endswith(".tmp") or p.name.endswith(".old")):
            shutil.rmtree(p, ignore_errors=True)


def write_bundle(out: str | os.PathLike, manifest: Manifest, files: dict[str, Path]) -> Path:
    """Create the bundle at ``out`` from ``files`` (bundle-relative path → source file) and ``manifest``.

    Checksums in the manifest must already describe the sources; they are verified by the reader, not here.
    """
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out)
    tmp = out.parent / f".{out.name}.{os.getpid()}.tmp"
    tmp.mkdir()
    try:
        for rel, src in files.items():
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
        atomic_write_json(tmp / "manifest.json", manifest.to_json())
        old = out.parent / f".{out.name}.{os.getpid()}.old"
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
