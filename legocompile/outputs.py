"""A model's result: one tensor, or a tuple of tensors when ``forward`` returns several (detection and pose heads).

Only the chain's last block may have several outputs. Everything that handles a block's or a chain's result goes
through these helpers, so "one output" and "several outputs" are told apart in one place: internally a result is
always a tuple (:func:`as_outputs`), and what users get back is an array for one output and a tuple for several
(:func:`from_outputs`).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np


def as_outputs(value: Any) -> tuple:
    """A result as a tuple of its outputs (a single tensor or array becomes a 1-tuple)."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def from_outputs(outputs: Sequence[Any]) -> Any:
    """What a caller gets back: the array itself for one output, the tuple for several."""
    return outputs[0] if len(outputs) == 1 else tuple(outputs)


def concat_outputs(results: Sequence[Any]) -> Any:
    """Batch results (each an array or a tuple of arrays) joined along the batch axis, output by output."""
    parts = [as_outputs(r) for r in results]
    return from_outputs(tuple(np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))))


def max_abs(value: Any) -> float:
    """The largest magnitude over every output (0.0 for empty outputs)."""
    return max((float(np.max(np.abs(np.asarray(o)))) if np.asarray(o).size else 0.0 for o in as_outputs(value)),
               default=0.0)


def tensors_to_numpy(value: Any) -> Any:
    """A torch result (a tensor or a tuple of tensors) as numpy, in the same structure as :func:`from_outputs`."""
    return from_outputs(tuple(t.detach().cpu().numpy() for t in as_outputs(value)))
