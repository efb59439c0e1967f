"""Channel-dependency analysis of a block's ``torch.fx`` graph.

A *channel group* is a set of tensors that share one channel axis: the outputs of one or more producer layers (a
``groups=1`` ``Conv2d`` or a 2-D ``Linear``) and everything they flow through without mixing channels (BatchNorm,
element-wise activations, dropout, spatial pooling, depthwise convs, flatten, residual adds between members of the
group), up to the layers that consume the channels (``groups=1`` convs / linears, whose *input* channels shrink).
Removing channel ``c`` of a group removes filter ``c`` of every producer and depthwise conv, entry ``c`` of every
BatchNorm and input channel ``c`` of every consumer; nothing else in the block changes.

A group is prunable only when nothing else sees its channel axis. It is *blocked* (left whole, reported with a reason)
when a member reaches the block's output or input (including through a residual add with the identity shortcut), feeds
a concatenation, a grouped conv, an element-wise op with a tensor from outside the group, or any op not on the
allow-list below. Unknown means blocked: the analysis is safe by default.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

# Single-tensor ops that act on each channel independently and keep the channel axis at dim 1.
_UNARY_MODULES: tuple[type[nn.Module], ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Identity,
    nn.Dropout, nn.Dropout2d, nn.AlphaDropout,
    nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Upsample,
    nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d, nn.ReplicationPad2d,
)
_UNARY_FUNCTIONS = {
    F.relu, F.relu_, torch.relu, torch.relu_, F.relu6, F.leaky_relu, F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish,
    F.hardswish, F.hardsigmoid, F.hardtanh, torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, F.softplus, torch.clamp,
    F.dropout, F.dropout2d, F.alpha_dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d, F.interpolate, torch.flatten, torch.mean, operator.neg, torch.neg,
}
_UNARY_METHODS = {
    "relu", "relu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "clamp", "clamp_", "clamp_min", "clamp_min_",
    "contiguous", "flatten", "view", "reshape", "mean", "neg", "float", "half", "to",
}
# Element-wise ops: every tensor operand must belong to the same group (a residual add inside the group is fine).
_BINARY_FUNCTIONS = {
    operator.add, operator.iadd, operator.sub, operator.isub, operator.mul, operator.imul, operator.truediv,
    operator.itruediv, torch.add, torch.sub, torch.mul, torch.div,
}
_BINARY_METHODS = {"add", "add_", "sub", "sub_", "mul", "mul_", "div", "div_"}
_CONCAT_FUNCTIONS = {torch.cat, torch.concat, torch.stack}
# Queries of a tensor's size are evaluated at run time, so they follow the pruned width by themselves.
_SIZE_METHODS = {"size", "dim"}
_BINARY_NAMES = {
    operator.add: "add", operator.iadd: "add", torch.add: "add", "add": "add", "add_": "add",
    operator.mul: "mul", operator.imul: "mul", torch.mul: "mul", "mul": "mul", "mul_": "mul",
}


@dataclass
class ChannelGroup:
    """One channel axis shared by the layers listed (all paths are module paths in the block)."""

    channels: int
    producers: list[str] = field(default_factory=list)  # output filters removed
    depthwise: list[str] = field(default_factory=list)  # filters removed, groups shrink with them
    batchnorms: list[str] = field(default_factory=list)  # entries removed
    consumers: dict[str, int] = field(default_factory=dict)  # path -> features per channel; input channels removed
    reasons: list[str] = field(default_factory=list)  # why the group is blocked (empty: prunable)
    residual: str | None = None  # name of an element-wise op joining two members, for the report

    @property
    def prunable(self) -> bool:
        return not self.reasons and bool(self.producers)

    @property
    def reason(self) -> str:
        if not self.reasons:
            return ""
        if self.residual and not self.reasons[0].startswith("output feeds"):
            return f"output feeds a residual {self.residual}; {self.reasons[0]}"
        return self.reasons[0]


class _ShapeRecorder(fx.Interpreter):
    """Shape propagation (like ``torch.fx.passes.shape_prop.ShapeProp``) that keeps shapes in a dict."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.shapes: dict[fx.Node, tuple[int, ...]] = {}

    def run_node(self, n: fx.Node):
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shapes[n] = tuple(result.shape)
        return result


def record_shapes(gm: fx.GraphModule, example_input: torch.Tensor) -> tuple[dict[fx.Node, tuple[int, ...]], object]:
    """Run ``gm`` on ``example_input``; return the shape of every tensor-valued node, and the output."""
    recorder = _ShapeRecorder(gm)
    with torch.no_grad():
        out = recorder.run(example_input)
    return recorder.shapes, out


class _Analysis:
    def __init__(self, gm: fx.GraphModule, shapes: dict[fx.Node, tuple[int, ...]]) -> None:
        self.gm = gm
        self.shapes = shapes
        self.modules = dict(gm.named_modules())
        self.calls: dict[str, int] = {}
        for n in gm.graph.nodes:
            if n.op == "call_module":
                self.calls[n.target] = self.calls.get(n.target, 0) + 1

    # --- node classification -------------------------------------------------------------------------------
    def kind(self, n: fx.Node) -> tuple[str, str]:
        """('producer'|'depthwise'|'grouped'|'bn'|'unary'|'binary'|'concat'|'size'|'input'|'output'|'unknown', note)."""
        if n.op == "placeholder":
            return "input", ""
        if n.op == "output":
            return "output", ""
        if n.op == "get_attr":
            return "unknown", f"constant tensor '{n.target}'"
        if n.op == "call_module":
            m = self.modules[n.target]
            stateful = any(True for _ in m.parameters()) or any(True for _ in m.buffers())
            if self.calls[n.target] > 1 and stateful:  # reusing a stateless ReLU is fine
                return "unknown", f"shared module '{n.target}' (called at {self.calls[n.target]} sites)"
            if type(m) is nn.Conv2d:
                if m.groups == 1:
                    return "producer", ""
                if m.groups == m.in_channels == m.out_channels:
                    return "depthwise", ""
                return "grouped", f"grouped conv '{n.target}' (groups={m.groups}, {m.in_channels}->{m.out_channels})"
            if type(m) is nn.Linear:
                if len(self.shapes.get(n, ())) == 2:
                    return "producer", ""
                return "unknown", f"Linear '{n.target}' on a tensor that is not 2-D"
            if type(m) in (nn.BatchNorm2d, nn.BatchNorm1d):
                return "bn", ""
            if type(m) is nn.Flatten:
                return ("unary", "") if m.start_dim == 1 and m.end_dim == -1 else ("unknown", f"'{n.target}'")
            if type(m) is nn.PReLU and m.num_parameters == 1:
                return "unary", ""
            if isinstance(m, _UNARY_MODULES):
                return "unary", ""
            return "unknown", f"module '{n.target}' ({type(m).__name__})"
        name = n.target if isinstance(n.target, str) else getattr(n.target, "__name__", str(n.target))
        if n.op == "call_method" and n.target in _SIZE_METHODS:
            return "size", ""
        if n.op == "call_function" and n.target is getattr and len(n.args) > 1 and n.args[1] in ("shape", "ndim"):
            return "size", ""
        if (n.op == "call_function" and n.target in _CONCAT_FUNCTIONS) or (n.op == "call_method" and name == "cat"):
            return "concat", name
        if (n.op == "call_function" and n.target in _BINARY_FUNCTIONS) or (
            n.op == "call_method" and n.target in _BINARY_METHODS
        ):
            return "binary", _BINARY_NAMES.get(n.target, name)
        if (n.op == "call_function" and n.target in _UNARY_FUNCTIONS) or (
            n.op == "call_method" and n.target in _UNARY_METHODS
        ):
            if len(self.tensor_inputs(n)) == 1:
                return "unary", ""
            return "unknown", f"'{name}' with several tensor operands"
        return "unknown", f"op '{name}' ('{n.name}')"

    def tensor_inputs(self, n: fx.Node) -> list[fx.Node]:
        return [a for a in n.all_input_nodes if a in self.shapes]

    def layout(self, n: fx.Node, channels: int, batch: int) -> int | None:
        """Features per channel at ``n`` (1 for N,C,H,W; H*W after a flatten), or None if the axis is not dim 1."""
        shape = self.shapes.get(n)
        if shape is None or len(shape) not in (2, 4) or shape[0] != batch or shape[1] % channels:
            return None
        if len(shape) == 4:
            return 1 if shape[1] == channels else None
        return shape[1] // channels

    # --- group search --------------------------------------------------------------------------------------
    def group_from(self, start: fx.Node, seen: set[fx.Node]) -> ChannelGroup:
        """Collect the group holding ``start``'s output channels (``start`` is a conv or linear node)."""
        m = self.modules[start.target]
        kind, note = self.kind(start)
        group = ChannelGroup(channels=m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
        if kind in ("grouped", "unknown"):  # its filters cannot be removed on their own; not marked seen, so a
            group.producers.append(start.target)  # group reaching it from elsewhere is blocked by it too
            group.reasons.append(f"{note} is left whole" if kind == "grouped" else f"unsupported {note}")
            return group
        seen.add(start)
        batch = self.shapes[start][0]
        queue = [start]
        while queue:
            v = queue.pop(0)
            kind, note = self.kind(v)
            factor = self.layout(v, group.channels, batch)
            if factor is None:
                group.reasons.append(f"unexpected tensor shape {self.shapes.get(v)} at '{v.name}'")
            # Backwards: how the channels got here.
            if kind == "producer":
                group.producers.append(v.target)
            elif kind in ("depthwise", "bn", "unary", "binary"):
                if kind == "depthwise":
                    group.depthwise.append(v.target)
                elif kind == "bn":
                    group.batchnorms.append(v.target)
                inputs = self.tensor_inputs(v)
                if kind == "binary" and len(inputs) > 1:
                    group.residual = group.residual or f"{note} ('{v.name}')"
                for u in inputs:
                    if u in seen:
                        continue
                    seen.add(u)
                    u_kind, u_note = self.kind(u)
                    if u_kind == "input":
                        group.reasons.append("channels are tied to the block input")
                    elif u_kind in ("producer", "depthwise", "bn", "unary", "binary"):
                        queue.append(u)
                    else:
                        group.reasons.append(f"channels come from {u_note or u_kind} ('{u.name}')")
            else:
                group.reasons.append(f"channels pass through unsupported {note or kind}")
            # Forwards: who sees the channels.
            for w in v.users:
                w_kind, w_note = self.kind(w)
                if w_kind == "size":
                    continue
                if w_kind == "output":
                    group.reasons.append("channels reach the block output")
                elif w_kind == "producer":
                    wm = self.modules[w.target]
                    if isinstance(wm, nn.Conv2d) != (factor == 1 and len(self.shapes.get(v, ())) == 4):
                        group.reasons.append(f"unexpected input layout for '{w.target}'")
                    else:
                        group.consumers[w.target] = factor or 1
                elif w_kind == "concat":
                    group.reasons.append(f"output feeds a concatenation ('{w.name}')")
                elif w_kind in ("depthwise", "bn", "unary", "binary"):
                    if w not in seen:
                        seen.add(w)
                        queue.append(w)
                else:
                    group.reasons.append(f"channel path reaches {w_note or w_kind}")
        for bn in group.batchnorms:
            if self.modules[bn].num_features != group.channels:
                group.reasons.append(f"BatchNorm '{bn}' has {self.modules[bn].num_features} features")
        if not group.producers and not group.reasons:
            group.reasons.append("no layer produces these channels")
        return group


def find_groups(gm: fx.GraphModule, shapes: dict[fx.Node, tuple[int, ...]]) -> list[ChannelGroup]:
    """Every channel group of ``gm``, one per conv/linear output space, in graph order."""
    analysis = _Analysis(gm, shapes)
    seen: set[fx.Node] = set()
    groups = []
    for n in gm.graph.nodes:
        if n.op == "call_module" and n not in seen and type(analysis.modules[n.target]) in (nn.Conv2d, nn.Linear):
            groups.append(analysis.group_from(n, seen))
    return groups
