"""Load a user's model from ``"pkg.mod:factory"`` and a weights file, never unpickling arbitrary objects."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from legocompile.errors import LegoCompileError


def import_object(spec: str, *, field: str = "import spec", search_path: Path | None = None) -> Any:
    """Import ``"package.module:attribute"``; ``search_path`` (the project folder) is tried first."""
    if spec.count(":") != 1:
        raise LegoCompileError(f'{field}: expected "package.module:attribute", got {spec!r}')
    module_name, attr = spec.split(":")
    if search_path is not None and str(search_path) not in sys.path:
        sys.path.insert(0, str(search_path))
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise LegoCompileError(f"{field}: cannot import module {module_name!r} ({e})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise LegoCompileError(f"{field}: module {module_name!r} has no attribute {attr!r}") from None


def load_state_dict(path: Path) -> dict:
    """Read weights: safetensors, or a tensor-only state_dict via ``torch.load(weights_only=True)``."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise LegoCompileError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for damaged headers
            raise LegoCompileError(f"cannot read safetensors weights {path}: {e}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LegoCompileError(
            f"cannot load {path} with weights_only=True ({str(e).splitlines()[0]}); "
            "save a state_dict (model.state_dict()) or convert it to safetensors"
        ) from None
    if not isinstance(state, dict):
        raise LegoCompileError(f"{path} holds a {type(state).__name__}, not a state_dict")
    return state


def load_model(factory: str, weights: Path | None, *, search_path: Path | None = None):
    """Build the model with ``factory()``, load ``weights`` strictly, and return it in eval mode."""
    import torch

    make = import_object(factory, field="[model].factory", search_path=search_path)
    model = make()
    if not isinstance(model, torch.nn.Module):
        raise LegoCompileError(f"[model].factory {factory} returned {type(model).__name__}, not a torch.nn.Module")
    if weights is not None:
        state = load_state_dict(weights)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            first = str(e).splitlines()[0]
            raise LegoCompileError(f"[model].weights {Path(weights).name} do not fit the model: {first}") from None
    return model.eval()
