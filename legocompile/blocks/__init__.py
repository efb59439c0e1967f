"""Cutting a model into a chain of single-input, single-output blocks."""

from legocompile.blocks.partition import Block, partition, verify_partition

__all__ = ["Block", "partition", "verify_partition"]
