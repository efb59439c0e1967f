"""The built-in example: a ResNet-18 trained on scikit-learn's digits.

Weights are produced by ``python -m legocompile.examples.train`` and shipped
in ``legocompile/examples/weights/``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from legocompile.errors import LegoCompileError

__all__ = [
    "EXAMPLE_INPUT_SHAPE",
    "EXAMPLE_WIDTH",
    "WEIGHTS_DIR",
    "WEIGHTS_PATH",
    "METADATA_PATH",
    "load_example_model",
    "example_metadata",
]

#: Input shape of the example model (batch 1, 1 channel, 32x32).
EXAMPLE_INPUT_SHAPE = (1, 1, 32, 32)
#: Width (first-stage channels) of the shipped example model.
EXAMPLE_WIDTH = 32
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_PATH = WEIGHTS_DIR / "resnet18_digits.safetensors"
METADATA_PATH = WEIGHTS_DIR / "resnet18_digits.json"

_RETRAIN_HINT = "regenerate it with `python -m legocompile.examples.train`"


def load_example_model() -> nn.Module:
    """Builds ``resnet18_digits(32)`` and loads the shipped weights.

    Returns:
        The trained model in eval mode, on CPU.

    Raises:
        LegoCompileError: If the weights file is missing.
    """
    from safetensors.torch import load_file

    from legocompile.examples.resnet import resnet18_digits

    if not WEIGHTS_PATH.is_file():
        raise LegoCompileError(f"example weights not found at {WEIGHTS_PATH}; {_RETRAIN_HINT}")
    model = resnet18_digits(EXAMPLE_WIDTH)
    model.load_state_dict(load_file(str(WEIGHTS_PATH)), strict=True)
    return model.eval()


def example_metadata() -> dict[str, Any]:
    """Reads the metadata recorded with the shipped weights.

    Returns:
        The parsed ``resnet18_digits.json`` (model, width, test_accuracy, ...).

    Raises:
        LegoCompileError: If the metadata file is missing.
    """
    if not METADATA_PATH.is_file():
        raise LegoCompileError(f"example metadata not found at {METADATA_PATH}; {_RETRAIN_HINT}")
    return json.loads(METADATA_PATH.read_text(encoding="utf-8"))
