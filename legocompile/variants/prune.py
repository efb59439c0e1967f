"""Descendant block variants by structured L1-norm filter pruning (LegoDNN, MobiCom'21).

:func:`prune_block` removes the lowest-L1 output filters of every prunable channel group of a block (see
:mod:`legocompile.variants.groups`) and physically rebuilds the affected ``Conv2d`` / ``BatchNorm`` / ``Linear``
layers smaller, so the variant keeps exactly the block's input and output shapes. A variant is stored as safetensors
weights plus its ``architecture`` (JSON: layer path -> constructor arguments); :func:`apply_architecture` rebuilds the
empty variant from the original block so the weights load strictly. Modules are never pickled.

How much a block shrinks: channels tied to the block boundary never shrink, but almost all parameters of the usual
blocks sit in layers that touch a prunable group. In a ResNet basic block the group ``conv1 -> bn1 -> relu -> conv2``
covers conv1's outputs *and* conv2's inputs, i.e. nearly both 3x3 convs, so the 0.8 variant is ~5x smaller (only
bn2 and the shortcut stay whole). Channels tied by a residual add can only be pruned when the whole add-connected
set stays inside the block (they are merged into one group then); in ResNet / MobileNetV2 the residual stream always
reaches the block input or output through the identity shortcut, so it stays whole.

Kept widths are rounded to a multiple (``channel_multiple``, micronet's "regular pruning"): the blocked convolution
kernels of ONNX Runtime on x86 work on groups of 8 (AVX2) or 16 (AVX-512) channels and TensorRT's tensor cores on 8
(fp16) or 32 (int8), so a layer cut to 19 channels costs about what one of 24 costs, and a partial group can make a
variant slower than its original. The default, ``[variants] channel_multiple`` = 8
(:data:`legocompile.config.DEFAULT_CHANNEL_MULTIPLE`), was chosen by measurement (``benchmarks/bench_variants.py
--latency``: the example's 8 blocks, ORT fp32 and int8, one thread, batch 1, AVX2): with plain rounding the 0.4
variants ran at 0.77-1.03x their originals for 0.60x the parameters, two int8 ones no faster than the original;
with 8 every variant ran at <= 0.73x, the 0.4 ones at 0.63x on average for 0.59x the parameters; 16 did as well at
0.4 but cannot cut a 32-channel group below 16 (the 0.8 variants of the first blocks keep half), and 32 leaves those
groups whole at 0.4. A report's ``param_sparsity`` is the fraction of the block's parameters actually removed,
which differs from the requested channel sparsity.
"""

from __future__ import annotations

import copy
import math
import numbers
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from legocompile._log import logger
from legocompile.config import DEFAULT_CHANNEL_MULTIPLE
from legocompile.errors import LegoCompileError
from legocompile.modes import eval_mode
from legocompile.outputs import as_outputs
from legocompile.variants.groups import ChannelGroup, find_groups, record_shapes

_LAYER_TYPES: dict[str, type[nn.Module]] = {
    "Conv2d": nn.Conv2d, "BatchNorm2d": nn.BatchNorm2d, "BatchNorm1d": nn.BatchNorm1d, "Linear": nn.Linear,
}


@dataclass(frozen=True)
class GroupReport:
    """One pruned channel group: the layers touched and its width before and after."""

    producers: tuple[str, ...]  # convs / linears whose output filters were removed
    depthwise: tuple[str, ...]  # depthwise convs whose filters (and groups) were removed with them
    batchnorms: tuple[str, ...]  # BatchNorms whose entries were removed
    consumers: tuple[str, ...]  # convs / linears whose input channels were removed
    channels_before: int
    channels_after: int
    kept: tuple[int, ...]  # kept channel indices, ascending


@dataclass(frozen=True)
class PruneReport:
    sparsity: float
    groups: tuple[GroupReport, ...]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (layer path, why its outputs are left whole)
    params_before: int = 0
    params_after: int = 0
    channel_multiple: int = 1

    @property
    def param_sparsity(self) -> float:
        """Fraction of the block's parameters removed (``1 - params_after / params_before``)."""
        return 1.0 - self.params_after / self.params_before if self.params_before else 0.0

    @property
    def reduction(self) -> float:
        """``params_before / params_after`` (1.0 when nothing was pruned)."""
        return self.params_before / self.params_after if self.params_after else math.inf

    def to_dict(self) -> dict:
        return {
            "sparsity": self.sparsity,
            "channel_multiple": self.channel_multiple,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "param_sparsity": self.param_sparsity,
            "groups": [
                {
                    "producers": list(g.producers), "depthwise": list(g.depthwise), "batchnorms": list(g.batchnorms),
                    "consumers": list(g.consumers), "channels_before": g.channels_before,
                    "channels_after": g.channels_after,
                }
                for g in self.groups
            ],
            "skipped": [list(s) for s in self.skipped],
        }


@dataclass(frozen=True)
class PrunedBlock:
    module: nn.Module
    architecture: dict  # JSON-serialisable: layer path -> constructor arguments of its replacement
    report: PruneReport


def count_parameters(module: nn.Module) -> int:
    """Number of scalar parameters (shared parameters counted once)."""
    return sum(p.numel() for p in module.parameters())


def kept_channels(channels: int, sparsity: float, multiple: int = DEFAULT_CHANNEL_MULTIPLE) -> int:
    """How many of a group's ``channels`` pruning at ``sparsity`` keeps: the width nearest to ``(1 - sparsity) *
    channels`` among the multiples of ``multiple`` below ``channels`` and ``channels`` itself (the larger on a tie).
    A group no wider than ``multiple`` fits one kernel block whatever its width, so it keeps the plain
    ``max(1, round(...))``."""
    check_channel_multiple(multiple)
    target = (1.0 - sparsity) * channels
    if multiple == 1 or channels <= multiple:
        return max(1, round(target))
    below = max(multiple, multiple * math.floor(target / multiple))
    candidates = [c for c in (below, below + multiple) if c < channels] + [channels]
    return min(candidates, key=lambda c: (abs(c - target), -c))


def check_channel_multiple(multiple: object) -> int:
    if isinstance(multiple, bool) or not isinstance(multiple, numbers.Integral) or multiple < 1:
        raise LegoCompileError(f"channel_multiple must be a positive integer (e.g. 8, 16, 32), got {multiple!r}")
    return int(multiple)


def prune_block(
    block: nn.Module, example_input: torch.Tensor, sparsity: float, *, channel_multiple: int = DEFAULT_CHANNEL_MULTIPLE
) -> PrunedBlock:
    """Prune ``sparsity`` of the channels of every prunable group of ``block`` (which is not modified).

    Each group keeps its :func:`kept_channels` channels of largest L1 filter norm (summed over the group's producers
    and depthwise convs, each normalised by its mean). Sparsity 0 returns an unmodified deep copy.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real) or not 0.0 <= sparsity < 1.0:
        raise LegoCompileError(f"sparsity must be a number in [0, 1), got {sparsity!r} (e.g. 0.2, 0.4, 0.6, 0.8)")
    channel_multiple = check_channel_multiple(channel_multiple)
    if not isinstance(example_input, torch.Tensor):
        raise LegoCompileError(f"example_input must be a torch.Tensor, got {type(example_input).__name__}")
    sparsity = float(sparsity)
    module = copy.deepcopy(block)
    gm, groups, ref_out = _analyse(module, example_input)
    before = count_parameters(module)
    skipped = list(dict.fromkeys((p, g.reason) for g in groups if not g.prunable for p in g.producers + g.depthwise))
    if sparsity == 0.0:
        reports = tuple(_group_report(g, list(range(g.channels))) for g in groups if g.prunable)
        return PrunedBlock(module, {}, PruneReport(0.0, reports, skipped, before, before, channel_multiple))

    modules = dict(gm.named_modules())
    out_keep: dict[str, torch.Tensor] = {}
    in_keep: dict[str, torch.Tensor] = {}
    reports = []
    for g in groups:
        if not g.prunable:
            continue
        keep = _select(g, modules, kept_channels(g.channels, sparsity, channel_multiple))
        for path in g.producers + g.depthwise + g.batchnorms:
            out_keep[path] = keep
        for path, factor in g.consumers.items():
            in_keep[path] = (keep[:, None] * factor + torch.arange(factor)).reshape(-1)
        reports.append(_group_report(g, keep.tolist()))
        logger.debug("pruning group %s: %d -> %d channels", g.producers, g.channels, len(keep))

    architecture: dict[str, dict] = {}
    for path in sorted(set(out_keep) | set(in_keep)):
        old = modules[path]
        spec = _shrunk_spec(old, out_keep.get(path), in_keep.get(path))
        new = _build(spec, old)
        _copy_kept(old, new, out_keep.get(path), in_keep.get(path))
        _set_submodule(module, path, new)
        architecture[path] = spec

    with eval_mode(module), torch.no_grad():
        out = module(example_input)
    if _output_shapes(out) != _output_shapes(ref_out):
        raise RuntimeError(
            f"internal error: pruning changed the block output from {_output_shapes(ref_out)} to {_output_shapes(out)}"
        )
    report = PruneReport(sparsity, tuple(reports), skipped, before, count_parameters(module), channel_multiple)
    return PrunedBlock(module, architecture, report)


def apply_architecture(block: nn.Module, architecture: dict) -> nn.Module:
    """A deep copy of the *original* ``block`` with the layers in ``architecture`` replaced by empty layers of the
    recorded shapes, ready for ``load_state_dict(strict=True)`` of the pruned variant's weights."""
    if not isinstance(architecture, dict):
        raise LegoCompileError(f"architecture must be a dict (layer path -> spec), got {type(architecture).__name__}")
    module = copy.deepcopy(block)
    for path, spec in architecture.items():
        try:
            old = module.get_submodule(path)
        except AttributeError:
            raise LegoCompileError(
                f"architecture names layer '{path}', which the block ({type(block).__name__}) does not have; "
                "was the variant pruned from a different block?"
            ) from None
        if not isinstance(spec, dict) or spec.get("type") not in _LAYER_TYPES:
            raise LegoCompileError(f"architecture entry for '{path}' has an unknown layer spec: {spec!r}")
        if type(old).__name__ != spec["type"]:
            raise LegoCompileError(
                f"architecture says '{path}' is a {spec['type']} but the block has a {type(old).__name__} there"
            )
        _set_submodule(module, path, _build(spec, old))
    return module


# --- analysis ----------------------------------------------------------------------------------------------------


def _analyse(module: nn.Module, x: torch.Tensor) -> tuple[fx.GraphModule, list[ChannelGroup], torch.Tensor]:
    if isinstance(module, fx.GraphModule):
        gm = fx.GraphModule(module, copy.deepcopy(module.graph))  # shares the layers, not the graph
    else:
        try:
            gm = fx.symbolic_trace(module)
        except Exception as e:  # noqa: BLE001 - any tracing failure is the same user error
            raise LegoCompileError(
                f"cannot trace block {type(module).__name__} with torch.fx ({type(e).__name__}: {e}); "
                "make its forward symbolically traceable or pass a torch.fx.GraphModule"
            ) from None
    try:
        with eval_mode(module):
            shapes, out = record_shapes(gm, x)
    except Exception as e:  # noqa: BLE001
        raise LegoCompileError(
            f"block {type(module).__name__} failed on the example input of shape {tuple(x.shape)}: "
            f"{type(e).__name__}: {e}"
        ) from None
    if not all(isinstance(o, torch.Tensor) for o in as_outputs(out)):
        raise LegoCompileError(f"block {type(module).__name__} must return a tensor or a tuple of tensors, got "
                               f"{type(out).__name__}")
    return gm, find_groups(gm, shapes), out


def _output_shapes(out) -> list:
    """The shape of each output (a block returns one tensor, or a tuple of them as a model's last block)."""
    return [tuple(getattr(o, "shape", ())) for o in as_outputs(out)]


def _select(g: ChannelGroup, modules: dict[str, nn.Module], n_keep: int) -> torch.Tensor:
    score = torch.zeros(g.channels, dtype=torch.float64)
    for path in g.producers + g.depthwise:
        w = modules[path].weight.detach().to(torch.float64)
        l1 = w.abs().reshape(w.shape[0], -1).sum(dim=1).cpu()
        score += l1 / l1.mean().clamp_min(1e-12)
    order = torch.argsort(score, descending=True, stable=True)
    return torch.sort(order[:n_keep]).values


def _group_report(g: ChannelGroup, kept: list[int]) -> GroupReport:
    return GroupReport(
        tuple(g.producers), tuple(g.depthwise), tuple(g.batchnorms), tuple(g.consumers), g.channels, len(kept),
        tuple(kept),
    )


# --- layer surgery -----------------------------------------------------------------------------------------------


def _shrunk_spec(old: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> dict:
    if type(old) is nn.Conv2d:
        depthwise = old.groups > 1
        out_c = old.out_channels if out_idx is None else len(out_idx)
        in_c = out_c if depthwise else (old.in_channels if in_idx is None else len(in_idx))
        return {
            "type": "Conv2d", "in_channels": in_c, "out_channels": out_c, "kernel_size": list(old.kernel_size),
            "stride": list(old.stride), "padding": old.padding if isinstance(old.padding, str) else list(old.padding),
            "dilation": list(old.dilation), "groups": out_c if depthwise else 1, "bias": old.bias is not None,
            "padding_mode": old.padding_mode,
        }
    if type(old) in (nn.BatchNorm2d, nn.BatchNorm1d):
        return {
            "type": type(old).__name__, "num_features": len(out_idx), "eps": old.eps, "momentum": old.momentum,
            "affine": old.affine, "track_running_stats": old.track_running_stats,
        }
    if type(old) is nn.Linear:
        return {
            "type": "Linear", "in_features": old.in_features if in_idx is None else len(in_idx),
            "out_features": old.out_features if out_idx is None else len(out_idx), "bias": old.bias is not None,
        }
    raise AssertionError(f"cannot shrink {type(old).__name__}")


def _build(spec: dict, like: nn.Module) -> nn.Module:
    """A new layer from ``spec`` (uninitialised), on the device / dtype / training mode of ``like``."""
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items() if k != "type"}
    ref = next(iter(like.parameters()), None)
    if ref is None:
        ref = next(iter(like.buffers()), None)
    factory = {"device": ref.device, "dtype": ref.dtype} if ref is not None and ref.is_floating_point() else {}
    try:
        new = nn.utils.skip_init(_LAYER_TYPES[spec["type"]], **kwargs, **factory)
    except (TypeError, ValueError) as e:
        raise LegoCompileError(f"invalid {spec['type']} spec {spec!r}: {e}") from None
    new.train(like.training)
    for name, p in new.named_parameters():
        p.requires_grad_(getattr(like, name).requires_grad)
    return new


def _copy_kept(old: nn.Module, new: nn.Module, out_idx: torch.Tensor | None, in_idx: torch.Tensor | None) -> None:
    """Copy ``old``'s weights at the kept output (dim 0) / input (dim 1) indices into ``new``."""
    with torch.no_grad():
        for name, dst in list(new.named_parameters()) + list(new.named_buffers()):
            src = getattr(old, name)
            if src.dim() > 0 and out_idx is not None:
                src = src.index_select(0, out_idx.to(src.device))
            if src.dim() > 1 and in_idx is not None and not (type(old) is nn.Conv2d and old.groups > 1):
                src = src.index_select(1, in_idx.to(src.device))
            if src.shape != dst.shape:
                raise AssertionError(f"shape mismatch copying {name}: {tuple(src.shape)} vs {tuple(dst.shape)}")
            dst.copy_(src)


def _set_submodule(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, new)
