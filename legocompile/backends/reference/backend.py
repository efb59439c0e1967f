"""Build, load and bind engines run by :class:`onnx.reference.ReferenceEvaluator`.

An engine file is an ONNX model the reference evaluator runs:

* fp32: the block's ONNX as exported (not ORT's optimized graph, whose fused operators are ORT's own);
* fp16 and int8: the very graphs the ONNX Runtime backend builds (its fp16 conversion and the QDQ model that
  ``calibration.qdq`` writes from the block's ranges and int8 recipe), made runnable by the evaluator without
  changing what they compute. Measured with onnx 1.21: ORT's fp16 converter appends the input Casts after their
  consumers, which ORT accepts but the evaluator refuses ("Unable to find input 'graph_input_cast_0'"), so the
  nodes are put in topological order; the QDQ graph is opset 17, for which the evaluator has no
  ``DequantizeLinear`` ("found 19, 21, 23, 25"), so it is converted to opset :data:`QDQ_OPSET` with
  ``onnx.version_converter`` (Quantize/DequantizeLinear 19 only add types).

Buffers are host numpy arrays. A bound engine writes into its output buffer, but the evaluator allocates its
results (it is not built for speed): timings of this backend say nothing about a deployment.
"""

from __future__ import annotations

import platform
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from legocompile.backends.base import HostBuffer, bound_outputs
from legocompile.errors import LegoCompileError
from legocompile.export import INPUT_NAME
from legocompile.outputs import from_outputs
from legocompile.workspace import atomic_produce

QDQ_OPSET = 21


class ReferenceEngine:
    """An ONNX model in a reference evaluator. ``model``: the engine's bytes (verified bundle bytes) or a path."""

    def __init__(self, model: bytes | Path) -> None:
        import onnx
        from onnx.reference import ReferenceEvaluator

        try:
            proto = onnx.load_from_string(bytes(model)) if isinstance(model, (bytes, bytearray, memoryview)) \
                else onnx.load(str(model))
            self.evaluator = ReferenceEvaluator(proto)
        except Exception as e:  # damaged file, or an operator the evaluator does not implement
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise LegoCompileError(f"reference backend cannot load this engine: {first}") from None
        self.outputs = list(self.evaluator.output_names)  # y (, y1, ...): the export's order

    def bind(self, src: HostBuffer, dst: HostBuffer | Sequence[HostBuffer]) -> Callable[[], None]:
        """A callable that runs this engine from ``src`` into ``dst`` (one buffer per output for a last block with
        several; the evaluator allocates its results, which are copied in)."""
        run_model, feeds, outputs = self.evaluator.run, {INPUT_NAME: src.array}, self.outputs
        outs = [d.array for d in bound_outputs(dst, len(outputs))]

        def run(_keep=(src, dst)) -> None:
            for out, y in zip(outs, run_model(outputs, feeds)):
                np.copyto(out, y, casting="same_kind")

        return run

    def run(self, x: np.ndarray):
        """Convenience (allocating) run, for checks and accuracy profiling (a tuple for several outputs)."""
        ys = self.evaluator.run(self.outputs, {INPUT_NAME: np.ascontiguousarray(x, dtype=np.float32)})
        return from_outputs(tuple(np.asarray(y, dtype=np.float32) for y in ys))


class ReferenceBackend:
    name = "reference"
    engine_suffix = ".onnx"

    def fingerprint(self) -> dict:
        import onnx

        return {"backend": self.name, "onnx": onnx.__version__, "numpy": np.__version__,
                "machine": platform.machine()}

    def build(self, onnx_path: Path, precision: str, out_path: Path, *, ranges: Any = None, recipe: Any = None) -> None:
        if precision == "fp32":
            atomic_produce(out_path, lambda tmp: Path(tmp).write_bytes(Path(onnx_path).read_bytes()))
            return
        if precision not in ("fp16", "int8"):
            raise LegoCompileError(f"reference backend: unknown precision {precision!r}")
        from legocompile.backends.onnxrt import OnnxRuntimeBackend

        with tempfile.TemporaryDirectory(prefix="legocompile-ref-build-") as tmp:
            graph = Path(tmp) / f"{precision}.onnx"
            OnnxRuntimeBackend().build(Path(onnx_path), precision, graph, ranges=ranges, recipe=recipe)
            atomic_produce(out_path, lambda out: _runnable(graph, out, precision))

    def load(self, engine: bytes | Path) -> ReferenceEngine:
        return ReferenceEngine(engine)

    def allocate(self, shape: tuple[int, ...]) -> HostBuffer:
        return HostBuffer(np.zeros(shape, dtype=np.float32))

    def configure(self, *, threads: int | None = None, shared: bool | None = None) -> bool:
        """Nothing to set up: the evaluator runs numpy in the calling thread."""
        return False

    def preload(self) -> None:
        import onnx.reference  # noqa: F401


def _runnable(src: Path, out: Path, precision: str) -> None:
    """Write ``src`` (a graph the ONNX Runtime backend built) as the evaluator can run it (see the module docstring)."""
    import onnx
    from onnx import version_converter

    model = onnx.load(str(src))
    if precision == "int8" and _default_opset(model) < QDQ_OPSET:
        model = version_converter.convert_version(model, QDQ_OPSET)
    topological_sort(model.graph)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))


def _default_opset(model) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def topological_sort(graph) -> None:
    """Reorder ``graph``'s nodes so that every node comes after the producers of its inputs (stable otherwise)."""
    known = {v.name for v in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        rest = []
        for node in pending:
            if all(name in known for name in node.input):
                ordered.append(node)
                known.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):
            raise LegoCompileError(f"graph {graph.name!r} has a cycle or an input nothing produces: {rest[0].name!r}")
        pending = rest
    copies = []
    for node in ordered:  # copied before the field is cleared: removed messages are not ours to keep
        copy = type(node)()
        copy.CopyFrom(node)
        copies.append(copy)
    del graph.node[:]
    graph.node.extend(copies)
