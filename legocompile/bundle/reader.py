"""Read a bundle: check the schema version and every file's sha256."""

from __future__ import annotations

import json
from pathlib import Path

from legocompile.bundle.manifest import SCHEMA_VERSION, Manifest
from legocompile.errors import LegoCompileError
from legocompile.workspace import sha256_file


def read_bundle(path: str | Path, *, verify: bool = True) -> Manifest:
    """Load ``path/manifest.json``; with ``verify``, every engine must exist and match its sha256."""
    root = Path(path)
    manifest_path = root / "manifest.json"
    if not root.is_dir():
        raise LegoCompileError(f"bundle not found: {root}")
    if not manifest_path.is_file():
        raise LegoCompileError(f"{root} is not a legocompile bundle (no manifest.json)")
    try:
        doc = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LegoCompileError(f"{manifest_path}: not valid JSON ({e})") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION:
        raise LegoCompileError(
            f"{root}: bundle schema version {version!r} is not supported (this legocompile reads {SCHEMA_VERSION}); "
            "rebuild the bundle with this version"
        )
    try:
        manifest = Manifest.from_json(doc)
    except (KeyError, TypeError) as e:
        raise LegoCompileError(f"{manifest_path}: malformed manifest ({e!r})") from None
    if verify:
        for block in manifest.blocks:
            for option in block.options:
                f = root / option.engine
                if not f.is_file():
                    raise LegoCompileError(f"{root}: engine file missing: {option.engine}")
                if sha256_file(f) != option.sha256:
                    raise LegoCompileError(
                        f"{root}: checksum mismatch for {option.engine} (file changed after the build); rebuild the bundle"
                    )
    return manifest
