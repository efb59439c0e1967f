"""The engine bundle: ``manifest.json`` + ``engines/`` + ``onnx/``; whole or absent, verified on load."""

from legocompile.bundle.manifest import SCHEMA_VERSION, BlockEntry, Manifest, OptionEntry, TensorSpec
from legocompile.bundle.reader import read_bundle
from legocompile.bundle.writer import write_bundle

__all__ = [
    "SCHEMA_VERSION",
    "BlockEntry",
    "Manifest",
    "OptionEntry",
    "TensorSpec",
    "read_bundle",
    "write_bundle",
]
