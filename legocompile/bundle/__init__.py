"""The engine bundle: ``manifest.json`` + ``engines/`` + ``onnx/``; whole or absent, every file checksummed.

A bundle is data: reading, verifying or running one never imports or calls anything named in it.
"""

from legocompile.bundle.manifest import (
    SCHEMA_VERSION,
    BlockEntry,
    Manifest,
    ManifestError,
    OptionEntry,
    TensorSpec,
    calibration_files,
)
from legocompile.bundle.reader import read_bundle, read_verified_bytes, verify_bundle
from legocompile.bundle.writer import check_target, is_bundle_dir, write_bundle

__all__ = [
    "SCHEMA_VERSION",
    "BlockEntry",
    "Manifest",
    "ManifestError",
    "OptionEntry",
    "TensorSpec",
    "calibration_files",
    "check_target",
    "is_bundle_dir",
    "read_bundle",
    "read_verified_bytes",
    "verify_bundle",
    "write_bundle",
]
