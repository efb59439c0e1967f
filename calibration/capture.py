"""Capture each block's real input distribution by running the teacher chain once over calibration data.

The calibration data of block ``i`` is the teacher's activation at block ``i``'s input, i.e. the output of blocks
``0..i-1`` applied to the calibration images. :func:`block_inputs` computes all of them in a single pass: each batch
goes through the chain once and the activation in front of every block is recorded on the way, so no prefix is ever
recomputed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from legocompile.errors import LegoCompileError
from legocompile.modes import eval_mode

logger = logging.getLogger("legocompile")


def _chain_device(blocks: Sequence[torch.nn.Module]) -> torch.device:
    """Returns the device of the first parameter or buffer found in the chain (CPU when there is none)."""
    for block in blocks:
        for tensor in block.parameters():
            return tensor.device
        for tensor in block.buffers():
            return tensor.device
    return torch.device("cpu")


def block_inputs(blocks: Sequence[torch.nn.Module], data: np.ndarray, *, batch_size: int = 64) -> list[np.ndarray]:
    """Returns every block's input activations over the calibration data, computed in one pass over the chain.

    The chain runs in eval mode under ``torch.no_grad()``, batch by batch; the blocks' previous train/eval modes
    are restored afterwards. The last block is never run, since its output is nobody's input.

    Args:
        blocks: The teacher's blocks, in chain order (block ``i + 1`` consumes block ``i``'s output).
        data: Calibration inputs of block 0, shape ``(N, ...)``; cast to float32.
        batch_size: Samples per forward pass.

    Returns:
        One float32 array per block, shape ``(N, ...)``: element ``i`` is block ``i``'s input activations over the
        ``N`` samples, and element 0 is ``data`` itself (as float32).

    Raises:
        LegoCompileError: If the chain is empty, the data is empty or not batched, ``batch_size < 1``, or a block
            returns something other than a single tensor.
    """
    if len(blocks) == 0:
        raise LegoCompileError("cannot capture block inputs: the block chain is empty")
    if batch_size < 1:
        raise LegoCompileError(f"calibration batch_size must be >= 1, got {batch_size}")
    # writable as well: torch warns once per process on wrapping a read-only array (load_splits() hands those out)
    data_f32 = np.require(data, np.float32, ["C", "W"])
    if data_f32.ndim < 1 or data_f32.shape[0] == 0:
        raise LegoCompileError(
            f"calibration data must be a non-empty batch of shape (N, ...), got shape {tuple(data_f32.shape)}"
        )

    num_samples = data_f32.shape[0]
    captured: list[np.ndarray | None] = [data_f32] + [None] * (len(blocks) - 1)
    device = _chain_device(blocks)
    with eval_mode(*blocks), torch.no_grad():
        for start in range(0, num_samples, batch_size):
            stop = min(start + batch_size, num_samples)
            activation = torch.from_numpy(data_f32[start:stop]).to(device)
            for index, block in enumerate(blocks[:-1]):
                activation = block(activation)
                if not isinstance(activation, torch.Tensor):
                    raise LegoCompileError(
                        f"block {index} returned {type(activation).__name__}, expected a single tensor"
                    )
                batch_np = activation.detach().to("cpu", torch.float32).numpy()
                store = captured[index + 1]
                if store is None:
                    store = np.empty((num_samples, *batch_np.shape[1:]), dtype=np.float32)
                    captured[index + 1] = store
                store[start:stop] = batch_np

    logger.debug(
        "captured inputs of %d blocks over %d samples: %s",
        len(blocks),
        num_samples,
        [tuple(array.shape) for array in captured if array is not None],
    )
    return [array for array in captured if array is not None]
