"""Cut analysis on a traced, shape-propagated FX graph.

The graph's compute nodes (the placeholder and every ``call_*`` node, in topological order) are numbered
``0..n-1``; ``get_attr`` nodes are parameters and are left out (each block copies the ones it uses). A *cut
after position k* splits the nodes into ``[0..k]`` and ``[k+1..n-1]``; it is valid when exactly one value
produced at or before ``k`` is consumed after ``k`` and that value is a tensor.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import TensorMetadata

from legocompile.errors import LegoCompileError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_CONV_TRANSPOSES = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_FUNCTIONAL_CONVS = (F.conv1d, F.conv2d, F.conv3d)


@dataclass(frozen=True)
class GraphInfo:
    """A traced graph prepared for cut analysis.

    Attributes:
        gm: The traced, shape-propagated graph module.
        nodes: Compute nodes in topological order; ``nodes[0]`` is the placeholder.
        output_values: The nodes whose values the model returns: one, or several when ``forward`` returns a tuple
            or list of tensors (a detection or pose head). Only the last block may have several outputs; every
            interior cut stays single-tensor.
        last_use: For each position, the last position that consumes its value (``n`` for the output node,
            ``-1`` when the value is unused).
        macs: For each position, the multiply-accumulates of its conv/linear layer (0 for other nodes).
    """

    gm: fx.GraphModule
    nodes: tuple[fx.Node, ...]
    output_values: tuple[fx.Node, ...]
    last_use: tuple[int, ...]
    macs: tuple[int, ...]

    @property
    def end(self) -> int:
        """The position of the last compute node: a cut there is the model's output."""
        return len(self.nodes) - 1


def is_tensor(node: fx.Node) -> bool:
    """Whether shape propagation recorded a single tensor for ``node``."""
    return isinstance(node.meta.get("tensor_meta"), TensorMetadata)


def shape_of(node: fx.Node) -> tuple[int, ...]:
    """The shape recorded for a tensor-valued node."""
    return tuple(int(d) for d in node.meta["tensor_meta"].shape)


def label(node: fx.Node) -> str:
    """A readable name for a node: the module path for module calls, else the node name."""
    return str(node.target) if node.op == "call_module" else node.name


def check_single_input(gm: fx.GraphModule, model_name: str) -> None:
    """Raise a :class:`LegoCompileError` unless the traced graph has exactly one input."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        names = ", ".join(n.name for n in placeholders)
        raise LegoCompileError(
            f"{model_name}.forward() takes {len(placeholders)} inputs ({names}); blocks need exactly one tensor input"
        )


def analyze(gm: fx.GraphModule, model_name: str) -> GraphInfo:
    """Check that a traced graph has one tensor input and tensor outputs, and index its compute nodes.

    Args:
        gm: A traced graph module on which ``ShapeProp`` has run.
        model_name: The model's class name, for error messages.

    Returns:
        The graph's :class:`GraphInfo`.

    Raises:
        LegoCompileError: If the model has several inputs or an output that is not a tensor or a flat tuple of them.
    """
    check_single_input(gm, model_name)
    output = next(n for n in gm.graph.nodes if n.op == "output")
    values = output_values(output, model_name)
    nodes = tuple(n for n in gm.graph.nodes if n.op not in ("get_attr", "output"))
    pos = {n: i for i, n in enumerate(nodes)}
    n_nodes = len(nodes)
    last_use = tuple(max((pos.get(u, n_nodes) for u in n.users), default=-1) for n in nodes)
    modules = dict(gm.named_modules())
    macs = tuple(node_macs(n, modules) for n in nodes)
    return GraphInfo(gm=gm, nodes=nodes, output_values=values, last_use=last_use, macs=macs)


def output_values(output: fx.Node, model_name: str) -> tuple[fx.Node, ...]:
    """The tensors a traced ``forward`` returns: one tensor, or a flat tuple/list of tensors (in order).

    Raises:
        LegoCompileError: for anything else (a dict, a nested tuple, a non-tensor value), naming the output.
    """
    value = output.args[0]
    several = isinstance(value, (tuple, list))
    values = tuple(value) if several else (value,)
    if several and not values:
        raise LegoCompileError(f"{model_name}.forward() returns an empty {type(value).__name__}; blocks need a tensor output")
    for k, v in enumerate(values):
        where = f"output {k} of {model_name}.forward()" if several else f"{model_name}.forward()"
        if not isinstance(v, fx.Node):
            raise LegoCompileError(
                f"{where} is a {type(v).__name__.removeprefix('immutable_')}, not a tensor (output node '{output.name}'); the model must return "
                "one tensor or a flat tuple of tensors"
            )
        if not is_tensor(v):
            raise LegoCompileError(
                f"{where} is '{label(v)}', which is not a single tensor; the model must return one tensor or a flat "
                "tuple of tensors"
            )
        if v.op == "placeholder":
            raise LegoCompileError(f"{where} is the model's input itself; every output must be computed")
    return values


def crossing_at(info: GraphInfo, k: int) -> list[fx.Node]:
    """The values produced at or before position ``k`` and consumed after it, latest first."""
    return [info.nodes[i] for i in range(k, -1, -1) if info.last_use[i] > k]


def single_crossings(info: GraphInfo) -> list[fx.Node | None]:
    """For each position ``k``, the only value crossing a cut after ``k``, or None when 0 or several cross.

    Runs in linear time by sweeping the positions with a count of live values.
    """
    n_nodes = len(info.nodes)
    dying_at: list[list[int]] = [[] for _ in range(n_nodes + 1)]
    live: set[int] = set()
    result: list[fx.Node | None] = []
    for k in range(n_nodes):
        if info.last_use[k] > k:
            live.add(k)
            dying_at[info.last_use[k]].append(k)
        live.difference_update(dying_at[k])
        result.append(info.nodes[next(iter(live))] if len(live) == 1 else None)
    return result


def valid_cuts(info: GraphInfo) -> dict[int, fx.Node]:
    """All valid interior cuts.

    Returns:
        Maps each position ``k`` in ``1..end-1`` after which the graph can be cut to the tensor that crosses
        the cut. Cuts that would leave an empty (identity) segment are dropped.
    """
    crossings = single_crossings(info)
    cuts: dict[int, fx.Node] = {}
    previous = info.nodes[0]
    for k in range(1, info.end):
        value = crossings[k]
        if value is None or not is_tensor(value) or value is previous:
            continue
        cuts[k] = value
        previous = value
    return cuts


def owners(node: fx.Node) -> set[str]:
    """The module paths a node belongs to: its ``nn_module_stack`` and, for module calls, the target and
    its ancestors."""
    paths = {entry[0] for entry in node.meta.get("nn_module_stack", {}).values() if entry and entry[0]}
    if node.op == "call_module":
        parts = str(node.target).split(".")
        paths.update(".".join(parts[: i + 1]) for i in range(len(parts)))
    return paths


def node_macs(node: fx.Node, modules: dict[str, nn.Module]) -> int:
    """Multiply-accumulates of one conv/linear node (0 for anything else)."""
    if not is_tensor(node):
        return 0
    out_numel = math.prod(shape_of(node))
    if node.op == "call_module":
        module = modules[str(node.target)]
        if isinstance(module, _CONVS):
            return out_numel * (module.in_channels // module.groups) * math.prod(module.kernel_size)
        if isinstance(module, _CONV_TRANSPOSES):
            src = node.args[0]
            in_numel = math.prod(shape_of(src)) if isinstance(src, fx.Node) and is_tensor(src) else 0
            return in_numel * (module.out_channels // module.groups) * math.prod(module.kernel_size)
        if isinstance(module, nn.Linear):
            return out_numel * module.in_features
        return 0
    if node.op == "call_function" and (node.target in _FUNCTIONAL_CONVS or node.target is F.linear):
        weight = node.args[1] if len(node.args) > 1 else node.kwargs.get("weight")
        if isinstance(weight, fx.Node) and is_tensor(weight):
            w_shape = shape_of(weight)
            return out_numel * math.prod(w_shape[1:])
    return 0


def segment_names(info: GraphInfo, segments: list[tuple[int, int]]) -> list[str]:
    """Stable, directory-safe names for segments ``(start, end]`` of compute positions.

    A segment is named by the maximal module paths all of whose nodes lie inside it: one path gives its name
    (``layer1.1``), several give ``first-last`` (``conv1-layer1.0``). Segments that own no whole module fall
    back to their module calls or node names. Collisions get ``_2``, ``_3``... suffixes.
    """
    seg_of = {info.nodes[p]: i for i, (start, end) in enumerate(segments) for p in range(start + 1, end + 1)}
    spans: dict[str, set[int]] = {}
    first_pos: dict[str, int] = {}
    for pos, node in enumerate(info.nodes[1:], start=1):
        for path in owners(node):
            spans.setdefault(path, set()).add(seg_of[node])
            first_pos.setdefault(path, pos)
    names = [_name_one(info, i, seg, spans, first_pos) for i, seg in enumerate(segments)]
    return _dedupe([_sanitize(name, i) for i, name in enumerate(names)])


def _name_one(
    info: GraphInfo, index: int, segment: tuple[int, int], spans: dict[str, set[int]], first_pos: dict[str, int]
) -> str:
    whole = {path for path, segs in spans.items() if segs == {index}}
    maximal = sorted(
        (p for p in whole if not any(".".join(p.split(".")[:i]) in whole for i in range(1, p.count(".") + 1))),
        key=lambda p: (first_pos[p], p.count(".")),
    )
    if not maximal:
        nodes = info.nodes[segment[0] + 1 : segment[1] + 1]
        maximal = [str(n.target) for n in nodes if n.op == "call_module"] or [n.name for n in nodes]
    return maximal[0] if len(maximal) == 1 or maximal[0] == maximal[-1] else f"{maximal[0]}-{maximal[-1]}"


def _sanitize(name: str, index: int) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    return safe or f"block{index}"


def _dedupe(names: list[str]) -> list[str]:
    seen: set[str] = set()
    result = []
    for name in names:
        candidate, suffix = name, 2
        while candidate in seen:
            candidate, suffix = f"{name}_{suffix}", suffix + 1
        seen.add(candidate)
        result.append(candidate)
    return result
