"""Dataset adapter for the built-in example: scikit-learn's handwritten digits.

``sklearn.datasets.load_digits`` ships 1,797 8x8 grey-scale images with the
library, so this works offline. Each image is scaled from 0..16 to [0, 1],
upsampled to 32x32 (bilinear, ``align_corners=False``) and normalized with the
fixed constants ``MEAN``/``STD``. The held-out test split is fixed:
``train_test_split(test_size=0.2, random_state=0, stratify=labels)``, giving
1,437 training and 360 test images.

``dataset`` is the project's *dataset provider* contract: a callable returning
``(calibration_inputs, (eval_inputs, eval_labels))``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from legocompile.errors import LegoCompileError

__all__ = ["MEAN", "STD", "IMAGE_SIZE", "DigitsSplits", "load_splits", "dataset"]

#: Pixel mean of the upsampled [0, 1] training split, computed once (float64)
#: and hard-coded so preprocessing never depends on the data it is applied to.
MEAN = 0.3053834
#: Pixel standard deviation of the upsampled [0, 1] training split (see MEAN).
STD = 0.3236516
#: Side length of the model input images.
IMAGE_SIZE = 32


@dataclass(frozen=True)
class DigitsSplits:
    """Preprocessed train/test splits.

    Attributes:
        x_train: Training images, float32 ``(1437, 1, 32, 32)``.
        y_train: Training labels, int64 ``(1437,)``.
        x_test: Test images, float32 ``(360, 1, 32, 32)``.
        y_test: Test labels, int64 ``(360,)``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _preprocess(images: np.ndarray) -> np.ndarray:
    """Scales, upsamples and normalizes raw 8x8 digit images.

    Args:
        images: Raw images ``(N, 8, 8)`` with values 0..16.

    Returns:
        Normalized float32 array ``(N, 1, 32, 32)``.
    """
    x = torch.from_numpy(np.asarray(images, dtype=np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    x = (x - MEAN) / STD
    return np.ascontiguousarray(x.numpy(), dtype=np.float32)


@functools.lru_cache(maxsize=1)
def load_splits() -> DigitsSplits:
    """Loads and preprocesses the digits data with the fixed test split.

    The arrays are cached and shared between calls; they are marked read-only,
    so copy them before modifying.

    Returns:
        The preprocessed ``DigitsSplits``.
    """
    raw = load_digits()
    x = _preprocess(raw.images)
    y = raw.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=0, stratify=y
    )
    arrays = [np.ascontiguousarray(a) for a in (x_train, y_train, x_test, y_test)]
    for a in arrays:
        a.setflags(write=False)
    return DigitsSplits(*arrays)


def dataset(num_calibration: int = 256) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Dataset provider for the example model.

    Args:
        num_calibration: Number of calibration inputs, taken deterministically
            as the first images of the training split (at most 1,437).

    Returns:
        ``(calibration_inputs, (eval_inputs, eval_labels))``: calibration
        inputs float32 ``(num_calibration, 1, 32, 32)``; eval inputs float32
        ``(360, 1, 32, 32)`` and int64 labels ``(360,)`` (the full test split).

    Raises:
        LegoCompileError: If ``num_calibration`` is not in ``1..len(train split)``.
    """
    splits = load_splits()
    if not 1 <= num_calibration <= len(splits.x_train):
        raise LegoCompileError(
            f"num_calibration must be in 1..{len(splits.x_train)} for the digits example, "
            f"got {num_calibration}; pass a smaller calibration size"
        )
    calib = splits.x_train[:num_calibration].copy()
    return calib, (splits.x_test.copy(), splits.y_test.copy())
