"""Cut a traced CNN into a chain of single-tensor-in, single-tensor-out blocks (the last may return several tensors).

:func:`partition` traces the model with ``torch.fx`` (control flow on shapes is decided at the example input's shape:
see :mod:`legocompile.blocks.trace`), finds the points where exactly one tensor crosses from
the nodes before to the nodes after, and builds one ``fx.GraphModule`` per segment. Composing the blocks in
order equals the model's forward (:func:`verify_partition` checks it). A model whose ``forward`` returns a flat tuple
of tensors (detection and pose heads) gets a last block that returns that tuple; a cut inside the chain where more
than one tensor would cross is refused with the tensors named.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from legocompile.blocks.graph import (
    GraphInfo,
    analyze,
    check_single_input,
    crossing_at,
    is_tensor,
    label,
    owners,
    segment_names,
    shape_of,
    valid_cuts,
)
from legocompile.blocks.trace import TraceFailure, trace
from legocompile.errors import LegoCompileError
from legocompile.modes import eval_mode
from legocompile.outputs import as_outputs


@dataclass(frozen=True)
class Block:
    """One block of a partitioned model.

    Attributes:
        name: Stable, directory-safe name (``layer1.1``, ``conv1-layer1.0``).
        module: The block's graph module: one tensor in; one tensor out, or (the last block of a model that
            returns a tuple) a tuple of tensors; owns copies of its parameters.
        input_shape: Input shape at the example input's batch size.
        output_shapes: Shape of each output at the example input's batch size (one entry except for such a last
            block).
        macs: Multiply-accumulates of the block's conv/linear layers for the example input.
    """

    name: str
    module: fx.GraphModule
    input_shape: tuple[int, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    macs: int

    @property
    def output_shape(self) -> tuple[int, ...]:
        """The shape of the block's output; for a block with several outputs, the first one's."""
        return self.output_shapes[0]

    @property
    def num_outputs(self) -> int:
        return len(self.output_shapes)


def partition(
    model: nn.Module,
    example_input: torch.Tensor,
    blocks: str | Sequence[str] = "auto",
    *,
    max_blocks: int | None = 8,
) -> list[Block]:
    """Cut ``model`` into a chain of blocks whose composition equals its forward.

    Args:
        model: The model; it is traced in eval mode and left unchanged (training flags included).
        example_input: One input tensor; it fixes the recorded shapes and MACs.
        blocks: ``"auto"`` to cut at every valid point, or module paths (``["layer1", "layer2.1", "fc"]``, or
            one comma-separated string) each ending a block; the last must end the model.
        max_blocks: With ``"auto"``, merge adjacent segments (smallest combined MACs first) until at most this
            many remain; None keeps every segment. Ignored for explicit lists.

    Returns:
        The blocks, in forward order.

    Raises:
        LegoCompileError: If the model cannot be traced or run on the example input, does not have one tensor
            input and one tensor output, or an explicit boundary is not a valid cut.
    """
    if not isinstance(example_input, torch.Tensor):
        raise LegoCompileError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    if max_blocks is not None and max_blocks < 1:
        raise LegoCompileError(f"max_blocks must be at least 1, got {max_blocks}")
    info = analyze(_trace(model, example_input), type(model).__name__)
    if isinstance(blocks, str) and blocks.strip() == "auto":
        segments = _auto_segments(info, max_blocks)
    else:
        paths = [p.strip() for p in blocks.split(",")] if isinstance(blocks, str) else [str(p) for p in blocks]
        segments = _explicit_segments(info, model, paths)
    names = segment_names(info, segments)
    return [_build_block(info, name, start, end) for name, (start, end) in zip(names, segments)]


def verify_partition(model: nn.Module, blocks: Sequence[Block], x: torch.Tensor) -> float:
    """Run the model and the chain of blocks on ``x`` (eval mode, no grad) and compare.

    Args:
        model: The original model; its training flags are restored afterwards.
        blocks: The blocks from :func:`partition`.
        x: An input batch.

    Returns:
        The maximum absolute difference between the model's output and the chain's (over every output).

    Raises:
        LegoCompileError: If the chain's output shapes differ from the model's.
    """
    with eval_mode(model, *(b.module for b in blocks)), torch.no_grad():
        expected = as_outputs(model(x.clone()))  # clones: an in-place first op must not alter the other run's input
        actual = x.clone()
        for block in blocks:
            actual = block.module(actual)
        actual = as_outputs(actual)
    got, want = [tuple(a.shape) for a in actual], [tuple(e.shape) for e in expected]
    if got != want:
        show = lambda shapes: str(shapes[0]) if len(shapes) == 1 else f"{len(shapes)} tensors {shapes}"  # noqa: E731
        raise LegoCompileError(f"the chain of blocks returns shape {show(got)} but the model returns {show(want)}")
    return max(((a.float() - e.float()).abs().max().item() if e.numel() else 0.0 for a, e in zip(actual, expected)),
               default=0.0)


def _trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    name = type(model).__name__
    with eval_mode(model):
        try:
            gm, _route = trace(model, example_input)
        except TraceFailure as exc:
            raise LegoCompileError(
                f"cannot trace {name} with torch.fx: {exc} — make forward() free of data-dependent control flow"
            ) from exc
        check_single_input(gm, name)
        _propagate_shapes(gm, example_input, name)
    return gm


def _propagate_shapes(gm: fx.GraphModule, example_input: torch.Tensor, model_name: str) -> None:
    """Run ``ShapeProp``; a failure becomes a one-line error naming the node and the root cause."""
    try:
        # ShapeProp prints a traceback before re-raising; the LegoCompileError below says it in one line.
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(gm).propagate(example_input)
    except Exception as exc:  # noqa: BLE001 - any failure on the example input is reported the same way
        node = next((n for n in gm.graph.nodes if n.format_node() in str(exc)), None)
        where = f" at '{label(node)}'" if node is not None else ""
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        raise LegoCompileError(
            f"running {model_name} on the example input of shape {tuple(example_input.shape)} failed{where}: "
            f"{_first_line(cause)}"
        ) from exc


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _segment_macs(info: GraphInfo, start: int, end: int) -> int:
    return sum(info.macs[start + 1 : end + 1])


def _auto_segments(info: GraphInfo, max_blocks: int | None) -> list[tuple[int, int]]:
    """Segments between all valid cuts, anchored on conv/linear layers, then greedily merged to ``max_blocks``.

    A segment without MACs (BN, activation, pooling, flatten...) joins the segment before it, so a conv keeps
    the layers that post-process its output; a leading MAC-free run joins the first segment with MACs.
    """
    bounds = [0, *valid_cuts(info), info.end]
    segments: list[tuple[int, int]] = []
    macs: list[int] = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        seg_macs = _segment_macs(info, start, end)
        if segments and (seg_macs == 0 or macs[-1] == 0):
            segments[-1], macs[-1] = (segments[-1][0], end), macs[-1] + seg_macs
        else:
            segments.append((start, end))
            macs.append(seg_macs)
    while max_blocks is not None and len(segments) > max_blocks:
        i = min(range(len(segments) - 1), key=lambda j: (macs[j] + macs[j + 1], j))
        segments[i : i + 2] = [(segments[i][0], segments[i + 1][1])]
        macs[i : i + 2] = [macs[i] + macs[i + 1]]
    return segments


def _explicit_segments(info: GraphInfo, model: nn.Module, paths: list[str]) -> list[tuple[int, int]]:
    if not paths or any(not p for p in paths):
        raise LegoCompileError(f"blocks must be 'auto' or a list of module paths, got {paths!r}")
    known = {name for name, _ in model.named_modules() if name}
    top = [name for name, _ in model.named_children()]
    bounds = [0]
    previous = info.nodes[0]
    for i, path in enumerate(paths):
        end = _module_end(info, path, known, top)
        if i == len(paths) - 1:
            end = _extend_to_output(info, path, end)
        if end <= bounds[-1]:
            raise LegoCompileError(
                f"block '{path}' ends at or before the previous block boundary '{paths[i - 1]}' — "
                "list modules in forward order, without overlap"
            )
        if end != info.end:
            crossing = crossing_at(info, end)
            if len(crossing) != 1 or not is_tensor(crossing[0]):
                raise LegoCompileError(_bad_cut_message(info, path, end, crossing))
            if crossing[0] is previous:
                raise LegoCompileError(f"block '{path}' would be empty: it does not change the value it receives")
            previous = crossing[0]
        bounds.append(end)
    return list(zip(bounds[:-1], bounds[1:]))


def _module_end(info: GraphInfo, path: str, known: set[str], top: list[str]) -> int:
    if path not in known:
        shown = ", ".join(top[:8]) + (", ..." if len(top) > 8 else "")
        nested = next((name for name in sorted(known) if "." in name), None)
        hint = f" (nested modules use dotted paths, e.g. '{nested}')" if nested else ""
        raise LegoCompileError(f"unknown module '{path}' in blocks; top-level modules are: {shown}{hint}")
    positions = [pos for pos, node in enumerate(info.nodes) if path in owners(node)]
    if not positions:
        raise LegoCompileError(f"module '{path}' is never called in forward(), so no block can end after it")
    return max(positions)


def _extend_to_output(info: GraphInfo, path: str, end: int) -> int:
    """The last block ends at the model's output; only module-free (functional) nodes may follow ``path``."""
    trailing = [n for n in info.nodes[end + 1 :] if owners(n)]
    if trailing:
        raise LegoCompileError(
            f"the last block ends after '{path}' but '{label(trailing[0])}' runs after it — the chain would not "
            "cover the model; end the list with a module that finishes the model"
        )
    return info.end


def _bad_cut_message(info: GraphInfo, path: str, end: int, crossing: list[fx.Node]) -> str:
    at = label(info.nodes[end])
    where = f"cannot cut after '{path}'" + ("" if path == at else f" (at '{at}')")
    names = ", ".join(label(n) for n in crossing)
    if len(crossing) == 1:
        what = f"the value crossing the cut ({names}) is not a tensor"
    else:
        kind = "tensors" if all(is_tensor(n) for n in crossing) else "values"
        what = f"{len(crossing)} {kind} cross the cut ({names})"
    return (f"{where}: {what} — a block boundary inside the chain carries exactly one tensor (only the model's own "
            "output may be several); choose a boundary where exactly one tensor crosses")


def _build_block(info: GraphInfo, name: str, start: int, end: int) -> Block:
    source = info.nodes[start]
    results = info.output_values if end == info.end else (crossing_at(info, end)[0],)
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {source: graph.placeholder("x")}

    def remap(node: fx.Node) -> fx.Node:
        if node not in env and node.op == "get_attr":
            env[node] = graph.node_copy(node)
        return env[node]

    for node in info.nodes[start + 1 : end + 1]:
        env[node] = graph.node_copy(node, remap)
    several = len(info.output_values) > 1 and end == info.end
    graph.output(tuple(env[r] for r in results) if several else env[results[0]])
    module = fx.GraphModule(info.gm, graph, class_name="Block")
    module.graph.eliminate_dead_code()
    module.recompile()
    module = copy.deepcopy(module)
    module.eval()
    return Block(
        name=name,
        module=module,
        input_shape=shape_of(source),
        output_shapes=tuple(shape_of(r) for r in results),
        macs=_segment_macs(info, start, end),
    )
