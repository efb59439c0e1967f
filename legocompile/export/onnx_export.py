"""Export one block to ONNX and check it against PyTorch.

Every block's ONNX has one float32 input ``x`` and one float32 output ``y`` with a dynamic batch axis, so the runtime
can bind any block variant to the same boundary buffers. The last block of a model that returns a tuple has one
output per element, named by :func:`output_names` (``y``, ``y1``, ``y2``, ...).

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
from legocompile.outputs import as_outputs, max_abs, tensors_to_numpy
from legocompile.workspace import atomic_write_bytes

OPSET = 17
INPUT_NAME = "x"
OUTPUT_NAME = "y"


def output_names(count: int) -> list[str]:
    """The ONNX output names of a block with ``count`` outputs: ``y`` first (every block has it), then ``y1``, ..."""
    return [OUTPUT_NAME] + [f"{OUTPUT_NAME}{k}" for k in range(1, count)]


@dataclass(frozen=True)
class ExportResult:
    path: Path
    max_abs_err: float  # max |ORT - PyTorch| over the check inputs (and every output)
    num_checked: int
    output_max_abs: float = 0.0  # max |PyTorch output| over the same inputs: the scale the error is judged against
    output_errors: tuple[tuple[float, float], ...] = ()  # (max abs error, max |output|) per output, when several

    @property
    def relative_err(self) -> float:
        """``max_abs_err`` relative to the output's magnitude (what the export gate checks); with several outputs,
        the worst output's error relative to that output's own magnitude."""
        pairs = self.output_errors or ((self.max_abs_err, self.output_max_abs),)
        return max(err / scale if scale > 0 else err for err, scale in pairs)


def onnx_bytes(module, example_input) -> bytes:
    """Serialise ``module`` (one tensor in; one tensor or a tuple of tensors out) to ONNX bytes in eval mode."""
    import torch

    buf = io.BytesIO()
    with eval_mode(module), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        names = output_names(len(as_outputs(module(example_input.clone()))))
        try:
            torch.onnx.export(
                module,
                (example_input,),
                buf,
                opset_version=OPSET,
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes={INPUT_NAME: {0: "batch"}, **{name: {0: "batch"} for name in names}},
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
    errors: list[list[float]] = []  # per output: [max abs error, max |output|]
    with eval_mode(module), torch.no_grad():
        for start in range(0, len(check_inputs), batch_size):
            xb = np.ascontiguousarray(check_inputs[start : start + batch_size], dtype=np.float32)
            refs = as_outputs(tensors_to_numpy(module(torch.from_numpy(xb))))
            gots = as_outputs(engine.run(xb))
            errors = errors or [[0.0, 0.0] for _ in refs]
            for e, ref, got in zip(errors, refs, gots, strict=True):
                e[0], e[1] = max(e[0], max_abs(ref - got)), max(e[1], max_abs(ref))
    atomic_write_bytes(path, data)
    return ExportResult(path=Path(path), max_abs_err=max(e[0] for e in errors), num_checked=len(check_inputs),
                        output_max_abs=max(e[1] for e in errors),
                        output_errors=tuple((e[0], e[1]) for e in errors) if len(errors) > 1 else ())
