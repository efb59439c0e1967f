"""Descendant block variants: structured L1-norm filter pruning that keeps each block's boundary shapes."""

from legocompile.variants.groups import ChannelGroup, find_groups
from legocompile.variants.prune import (
    GroupReport,
    PrunedBlock,
    PruneReport,
    apply_architecture,
    count_parameters,
    prune_block,
)

__all__ = [
    "ChannelGroup",
    "GroupReport",
    "PruneReport",
    "PrunedBlock",
    "apply_architecture",
    "count_parameters",
    "find_groups",
    "prune_block",
]
