"""Temporarily put modules in eval mode, then give every submodule back its own training flag.

``module.train(flag)`` sets one flag on the whole tree, so a model with mixed flags (a frozen BatchNorm inside a
training model, say) would come back changed. Every stage that runs a user's module uses this instead.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def eval_mode(*modules) -> Iterator[None]:
    """Eval mode for ``modules`` (and all their submodules) inside the block; each flag restored on exit."""
    flags = [(m, m.training) for root in modules for m in root.modules()]
    for root in modules:
        root.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training
