"""Top-1 accuracy helpers."""

from __future__ import annotations

import numpy as np


def top1(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose argmax equals the label."""
    return float(np.mean(np.argmax(logits.reshape(len(labels), -1), axis=1) == labels))
