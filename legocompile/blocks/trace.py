"""Tracing a model into an FX graph, with a fallback for Python control flow on tensor *shapes*.

``torch.fx.symbolic_trace`` refuses ``if x.shape[-1] != 7:`` ("symbolically traced variables cannot be used as inputs
to control flow"): it does not know the shape. A deployed model's input shape is fixed, so such a branch is decided
by the example input. :func:`trace` first tries plain ``symbolic_trace``; when that fails it traces again with
:class:`ShapeTracer`, which runs every traced operation on real tensors alongside (the example input, and the same
input at another batch size) and answers a branch, ``int()``, ``len()`` or iteration on a value computed only from
shapes (``.shape``, ``.size()``, ``.dim()``, ``.numel()`` and arithmetic on them) with its real value. Everything
else stays symbolic: ``x.view(x.size(0), -1)`` still follows the batch size.

What it refuses, naming the node:

* a branch on tensor *values* (``if x.sum() > 0``): data-dependent, it would be wrong on other inputs;
* a branch on the *batch size* (its answer differs between the two batch sizes): the engines' batch axis is dynamic.

Why not ``torch.export`` at the example shape: measured on a VGG with a shape branch (under load on 2 cores), it took
7-9 s against 0.5 s here, and its graph suits none of the later stages: ATen calls (``aten.conv2d`` on lifted
parameters) instead of ``nn.Conv2d`` modules, so MACs count 0 and the pruning analysis
(:mod:`legocompile.variants.groups`) finds no channel group (this route: 4 groups, 3 prunable); every dimension is
specialised, the batch included (its module fails a guard ``x.size()[0] == 1`` at batch 3), while the engines' batch
axis is dynamic; and it returns a pytree tuple, which the partitioner refuses as a multi-output model.
"""

from __future__ import annotations

import operator
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn
from torch.fx import _symbolic_trace

from legocompile._log import logger

_SHAPE_ATTRS = {"shape", "ndim", "dtype", "device", "is_cuda", "layout"}
_SHAPE_METHODS = {"size", "dim", "numel", "nelement", "ndimension", "get_device"}
_UNKNOWN = object()  # a value the tracer could not compute alongside
FALLBACK_AVAILABLE = hasattr(_symbolic_trace, "_maybe_revert_all_patches")  # torch >= 2.1


class ShapeTraceError(RuntimeError):
    """The shape-specialising tracer met control flow it must not decide (the message names the node)."""


class ShapeTracer(fx.Tracer):
    """An FX tracer that decides control flow on shapes from real inputs (see the module docstring)."""

    def __init__(self, inputs: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        self.record_stack_traces = True  # errors name the user's line
        self._inputs = inputs  # the example input and the same rows at another batch size
        self._values: dict[fx.Node, tuple[Any, Any]] = {}
        self._static: set[fx.Node] = set()
        self.decisions: list[str] = []  # "node -> value", for the log

    # ------------------------------------------------------------------------------------------ running alongside
    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        if node not in self._values:
            self._values[node] = (self._run(node, 0), self._run(node, 1))
            self._static.add(node) if self._is_static(node) else None
        return proxy

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ShapeProxy(node, self)

    def _run(self, node: fx.Node, env: int) -> Any:
        def value(n: fx.Node) -> Any:
            v = self._values.get(n, (_UNKNOWN, _UNKNOWN))[env]
            if v is _UNKNOWN:
                raise LookupError
            return v

        try:
            args = fx.node.map_arg(node.args, value)
            kwargs = fx.node.map_arg(node.kwargs, value)
            # Outside fx's patches of Module.__call__/__getattr__, or running a module would trace it again.
            with torch.no_grad(), _unpatched():
                if node.op == "placeholder":
                    return self._inputs[env]
                if node.op == "get_attr":
                    obj: Any = self.root
                    for part in str(node.target).split("."):
                        obj = getattr(obj, part)
                    return obj
                target: Any = node.target
                if node.op == "call_function":
                    return target(*args, **kwargs)
                if node.op == "call_method":
                    return getattr(args[0], target)(*args[1:], **kwargs)
                if node.op == "call_module":
                    return self.root.get_submodule(str(node.target))(*args, **kwargs)
        except Exception:  # noqa: BLE001 - a value we cannot compute is simply unknown (never decided on)
            return _UNKNOWN
        return _UNKNOWN

    def _is_static(self, node: fx.Node) -> bool:
        """Whether the node's value depends on tensor shapes (and constants) only, never on tensor values."""
        values = self._values[node]
        if any(v is _UNKNOWN or _holds_tensor(v) for v in values):
            return False
        if node.op == "call_function" and node.target is getattr and node.args[1] in _SHAPE_ATTRS:
            return True
        if node.op == "call_method" and node.target in _SHAPE_METHODS:
            return True
        if node.op not in ("call_function", "call_method"):
            return False
        inputs = node.all_input_nodes
        return all(n in self._static for n in inputs)

    # ------------------------------------------------------------------------------------------ deciding
    def decide(self, node: fx.Node, convert, what: str) -> Any:
        """The real value of a static node, converted (``bool``, ``int``...); refuses data- or batch-dependence."""
        if node not in self._static:
            raise ShapeTraceError(f"{what} at '{node.name}' ({_describe(node)}) depends on tensor values, not only "
                                  "on shapes")
        first, other = (convert(v) for v in self._values[node])
        if first != other:
            raise ShapeTraceError(f"{what} at '{node.name}' ({_describe(node)}) depends on the batch size, which "
                                  "stays dynamic in the engines")
        self.decisions.append(f"{node.name} -> {first!r}")
        return first

    def to_bool(self, obj: fx.Proxy) -> bool:
        return self.decide(obj.node, bool, "a branch")

    def iter(self, obj: fx.Proxy):
        n = self.decide(obj.node, len, "iteration")
        return iter([obj[i] for i in range(n)])  # type: ignore[index]  # Proxy.__getitem__ is added at runtime


class _ShapeProxy(fx.Proxy):
    """A proxy whose ``int()``, ``len()`` and ``operator.index`` ask the tracer for the real (static) value."""

    tracer: ShapeTracer

    def __len__(self) -> int:
        return self.tracer.decide(self.node, len, "len()")

    def __int__(self) -> int:
        return self.tracer.decide(self.node, int, "int()")

    def __index__(self) -> int:
        return self.tracer.decide(self.node, operator.index, "an index")

    def __float__(self) -> float:
        return self.tracer.decide(self.node, float, "float()")


def _unpatched():
    """fx's context manager that lifts its tracing patches for a while (private API: checked at import below)."""
    return _symbolic_trace._maybe_revert_all_patches()


def _holds_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)) and not isinstance(value, torch.Size):
        return any(_holds_tensor(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_tensor(v) for v in value.values())
    return False


def _describe(node: fx.Node) -> str:
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    args = ", ".join(a.name if isinstance(a, fx.Node) else repr(a) for a in node.args)
    where = [(f, line) for f, line in re.findall(r'File "([^"]+)", line (\d+)', node.stack_trace or "")
             if f"{os.sep}torch{os.sep}" not in f and f != __file__]  # the user's frames, not fx's or ours
    return f"{target}({args})" + (f", {Path(where[-1][0]).name}:{where[-1][1]}" if where else "")


def trace(model: nn.Module, example_input: torch.Tensor) -> tuple[fx.GraphModule, str]:
    """Trace ``model`` (already in eval mode): ``symbolic_trace``, else the shape-specialising fallback.

    Returns:
        The graph module and the route that worked (``"fx"`` or ``"fx+shapes"``).

    Raises:
        RuntimeError: with a one-line message naming both failures when neither route traces the model.
    """
    try:
        return fx.symbolic_trace(model), "fx"
    except Exception as exc:  # noqa: BLE001 - any failure: try the fallback, then report both
        first = exc
    if not FALLBACK_AVAILABLE:
        raise TraceFailure(first, RuntimeError(f"needs torch >= 2.1 (this is {torch.__version__})"))
    x = example_input.detach().clone()
    other = torch.cat([x, x[:1]]) if len(x) else x  # the same rows at another batch size
    tracer = ShapeTracer((x, other.clone()))
    try:
        graph = tracer.trace(model)
    except Exception as exc:  # noqa: BLE001
        raise TraceFailure(first, exc) from exc
    _drop_dead_static(graph, tracer._static)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    logger.info("%s: torch.fx could not trace it (%s); traced with shapes fixed at %s (%s)", type(model).__name__,
                _first_line(first), tuple(example_input.shape[1:]), "; ".join(tracer.decisions) or "no decisions")
    return gm, "fx+shapes"


class TraceFailure(RuntimeError):
    """Neither tracing route worked; ``fx_error`` is symbolic_trace's, ``fallback_error`` the fallback's."""

    def __init__(self, fx_error: BaseException, fallback_error: BaseException) -> None:
        self.fx_error, self.fallback_error = fx_error, fallback_error
        super().__init__(f"{_first_line(fx_error)}; with shapes fixed at the example input: "
                         f"{_first_line(fallback_error)}")


def _drop_dead_static(graph: fx.Graph, static: set[fx.Node]) -> None:
    """Remove the shape queries only a decided branch used (pure: safe to drop, unlike unused in-place ops)."""
    for node in reversed(list(graph.nodes)):
        if node in static and not node.users:
            graph.erase_node(node)
    graph.lint()


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
