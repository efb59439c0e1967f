"""Variants on disk: safetensors weights plus a JSON architecture, never pickled modules.

A variant saved under the stem ``<dir>/<name>`` is the pair ``<name>.safetensors`` (its ``state_dict``) and
``<name>.json`` (``{"architecture": ..., "meta": ..., "weights_sha256": ...}``). Both are written atomically, the JSON
last, so the JSON's presence means the pair is whole; the recorded hash catches a pair mixed from two saves.

Users who already hold retrained blocks from the original LegoDNN pipeline load them with
:func:`load_external_variant` from a factory (``"pkg.mod:fn"``) and a weights file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from legocompile.errors import LegoCompileError
from legocompile.model import import_object, load_state_dict
from legocompile.variants.prune import apply_architecture
from legocompile.workspace import atomic_write_bytes, atomic_write_json


def variant_paths(path_stem: Path) -> tuple[Path, Path]:
    """``(<stem>.safetensors, <stem>.json)``; the stem may contain dots (``layer1.0-s0.4``)."""
    stem = str(path_stem)
    return Path(stem + ".safetensors"), Path(stem + ".json")


def save_variant(path_stem: Path, module: nn.Module, architecture: dict, meta: dict) -> None:
    """Write a variant's weights and description atomically (the JSON last).

    Args:
        path_stem: Where to write, without suffix; parent folders are created.
        module: The variant (e.g. ``PrunedBlock.module`` after retraining).
        architecture: ``PrunedBlock.architecture`` (layer path -> constructor arguments).
        meta: Anything JSON-serialisable to keep with it (sparsity, MSE, parameters...).

    Raises:
        LegoCompileError: If ``architecture`` or ``meta`` is not JSON-serialisable.
    """
    from safetensors.torch import save

    weights_path, json_path = variant_paths(path_stem)
    try:
        document = json.loads(json.dumps({"architecture": architecture, "meta": meta}))
    except (TypeError, ValueError) as e:
        raise LegoCompileError(
            f"variant {json_path.name}: architecture and meta must be JSON-serialisable ({e})"
        ) from None
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    data = save(state)
    document["weights_sha256"] = hashlib.sha256(data).hexdigest()
    atomic_write_bytes(weights_path, data)
    atomic_write_json(json_path, document)


def load_variant(path_stem: Path, original_block: nn.Module) -> tuple[nn.Module, dict]:
    """Rebuild a saved variant from the original (unpruned) block and load its weights strictly.

    Args:
        path_stem: The stem given to :func:`save_variant`.
        original_block: The block the variant was pruned from.

    Returns:
        ``(module in eval mode, meta)``.

    Raises:
        LegoCompileError: If a file is missing or damaged, the pair does not match, or the weights do not fit.
    """
    from safetensors.torch import load

    weights_path, json_path = variant_paths(path_stem)
    document = _read_json(json_path)
    try:
        data = weights_path.read_bytes()
    except OSError as e:
        raise LegoCompileError(f"cannot read variant weights {weights_path}: {e.strerror or e}") from None
    expected = document.get("weights_sha256")
    if expected is not None and hashlib.sha256(data).hexdigest() != expected:
        raise LegoCompileError(
            f"variant weights {weights_path.name} do not match {json_path.name} (a pair from two saves?); "
            "re-derive the variant"
        )
    try:
        state = load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own types for damaged files
        raise LegoCompileError(f"cannot read variant weights {weights_path}: {e}") from None
    module = apply_architecture(original_block, document["architecture"])
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise LegoCompileError(
            f"variant weights {weights_path.name} do not fit its architecture: {str(e).splitlines()[0]}"
        ) from None
    return module.eval(), document["meta"]


def load_external_variant(
    factory: str,
    weights: Path,
    *,
    search_path: Path | None = None,
    input_shape: tuple[int, ...],
    output_shape: tuple[int, ...],
    block_name: str | None = None,
) -> nn.Module:
    """Build a user's own variant with ``factory()``, load ``weights`` strictly and check its boundary shapes.

    Args:
        factory: ``"pkg.mod:fn"``; ``fn()`` returns the variant module.
        weights: A ``.safetensors`` file or a tensor-only ``state_dict`` (``torch.load(weights_only=True)``).
        search_path: A folder tried first when importing ``pkg.mod``.
        input_shape: The block's input shape (e.g. ``(1, 64, 16, 16)``); the variant runs once on zeros of it.
        output_shape: The block's output shape, which the variant must reproduce.
        block_name: The block's name, for messages.

    Returns:
        The variant in eval mode.

    Raises:
        LegoCompileError: If the import, the factory, the weights or the shape check fails.
    """
    where = f"block {block_name}" if block_name else "the block"
    make = import_object(factory, field="external variant factory", search_path=search_path)
    if not callable(make):
        raise LegoCompileError(f"external variant factory {factory} is a {type(make).__name__}, not callable")
    try:
        module = make()
    except Exception as e:  # noqa: BLE001 - user code: report any failure on one line
        raise LegoCompileError(f"external variant factory {factory} failed: {type(e).__name__}: {e}") from None
    if not isinstance(module, nn.Module):
        raise LegoCompileError(f"external variant factory {factory} returned {type(module).__name__}, not a Module")
    try:
        module.load_state_dict(load_state_dict(Path(weights)), strict=True)
    except RuntimeError as e:
        raise LegoCompileError(
            f"external variant weights {Path(weights).name} do not fit {factory}: {str(e).splitlines()[0]}"
        ) from None
    module.eval()
    ref = next((t for t in [*module.parameters(), *module.buffers()] if t.is_floating_point()), None)
    x = torch.zeros(tuple(input_shape), device=ref.device if ref is not None else "cpu")
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as e:  # noqa: BLE001
        raise LegoCompileError(
            f"external variant {factory} fails on {where}'s input shape {tuple(input_shape)}: {type(e).__name__}: {e}"
        ) from None
    got: Any = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != tuple(output_shape):
        raise LegoCompileError(f"external variant {factory} outputs {got} but {where} outputs {tuple(output_shape)}")
    return module


def _read_json(json_path: Path) -> dict:
    try:
        document = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LegoCompileError(f"variant not found: {json_path} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LegoCompileError(f"variant description {json_path} is damaged ({e}); re-derive the variant") from None
    if not isinstance(document, dict) or not isinstance(document.get("architecture"), dict) or "meta" not in document:
        raise LegoCompileError(f"variant description {json_path} lacks 'architecture' or 'meta'; re-derive it")
    return document
