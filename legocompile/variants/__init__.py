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

from legocompile.variants.retrain import RetrainResult, RetrainSettings, retrain_variants
from legocompile.variants.store import load_external_variant, load_variant, save_variant

__all__ = [
    "RetrainResult",
    "RetrainSettings",
    "load_external_variant",
    "load_variant",
    "retrain_variants",
    "save_variant",
    "ChannelGroup",
    "GroupReport",
    "PruneReport",
    "PrunedBlock",
    "apply_architecture",
    "count_parameters",
    "find_groups",
    "prune_block",
]
