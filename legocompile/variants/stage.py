"""The variants stage of the pipeline: derive (prune) and retrain descendants, cached by content.

Artefacts: ``<work>/derived/<key>`` is a pruned, not yet retrained block; ``<work>/variants/<key>`` is the retrained
one. Each is a safetensors file plus a JSON description of the pruned architecture (never a pickled module), and
its key comes from the declared inputs of :data:`DERIVE` (teacher block, sparsity, channel multiple) and
:data:`RETRAIN` (the derived block, the teacher blocks upstream of it, the training inputs and the settings).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from legocompile._log import logger
from legocompile.errors import LegoCompileError
from legocompile.stage import Stage, digest
from legocompile.workspace import Workspace

PRUNE_FORMAT = 1  # bump when pruning changes what it produces
DERIVE = Stage("derive", inputs=("block", "sparsity", "channel_multiple"), tools=("torch",), format=PRUNE_FORMAT)
RETRAIN = Stage("retrain", inputs=("derived", "upstream", "train_inputs", "settings"), tools=("torch",))


@dataclass(frozen=True)
class Variant:
    """One version of a block: the original (``s0``), a descendant (``s0.4``) or a user's own."""

    name: str
    sparsity: float
    module: Any  # torch.nn.Module
    pruning: dict | None = None  # a derived variant's prune report: channel_multiple, param_sparsity, groups, ...


@dataclass(frozen=True, kw_only=True)
class ExternalVariant:
    """A variant produced elsewhere (e.g. by the original LegoDNN scripts): a factory plus weights."""

    block: str
    name: str
    factory: str  # "pkg.mod:fn" building the module
    weights: Path
    sparsity: float | None = None  # unknown unless the user says
    search_path: Path | None = None


def variant_name(sparsity: float) -> str:
    return f"s{sparsity:g}"


def check_sparsities(sparsities: Sequence[float]) -> tuple[float, ...]:
    values = sorted({float(s) for s in sparsities} | {0.0})
    for s in values:
        if not 0.0 <= s < 1.0:
            raise LegoCompileError(f"sparsities must lie in [0, 1), got {s}")
    return tuple(values)


def build_variants(
    ws: Workspace,
    chain,
    module_keys: list[str],
    block_inputs: list[np.ndarray],
    *,
    sparsities: Sequence[float],
    channel_multiple: int | None = None,
    retrain,
    train_inputs: np.ndarray,
    external: Sequence[ExternalVariant] = (),
    progress,
    report,
    until: str,
) -> list[list[Variant]]:
    """Every block's variants, original first. Stops after pruning when ``until == "derive"``.

    ``channel_multiple``: pruned groups keep a multiple of this many channels (default:
    :data:`legocompile.config.DEFAULT_CHANNEL_MULTIPLE`)."""
    import torch

    from legocompile.config import DEFAULT_CHANNEL_MULTIPLE
    from legocompile.variants.checkpoint import remove_checkpoint
    from legocompile.variants.prune import check_channel_multiple, prune_block
    from legocompile.variants.retrain import retrain_variants
    from legocompile.variants.store import load_external_variant, load_variant, save_variant, variant_paths

    sparsities = check_sparsities(sparsities)
    multiple = check_channel_multiple(DEFAULT_CHANNEL_MULTIPLE if channel_multiple is None else channel_multiple)
    variants: list[list[Variant]] = [[Variant("s0", 0.0, b.module)] for b in chain]
    pruned = [s for s in sparsities if s > 0]
    train_digest = digest(train_inputs)
    derived_keys = {(i, s): DERIVE.key(block=module_keys[i], sparsity=s, channel_multiple=multiple)
                    for i in range(len(chain)) for s in pruned}
    # A student learns block i's output from its input, which the teacher's blocks before i compute from the
    # training inputs: those upstream blocks are inputs of its retraining too.
    final_keys = {(i, s): RETRAIN.key(derived=dk, upstream=module_keys[:i], train_inputs=train_digest,
                                      settings=repr(retrain))
                  for (i, s), dk in derived_keys.items()}

    # ------------------------------------------------------------ derive
    students: dict[tuple[int, str], Any] = {}
    with progress.stage("derive (prune)", len(derived_keys)) as advance:
        for (i, s), dk in derived_keys.items():
            done = variant_paths(ws.path("variants", final_keys[(i, s)], ""))[1].exists()
            stem = ws.path("derived", dk, "")
            if done and until != "derive":
                report.count("derive", True)
            elif variant_paths(stem)[1].exists():
                report.count("derive", True)
                if not done:
                    students[(i, variant_name(s))] = load_variant(stem, chain[i].module)[0]
            else:
                x = torch.from_numpy(np.ascontiguousarray(block_inputs[i][:1]))
                result = prune_block(chain[i].module, x, s, channel_multiple=multiple)
                save_variant(stem, result.module, result.architecture, {"prune": result.report.to_dict()})
                report.count("derive", False)
                if not done:
                    students[(i, variant_name(s))] = result.module
            advance()
    _report_unprunable(ws, chain, derived_keys, report)
    same = _same_widths(ws, chain, derived_keys, multiple, report)
    for key in same:
        students.pop((key[0], variant_name(key[1])), None)
    if until == "derive":
        return variants

    # ------------------------------------------------------------ retrain (all missing students together)
    if students:
        teacher = [b.module for b in chain]
        checkpoint = ws.path("retrain", digest(sorted(final_keys[(i, float(n[1:]))] for i, n in students)), "")
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        results = retrain_variants(teacher, students, train_inputs, retrain, progress=progress, checkpoint=checkpoint)
        for (i, name), module in students.items():
            s = float(name[1:])
            stem = ws.path("variants", final_keys[(i, s)], "")
            arch = _read_architecture(ws.path("derived", derived_keys[(i, s)], ""))
            r = results[(i, name)]
            prune = _read_meta(ws.path("derived", derived_keys[(i, s)], "")).get("prune")
            save_variant(stem, module, arch, {"retrain": {k: getattr(r, k) for k in r.__dataclass_fields__},
                                              "prune": prune})
            report.count("retrain", False)
        remove_checkpoint(checkpoint)
    for (i, s) in derived_keys:
        if (i, s) in same:
            continue  # the variant it repeats stands for it
        if (i, variant_name(s)) not in students:
            report.count("retrain", True)
        module, meta = load_variant(ws.path("variants", final_keys[(i, s)], ""), chain[i].module)
        variants[i].append(Variant(variant_name(s), s, module, meta.get("prune")))

    # ------------------------------------------------------------ bring your own
    names = [b.name for b in chain]
    for ext in external:
        if ext.block not in names:
            raise LegoCompileError(f"external variant {ext.name!r}: no block {ext.block!r}; blocks: {', '.join(names)}")
        i = names.index(ext.block)
        if any(v.name == ext.name for v in variants[i]):
            raise LegoCompileError(f"external variant {ext.name!r} clashes with an existing variant of {ext.block}")
        module = load_external_variant(
            ext.factory, ext.weights, search_path=ext.search_path, input_shape=chain[i].input_shape,
            output_shape=chain[i].output_shape, block_name=ext.block,
        )
        variants[i].append(Variant(ext.name, ext.sparsity, module))
    return variants


def pruning_summary(chain, variants: list[list[Variant]], channel_multiple: int | None,
                    same_widths: Sequence[dict] = ()) -> dict:
    """What pruning reached, for the bundle's settings: the channel multiple, and per block and derived variant the
    requested channel sparsity, the fraction of parameters actually removed and each group's width before/after.
    A sparsity whose widths repeat a less sparse variant's (``same_widths``, see :func:`_same_widths`) is listed
    with ``same_as``, the variant that stands for it."""
    from legocompile.config import DEFAULT_CHANNEL_MULTIPLE

    blocks = {}
    for block, options in zip(chain, variants):
        pruned: dict[str, dict] = {}
        for d in same_widths:
            if d["block"] == block.name:
                pruned[d["variant"]] = {"sparsity": d["sparsity"], "same_as": d["same_as"]}
        for v in options:
            if v.pruning:
                p = v.pruning
                pruned[v.name] = {
                    "sparsity": v.sparsity, "param_sparsity": p.get("param_sparsity"),
                    "params_before": p.get("params_before"), "params_after": p.get("params_after"),
                    "channels": [[g["channels_before"], g["channels_after"]] for g in p.get("groups", [])],
                }
        if pruned:
            blocks[block.name] = dict(sorted(pruned.items(), key=lambda kv: kv[1]["sparsity"]))
    return {"channel_multiple": DEFAULT_CHANNEL_MULTIPLE if channel_multiple is None else channel_multiple,
            "blocks": blocks}


def _same_widths(ws: Workspace, chain, derived_keys: dict, multiple: int, report) -> dict[tuple[int, float], str]:
    """Derived variants that repeat a less sparse one of the same block, and the name of the one they repeat.

    Rounding to the channel multiple can give two sparsities the same widths (a 16-channel group keeps 8 at 0.4 and
    at 0.8 with a multiple of 8), and a block whose every layer is tied to its boundary prunes to the original.
    Pruning keeps the channels of largest L1 norm, so equal widths are the same pruned block: it would be retrained,
    exported, built and profiled twice, and every view of the bundle would list the same option twice. Each such
    variant is left out, and the build report and ``settings.pruning`` say which one stands for it."""
    import json

    seen: dict[int, dict[str, str]] = {}  # block -> architecture -> variant name
    same: dict[tuple[int, float], str] = {}
    for (i, s), dk in sorted(derived_keys.items()):
        doc = _read_doc(ws.path("derived", dk, ""))
        prune = doc.get("meta", {}).get("prune", {})
        if prune.get("params_after") == prune.get("params_before"):
            first = "s0"  # nothing pruned: the original itself
        else:
            first = seen.setdefault(i, {}).setdefault(json.dumps(doc["architecture"], sort_keys=True),
                                                      variant_name(s))
        if first != variant_name(s):
            same[(i, s)] = first
            report.same_widths.append({"block": chain[i].name, "variant": variant_name(s), "sparsity": s,
                                       "same_as": first, "channel_multiple": multiple})
            logger.info("block %s: %s keeps the same channels as %s; left out", chain[i].name, variant_name(s), first)
    return same


def _report_unprunable(ws: Workspace, chain, derived_keys: dict, report) -> None:
    """Tell the build report which layers pruning left whole, once per block (cached runs included)."""
    seen: set[int] = set()
    for (i, _), dk in derived_keys.items():
        if i in seen:
            continue
        seen.add(i)
        meta = _read_meta(ws.path("derived", dk, ""))
        for path, reason in meta.get("prune", {}).get("skipped", []):
            note = f"block {chain[i].name}: {path} left whole ({reason})"
            logger.info(note)
            report.unprunable.append(note)


def _read_doc(stem: Path) -> dict:
    """A stored variant's JSON description: ``architecture`` and ``meta``."""
    import json

    from legocompile.variants.store import variant_paths

    return json.loads(variant_paths(stem)[1].read_text())


def _read_meta(stem: Path) -> dict:
    return _read_doc(stem).get("meta", {})


def _read_architecture(stem: Path) -> dict:
    return _read_doc(stem)["architecture"]
