"""``compile``: model → blocks → variants → ONNX → engines → gate → profiles → bundle, each stage cached by content.

Data flows one way: each stage reads the previous stage's artefacts (files in the work directory) and writes its
own. Every artefact's key is derived from the inputs its :class:`~legocompile.stage.Stage` declares (below and in
:mod:`legocompile.variants.stage` and :mod:`legocompile.profile.profiler`), never assembled by hand. A rerun with
nothing changed loads every artefact from the cache and builds nothing; an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from legocompile._log import logger
from legocompile.config import CalibrationConfig, ProfileConfig, Tolerances, normalize_precisions
from legocompile.errors import LegoCompileError, MissingDependencyError
from legocompile.modes import eval_mode
from legocompile.outputs import as_outputs, concat_outputs, max_abs, tensors_to_numpy
from legocompile.progress import Progress, SilentProgress
from legocompile.stage import Stage, digest, tool_version
from legocompile.workspace import Workspace, sha256_file

STAGES = ("derive", "retrain", "export", "calibrate", "engines", "profile", "bundle")
PARTITION_TOLERANCE = 1e-4  # max |chain - model| allowed, relative to the output's magnitude
GATE_SAMPLES = 256  # held-out block inputs each engine is compared on

EXPORT = Stage("export", inputs=("module", "check_inputs"), tools=("torch", "onnx", "onnxruntime"), format=2)
CALIBRATE = Stage("calibrate", inputs=("onnx", "block_inputs", "settings"), tools=("onnxruntime",))
ENGINE = Stage("engine", inputs=("onnx", "precision", "backend", "ranges", "recipe"), tools=("onnxruntime",))
GATE = Stage("gate", inputs=("engine", "reference", "held_out"), tools=("onnxruntime",))


@dataclass
class BuildReport:
    """What a build did: which stages ran and which were cached (for the CLI's summary and for tests)."""

    bundle: Path
    built: dict[str, int] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)
    unprunable: list[str] = field(default_factory=list)  # layers pruning left whole, with the reason
    excluded: list[str] = field(default_factory=list)  # engines the accuracy gate left out, with the reason
    same_widths: list[dict] = field(default_factory=list)  # derived variants left out: they repeat a less sparse one

    def count(self, stage: str, was_cached: bool) -> None:
        target = self.cached if was_cached else self.built
        target[stage] = target.get(stage, 0) + 1


def module_digest(module, input_shape) -> str:
    """A block's identity: its graph code, its submodules' hyperparameters (``repr``: stride, padding, eps, the
    activation type, ...), the input shape and every weight and buffer."""
    state = module.state_dict()
    return digest([
        str(getattr(module, "code", type(module).__name__)), repr(module), list(input_shape),
        [[name, state[name].detach().cpu().contiguous().numpy()] for name in sorted(state)],
    ])


def require_torch(needed_for: str) -> None:
    """Raise a one-line :class:`MissingDependencyError` naming the ``build`` extra when PyTorch is not installed
    (a device install leaves it out; ``inspect``, ``verify``, ``run``, ``retarget`` and the Runtime never need it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise MissingDependencyError("torch", needed_for, extra="build") from None


def _tools() -> dict[str, str]:
    return {name: tool_version(name) for name in ("legocompile", "torch", "onnx", "onnxruntime")} | {
        "python": platform.python_version()}


def _as_array(data, what: str) -> np.ndarray:
    try:
        import torch

        if isinstance(data, torch.Tensor):
            data = data.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    arr = np.asarray(data)
    if arr.dtype.kind != "f" or arr.ndim < 2:
        raise LegoCompileError(f"{what} must be a float array shaped (N, ...), got dtype {arr.dtype}, shape {arr.shape}")
    return np.array(arr, dtype=np.float32, order="C")  # an owned, writable copy


def compile(  # noqa: A001 - the public name the API promises
    model,
    example_input,
    *,
    calibration_data,
    eval_data: tuple[Any, Any],
    out: str | Path,
    blocks: str | Sequence[str] = "auto",
    max_blocks: int | None = 8,
    precisions: Sequence[str] = ("fp32", "int8"),
    backend: str = "onnxruntime",
    work_dir: str | Path | None = None,
    calibration: CalibrationConfig = CalibrationConfig(),  # noqa: B008 (frozen)
    profile: ProfileConfig = ProfileConfig(),  # noqa: B008 (frozen)
    int8_format: str = "auto",
    tolerance: Tolerances = Tolerances(),  # noqa: B008 (frozen)
    model_name: str | None = None,
    metric=None,
    sparsities: Sequence[float] = (0.0,),
    channel_multiple: int | None = None,
    retrain=None,
    train_data=None,
    external_variants: Sequence = (),
    additivity_samples: int = 24,
    progress: Progress | None = None,
    report: BuildReport | None = None,
    until: str = "bundle",
) -> Path:
    """Compile ``model`` into an engine bundle at ``out`` and return its path.

    Args:
        model: a trained ``torch.nn.Module`` (left unchanged, training flag included).
        example_input: a tensor of the input shape (its batch size is ignored; profiles use ``profile.batch_size``).
        calibration_data: model inputs, shape (N, ...); block i is calibrated on the teacher's activations at its input.
        eval_data: ``(inputs, labels)`` used for accuracy profiles (labels: any array the metric reads, one row per
            input) and for the engines' accuracy gate.
        out: the bundle folder (replaced atomically; a folder that is not a bundle is refused).
        blocks: ``"auto"`` or module paths that end each block.
        max_blocks: with ``"auto"``, merge the cheapest neighbours until at most this many blocks remain.
        precisions: engines to build per block; fp32 is always built.
        work_dir: cache folder (default: ``<out>/../legocompile-work``).
        int8_format: ``auto`` (from the CPU) or a recipe name from :mod:`calibration.recipe`.
        metric: the task metric accuracy is measured in: ``"top1"`` (default), ``"miou"``,
            ``"package.module:function"`` or a function ``(outputs, labels) -> [0, 1]``; the bundle records its name.
        tolerance: the accuracy gate; engines beyond it stay in the bundle but are not selectable.
        sparsities: derive a pruned, retrained variant of every block per sparsity (0 is the original); one whose
            widths repeat a less sparse variant's is left out (``report.same_widths``, ``settings.pruning``).
        channel_multiple: pruned groups keep a multiple of this many channels (default 8, [variants]'s default).
        retrain: :class:`legocompile.variants.retrain.RetrainSettings` for the descendants.
        train_data: model inputs the descendants are retrained on (default: ``calibration_data``).
        external_variants: :class:`legocompile.variants.stage.ExternalVariant` entries (bring your own).
        additivity_samples: random full selections measured to check the accuracy model (0: skip).
        until: stop after this stage (``derive``, ``retrain``, ``export``, ``calibrate``, ``engines``,
            ``profile``); the bundle is written only by a full run (``bundle``).
    """
    if until not in STAGES:
        raise LegoCompileError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    require_torch("legocompile.compile (building a bundle)")
    from calibration.recipe import host_recipe
    from legocompile.backends import get_backend

    progress = progress or SilentProgress()
    precisions = normalize_precisions(list(precisions))
    out = Path(out).resolve()
    from legocompile.bundle import check_target

    check_target(out)  # refuse a folder that is not a bundle now, not after every stage has run
    ws = Workspace(Path(work_dir) if work_dir else out.parent / "legocompile-work")
    report = report if report is not None else BuildReport(bundle=out)
    be = get_backend(backend)
    recipe, recipe_reason = host_recipe(int8_format)

    calib_x = _as_array(calibration_data, "calibration_data")[: calibration.num_samples]
    eval_x = _as_array(eval_data[0], "eval inputs")
    eval_y = np.asarray(eval_data[1])  # labels stay as given: class ids, masks, boxes... (the metric reads them)
    if eval_y.ndim == 0 or len(eval_x) != len(eval_y) or len(eval_y) == 0:
        raise LegoCompileError(f"eval data: {len(eval_x)} inputs but {len(eval_y) if eval_y.ndim else 0} labels")
    from legocompile.profile.accuracy import resolve_metric

    metric = resolve_metric(metric)

    chain, partition_err, pytorch_accuracy, example = _partition(model, example_input, blocks, max_blocks, eval_x,
                                                                 eval_y, progress, metric)
    calib_in, eval_in = _teacher_activations(chain, calib_x, eval_x, progress)
    module_keys = [module_digest(b.module, b.input_shape) for b in chain]

    from legocompile.variants.retrain import RetrainSettings
    from legocompile.variants.stage import build_variants

    train_x = calib_x if train_data is None else _as_array(train_data, "train_data")
    variants = build_variants(
        ws, chain, module_keys, calib_in, sparsities=sparsities, channel_multiple=channel_multiple,
        retrain=retrain or RetrainSettings(),
        train_inputs=train_x, external=external_variants, progress=progress, report=report, until=until,
    )
    if until in ("derive", "retrain"):
        return out
    exported = _export(ws, chain, variants, module_keys, calib_in, progress, report)
    if until == "export":
        return out
    ranges, range_files = _calibrate(ws, chain, variants, exported, calib_in, calibration, progress, report) \
        if "int8" in precisions else ({}, {})
    if until == "calibrate":
        return out
    engines = _engines(ws, be, exported, ranges, precisions, recipe, progress, report)
    if until == "engines":
        return out
    gates = _gate(ws, be, exported, engines, eval_in, tolerance, progress, report)

    from legocompile.profile.additivity import check_additivity
    from legocompile.profile.profiler import profile_engines

    profiles, teacher = profile_engines(ws, be, be.fingerprint(), chain=chain, engines=engines, eval_in=eval_in,
                                        eval_y=eval_y, settings=profile, progress=progress, report=report,
                                        metric=metric)
    _check_reference_chain(teacher, pytorch_accuracy)
    selectable = [[k for k in sorted(engines, key=_option_order) if k[0] == i and gates[k]["excluded"] is None]
                  for i in range(len(chain))]
    additivity = check_additivity(
        ws, be, options=selectable, engines=engines, drops={k: v["accuracy_drop"] for k, v in profiles.items()},
        teacher_accuracy=teacher["accuracy"], eval_x=eval_x, eval_y=eval_y, num_selections=additivity_samples,
        progress=progress, metric=metric,
    )
    report.excluded = [f"{chain[k[0]].name} {k[1]}/{k[2]}: {g['excluded']}"
                       for k, g in sorted(gates.items(), key=lambda kv: _option_order(kv[0])) if g["excluded"]]
    if until == "profile":
        return out

    teacher["pytorch_accuracy"] = pytorch_accuracy
    from legocompile.variants.stage import pruning_summary

    settings = {
        "profile": profile.to_json(),
        "calibration": {"method": calibration.method, "num_samples": len(calib_x), "percentile": calibration.percentile},
        "int8": {"recipe": recipe.to_json(), "reason": recipe_reason, "requested": int8_format},
        "tolerance": vars(tolerance).copy(),
        "partition": {"blocks": blocks if isinstance(blocks, str) else list(blocks), "max_blocks": max_blocks,
                      "max_abs_err": partition_err},
        "pruning": pruning_summary(chain, variants, channel_multiple, report.same_widths),
    }
    settings["calibration"]["files"], calibration_files = _calibration_files(ws, chain, range_files, ranges)
    _write(out, be, model_name or type(model).__name__, example, chain, variants, precisions, exported, engines,
           gates, profiles, teacher, settings, additivity, profile.batch_size, progress, calibration_files)
    return out


# ---------------------------------------------------------------------------------------------------- stages
def _option_order(k: tuple[int, str, str]) -> tuple:
    from legocompile.config import PRECISIONS

    return (k[0], k[1] != "s0", k[1], PRECISIONS.index(k[2]))


def _partition(model, example_input, blocks, max_blocks, eval_x, eval_y, progress, metric):
    import torch

    from legocompile.blocks import partition, verify_partition

    example = torch.as_tensor(np.asarray(example_input, dtype=np.float32))[:1]
    with eval_mode(model):
        with progress.stage("partition", 1) as advance:
            chain = partition(model, example, blocks, max_blocks=max_blocks)
            err = verify_partition(model, chain, torch.from_numpy(eval_x[:16]))
            with torch.no_grad():
                scale = max_abs(tensors_to_numpy(model(torch.from_numpy(eval_x[:16])))) or 1.0
                logits = concat_outputs(
                    [tensors_to_numpy(model(torch.from_numpy(eval_x[i : i + 256]))) for i in range(0, len(eval_x), 256)]
                )
            advance()
    if err > PARTITION_TOLERANCE * max(1.0, scale):
        raise LegoCompileError(f"the chain of blocks differs from the model by {err:.3g}; partition is not exact")
    logger.info("partitioned into %d blocks (max |chain - model| = %.2e)", len(chain), err)
    return chain, err, metric(logits, eval_y), example


def _teacher_activations(chain, calib_x, eval_x, progress):
    from calibration.capture import block_inputs

    modules = [b.module for b in chain]
    with progress.stage("teacher activations", 2) as advance:
        calib_in = block_inputs(modules, calib_x)
        advance()
        eval_in = block_inputs(modules, eval_x)
        advance()
    return calib_in, eval_in


def _export(ws, chain, variants, module_keys, calib_in, progress, report) -> dict[tuple[int, str], dict]:
    from legocompile.export import export_block

    exported: dict[tuple[int, str], dict] = {}
    with progress.stage("export", sum(len(v) for v in variants)) as advance:
        for i, block in enumerate(chain):
            check = calib_in[i][:64]
            for v in variants[i]:
                module = module_keys[i] if v.name == "s0" else module_digest(v.module, block.input_shape)
                key = EXPORT.key(module=module, check_inputs=digest(check))
                path = ws.path("onnx", key, ".onnx")

                def do_export(v=v, path=path, check=check):
                    r = export_block(v.module, check, path)
                    return {"max_abs_err": r.max_abs_err, "num_checked": r.num_checked,
                            "output_max_abs": r.output_max_abs, "relative_err": r.relative_err}

                meta, cached = ws.cached_json("onnx", key, do_export)
                if not path.exists():  # the meta survived but the model did not: redo
                    meta, cached = do_export(), False
                report.count("export", cached)
                exported[(i, v.name)] = {**meta, "path": path, "sha256": sha256_file(path), "sparsity": v.sparsity,
                                         "params": int(sum(p.numel() for p in v.module.parameters()))}
                advance()
    return exported


def _calibrate(ws, chain, variants, exported, calib_in, calibration, progress, report):
    from calibration.ranges import CalibrationSettings, TensorRanges, compute_ranges

    settings = CalibrationSettings(method=calibration.method, num_samples=calibration.num_samples,
                                   percentile=calibration.percentile)
    ranges: dict[tuple[int, str], Any] = {}
    files: dict[tuple[int, str], Path] = {}
    with progress.stage(f"calibrate ({calibration.method})", len(exported)) as advance:
        for i in range(len(chain)):
            inputs = digest(calib_in[i])
            for v in variants[i]:
                ex = exported[(i, v.name)]
                path = ws.path("calibration", CALIBRATE.key(onnx=ex["sha256"], block_inputs=inputs,
                                                            settings=repr(settings)), ".json")
                cached = path.exists()
                if cached:
                    r = TensorRanges.from_json(path)
                else:
                    r = compute_ranges(ex["path"], calib_in[i], settings)
                    r.to_json(path)
                ranges[(i, v.name)] = r
                files[(i, v.name)] = path
                report.count("calibrate", cached)
                advance()
    return ranges, files


def _engines(ws, be, exported, ranges, precisions, recipe, progress, report) -> dict[tuple[int, str, str], dict]:
    from calibration.qdq import QDQ_WRITER_VERSION  # int8 engines are QDQ graphs from this writer, whatever backend

    fingerprint = be.fingerprint()
    engines: dict[tuple[int, str, str], dict] = {}
    with progress.stage("engines", len(exported) * len(precisions)) as advance:
        for (i, name), ex in exported.items():
            for p in precisions:
                r = ranges.get((i, name)) if p == "int8" else None
                key = ENGINE.key(onnx=ex["sha256"], precision=p, backend=fingerprint,
                                 ranges=r.ranges if r else None,
                                 recipe=[recipe.to_json(), QDQ_WRITER_VERSION] if p == "int8" else None)
                path = ws.path("engines", key, be.engine_suffix)
                cached = path.exists()
                if not cached:
                    be.build(ex["path"], p, path, ranges=r, recipe=recipe if p == "int8" else None)
                report.count("engine", cached)
                engines[(i, name, p)] = {"path": path, "sha256": sha256_file(path)}
                advance()
    return engines


def _gate(ws, be, exported, engines, eval_in, tolerance: Tolerances, progress, report) -> dict:
    """Compare every engine with its variant's fp32 ONNX on held-out block inputs (the eval split's activations,
    which calibration never sees), as Polygraphy's Comparator does; decide which engines are selectable.

    The measurement is cached per (engine, reference, inputs); the decision is re-made from the tolerances.
    """
    reference_backend = _reference_backend(be)
    loaded: dict[Path, Any] = {}

    def run(backend, path: Path, x: np.ndarray) -> np.ndarray:
        if path not in loaded:
            loaded[path] = backend.load(path)
        return loaded[path].run(x)

    gates: dict[tuple[int, str, str], dict] = {}
    with progress.stage("accuracy gate", len(engines)) as advance:
        for k, eng in engines.items():
            i, name, precision = k
            ex = exported[(i, name)]
            x = eval_in[i][:GATE_SAMPLES]

            def measure(ex=ex, eng=eng, x=x) -> dict:
                refs = as_outputs(run(reference_backend, ex["path"], x))
                gots = as_outputs(run(be, eng["path"], x))
                rel_l2 = max_err = 0.0
                for ref, got in zip(refs, gots, strict=True):  # several outputs: the worst one decides
                    diff = got.astype(np.float64) - ref
                    norm, err = float(np.linalg.norm(ref)), float(np.linalg.norm(diff))
                    rel_l2, max_err = max(rel_l2, err / norm if norm > 0 else err), max(max_err, max_abs(diff))
                return {"rel_l2": rel_l2, "max_abs": max_err, "samples": int(len(x))}

            key = GATE.key(engine=eng["sha256"], reference=ex["sha256"], held_out=digest(x))
            measured, cached = ws.cached_json("gate", key, measure)
            report.count("gate", cached)
            gates[k] = {**measured, "tolerance": tolerance.of(precision),
                        "export_relative_err": ex["relative_err"], "export_tolerance": tolerance.export,
                        "excluded": gate_decision(measured["rel_l2"], precision, ex["relative_err"], tolerance)}
            advance()
    for (i, name), ex in exported.items():
        if name == "s0" and gates[(i, name, "fp32")]["excluded"]:
            raise LegoCompileError(f"block {i}'s original fp32 engine fails the accuracy gate "
                                   f"({gates[(i, name, 'fp32')]['excluded']}); it is every block's reference")
    return gates


def gate_decision(rel_l2: float, precision: str, export_relative_err: float, tolerance: Tolerances) -> str | None:
    """Why an engine is left out of the selectable options, or None when it passes the gate."""
    if not export_relative_err <= tolerance.export:  # also catches NaN
        return f"export error {export_relative_err:.2e} of the output range exceeds the tolerance {tolerance.export:g}"
    if not rel_l2 <= tolerance.of(precision):
        return f"{precision} error {rel_l2:.2%} (relative L2 vs fp32 ONNX) exceeds the tolerance {tolerance.of(precision):.2%}"
    return None


def _reference_backend(be):
    """The backend that runs a variant's fp32 ONNX as the gate's reference (ONNX Runtime runs any ONNX)."""
    from legocompile.backends import get_backend

    return be if be.name == "onnxruntime" else get_backend("onnxruntime")


def _check_reference_chain(teacher: dict, pytorch_accuracy: float) -> None:
    """The all-original fp32 engine chain must score like PyTorch in the task metric, within one evaluation sample's
    worth (``1 / n``)."""
    n = int(teacher["num_eval"])
    if abs(teacher["accuracy"] - pytorch_accuracy) > 1.0 / n + 1e-12:
        raise LegoCompileError(
            f"the fp32 engine chain's accuracy {teacher['accuracy']:.2%} differs from PyTorch's {pytorch_accuracy:.2%} "
            f"by more than one of the {n} evaluation samples; the export is not faithful"
        )


def _calibration_files(ws, chain, range_files, ranges) -> tuple[dict, dict[str, Path]]:
    """Each variant's calibration ranges, and the TensorRT calibration cache written from them, as bundle files:
    ``(settings["calibration"]["files"], bundle-relative path -> source file)``. ``retarget`` builds int8 engines for
    another device from these ranges (see :func:`legocompile.bundle.calibration_files`)."""
    from calibration.trt_cache import write_trt_cache
    from legocompile.bundle.manifest import TRT_CACHE_VERSION

    doc: dict[str, dict[str, dict[str, str]]] = {}
    files: dict[str, Path] = {}
    for (i, name), path in sorted(range_files.items()):
        block = chain[i].name
        entry = {"ranges": f"calibration/{block}/{name}.ranges.json"}
        files[entry["ranges"]] = path
        cache = ws.path("trt_cache", sha256_file(path)[:24], ".cache")
        try:
            if not cache.exists():
                write_trt_cache(ranges[(i, name)], cache, trt_version=TRT_CACHE_VERSION)
            entry["trt_cache"] = f"calibration/{block}/{name}.trt-cache"
            files[entry["trt_cache"]] = cache
        except LegoCompileError as e:  # a tensor name TensorRT's cache format cannot hold: the ranges still go in
            logger.warning("%s %s: no TensorRT calibration cache in the bundle (%s)", block, name, e)
        doc.setdefault(block, {})[name] = entry
    return doc, files


def engine_rel(block: str, variant: str, precision: str, suffix: str) -> str:
    """Where an engine lives in a bundle."""
    return f"engines/{block}/{variant}-{precision}{suffix}"


def _write(out, be, model_name, example, chain, variants, precisions, exported, engines, gates, profiles, teacher,
           settings, additivity, batch, progress, extra_files=None) -> None:
    from legocompile.bundle import BlockEntry, Manifest, OptionEntry, TensorSpec, write_bundle
    from legocompile.export import output_names

    files: dict[str, Path] = dict(extra_files or {})
    block_entries = []
    for i, block in enumerate(chain):
        options = []
        for v in variants[i]:
            ex = exported[(i, v.name)]
            onnx_rel = f"onnx/{block.name}/{v.name}.onnx"
            files[onnx_rel] = ex["path"]
            for p in precisions:
                k = (i, v.name, p)
                rel = engine_rel(block.name, v.name, p, be.engine_suffix)
                files[rel] = engines[k]["path"]
                prof, gate = profiles[k], gates[k]
                options.append(OptionEntry(
                    variant=v.name, sparsity=v.sparsity, precision=p, backend=be.name, engine=rel,
                    sha256=engines[k]["sha256"], onnx=onnx_rel, params=ex["params"],
                    export_max_abs_err=ex["max_abs_err"], latency_ms=prof["latency_ms"],
                    latency_p90_ms=prof["latency_p90_ms"], memory_bytes=prof["memory_bytes"],
                    accuracy_drop=prof["accuracy_drop"], output_max_abs_err=prof["output_max_abs_err"],
                    accuracy_gate={n: gate[n] for n in ("rel_l2", "max_abs", "samples", "tolerance",
                                                        "export_relative_err", "export_tolerance")},
                    excluded=gate["excluded"],
                ))
        outputs = tuple(TensorSpec(name=name, shape=(batch, *shape[1:]))
                        for name, shape in zip(output_names(block.num_outputs), block.output_shapes))
        block_entries.append(BlockEntry(
            name=block.name, input=TensorSpec(name="x", shape=(batch, *block.input_shape[1:])),
            output=outputs[0], extra_outputs=outputs[1:], options=tuple(options),
        ))
    from legocompile.bundle import SCHEMA_VERSION

    manifest = Manifest(
        schema_version=SCHEMA_VERSION, model=model_name,
        input=TensorSpec(name="x", shape=(batch, *tuple(example.shape[1:]))), blocks=tuple(block_entries),
        teacher=teacher, device=be.fingerprint() | {"cpu_count": _cpu_count()}, tools=_tools(), settings=settings,
        additivity=additivity,
    )
    with progress.stage("bundle", 1) as advance:
        write_bundle(out, manifest, files)
        advance()


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
