"""Export one block to ONNX and check it against PyTorch.

Every block's ONNX has one float32 input ``x`` and one float32 output ``y`` with a dynamic batch axis, so the runtime
can bind any block variant to the same boundary buffers.

The TorchScript-based exporter (``dynamo=False``) is used: blocks are small traced ``GraphModule``\\s with no dynamic
control flow, and it exports them in ~0.1 s where the dynamo path takes seconds per block.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from legocompile.errors import LegoCompileError
from legocompile.modes import eval_mode
from legocompile.workspace import atomic_write_bytes

OPSET = 17
INPUT_NAME = "x"
OUTPUT_NAME = "y"


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_err: float  # max |ORT - PyTorch| over the check inputs
    num_checked: int
    output_max_abs: float = 0.0  # max |PyTorch output| over the same inputs: the scale the error is judged against

    @property
    def relative_err(self) -> float:
        """``max_abs_err`` relative to the output's magnitude (what the export gate checks)."""
        return self.max_abs_err / self.output_max_abs if self.output_max_abs > 0 else self.max_abs_err


def onnx_bytes(module, example_input) -> bytes:
    """Serialise ``module`` (one tensor in, one tensor out) to ONNX bytes in eval mode."""
    import torch

    buf = io.BytesIO()
    with eval_mode(module), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (example_input,),
                buf,
                opset_version=OPSET,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        except Exception as e:  # the exporter raises many types; the user needs the first line
            raise LegoCompileError(f"ONNX export failed for {type(module).__name__}: {str(e).splitlines()[0]}") from None
    return buf.getvalue()


def inline_identity_initializers(model) -> int:
    """Replace ``Identity(initializer)`` nodes by a copy of the initializer; return how many were replaced.

    The TorchScript exporter deduplicates equal constants (e.g. two zero conv biases) and feeds the second use
    through an ``Identity``. ORT's quantizer then sees a bias that is not an initializer and leaves it in float.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    keep, replaced = [], 0
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in {o.name for o in model.graph.output}:
            copy = numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]), name=node.output[0])
            model.graph.initializer.append(copy)
            replaced += 1
        else:
            keep.append(node)
    if replaced:
        del model.graph.node[:]
        model.graph.node.extend(keep)
    return replaced


def export_block(module, check_inputs: np.ndarray, path: str | Path, *, batch_size: int = 64) -> ExportResult:
    """Export ``module`` to ``path`` (atomically), validate it with ``onnx.checker``, and compare with PyTorch.

    Args:
        module: the block, any ``nn.Module`` taking one tensor.
        check_inputs: real inputs of the block (e.g. the teacher's activations), float32, batch-first.
        path: where to write the ``.onnx``.
        batch_size: batch size used for the comparison runs.
    """
    import onnx
    import torch

    x0 = torch.from_numpy(np.ascontiguousarray(check_inputs[:1], dtype=np.float32))
    model = onnx.load_from_string(onnx_bytes(module, x0))
    inline_identity_initializers(model)
    data = model.SerializeToString()
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as e:
        raise LegoCompileError(f"exported ONNX failed onnx.checker: {str(e).splitlines()[0]}") from None

    from legocompile.backends import get_backend

    engine = get_backend("onnxruntime").load(data)  # ORT checks the export, whatever backend builds the engines
    max_err = scale = 0.0
    with eval_mode(module), torch.no_grad():
        for start in range(0, len(check_inputs), batch_size):
            xb = np.ascontiguousarray(check_inputs[start : start + batch_size], dtype=np.float32)
            ref = module(torch.from_numpy(xb)).numpy()
            got = engine.run(xb)
            max_err = max(max_err, float(np.max(np.abs(ref - got))))
            scale = max(scale, float(np.max(np.abs(ref))))
    atomic_write_bytes(path, data)
    return ExportResult(path=Path(path), max_abs_err=max_err, num_checked=len(check_inputs), output_max_abs=scale)
