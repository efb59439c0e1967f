"""legocompile: export-and-deploy compiler for LegoDNN-style block-switchable models."""

__version__ = "0.1.0"
