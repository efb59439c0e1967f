"""``retarget``: engines and profiles for *this* device from a bundle built elsewhere, without PyTorch.

A bundle carries every variant's fp32 ONNX and, for int8, its calibration ranges (see
:func:`legocompile.bundle.calibration_files`). Retargeting reads them (each file checked against the manifest's
sha256), builds engines with the local backend (:func:`legocompile.pipeline._engines`), runs the build's accuracy
gate (:func:`legocompile.pipeline._gate`), re-profiles latency and memory here
(:func:`legocompile.profile.profiler.profile_engines`) and writes a new bundle through the atomic writer, which the
verifying reader then reads back.

Accuracy needs labelled data. With ``data`` (inputs and labels), block inputs come from the locally built fp32
engine chain of original blocks, and the gate, the accuracy drops, the teacher's accuracy and the accuracy-model
check are measured here. Without it the source bundle's gate results and drops are kept, and
``settings.retarget.measured_elsewhere`` names them; latency and memory are then timed on a synthetic input
(standard normal, seed 0), as the engines' cost does not depend on the values.

Every step is cached in the work directory under the build's stage keys, so an interrupted retarget resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from legocompile._log import logger
from legocompile.bundle import (
    Manifest,
    OptionEntry,
    calibration_files,
    check_target,
    read_bundle,
    read_verified_bytes,
    write_bundle,
)
from legocompile.bundle.reader import MANIFEST, safe_path
from legocompile.config import ProfileConfig, Tolerances, normalize_precisions
from legocompile.errors import LegoCompileError
from legocompile.pipeline import BuildReport, _cpu_count, _engines, _gate, _option_order, _tools, engine_rel
from legocompile.progress import Progress, SilentProgress
from legocompile.workspace import Workspace, atomic_write_bytes

MEASURED_ELSEWHERE = "measured elsewhere"
ACCURACY_FIELDS = ("accuracy_drop", "output_max_abs_err", "accuracy_gate", "excluded", "teacher.accuracy",
                   "additivity")
SYNTHETIC_SEED = 0


@dataclass(frozen=True)
class _Block:
    """What the profiler needs of a block: its name and shapes (batch first)."""

    name: str
    input_shape: tuple[int, ...]
    output_shapes: tuple[tuple[int, ...], ...]  # one per output (several only for a model's last block)


def retarget(
    bundle: str | Path,
    out: str | Path,
    *,
    backend: str = "onnxruntime",
    data: tuple[np.ndarray, np.ndarray] | None = None,
    threads: int | None = None,
    frame_gap_ms: float | None = None,
    precisions: Sequence[str] | None = None,
    work_dir: str | Path | None = None,
    progress: Progress | None = None,
    report: BuildReport | None = None,
) -> Path:
    """Retarget the bundle at ``bundle`` to this device's ``backend``; write the new bundle at ``out``.

    Args:
        data: ``(inputs, int labels)`` to measure the gate and accuracy drops here (else they are kept from the
            source and marked measured elsewhere).
        threads: CPU threads per engine when profiling (default: the source bundle's profile setting).
        frame_gap_ms: idle time before each timed frame when profiling (default: the source bundle's; see
            :mod:`legocompile.profile.probe`).
        precisions: the subset of the source's precisions to keep (default: all; fp32 is always kept).
        work_dir: cache folder (default: ``<out>/../legocompile-work``).
    """
    from legocompile.backends import get_backend

    progress = progress or SilentProgress()
    src_root, out = Path(bundle).resolve(), Path(out).resolve()
    if out == src_root:
        raise LegoCompileError(f"--out {out} is the source bundle; write the retargeted bundle to another folder")
    src = read_bundle(src_root)  # schema, paths and every checksum
    source_id = hashlib.sha256(safe_path(src_root, MANIFEST).read_bytes()).hexdigest()
    check_target(out)
    report = report if report is not None else BuildReport(bundle=out)
    have = normalize_precisions(sorted({o.precision for b in src.blocks for o in b.options}))
    keep = have if precisions is None else normalize_precisions(list(precisions), "--precision")
    missing = [p for p in keep if p not in have]
    if missing:
        raise LegoCompileError(f"{src_root} has no {', '.join(missing)} engines; it has {', '.join(have)}")
    if threads is not None and threads < 1:
        raise LegoCompileError(f"--threads must be at least 1, got {threads}")
    be = get_backend(backend)
    ws = Workspace(Path(work_dir) if work_dir else out.parent / "legocompile-work")
    settings = dict(src.settings)
    prof = ProfileConfig(**{**dataclasses.asdict(ProfileConfig()), **settings.get("profile", {})})
    if threads is not None:
        prof = dataclasses.replace(prof, threads=threads)
    if frame_gap_ms is not None:
        prof = dataclasses.replace(prof, frame_gap_ms=frame_gap_ms)
    tolerance = Tolerances(**settings.get("tolerance", {}))
    chain = [_Block(b.name, tuple(b.input.shape), tuple(tuple(t.shape) for t in b.outputs)) for b in src.blocks]

    exported, ranges, carried = _read_sources(src_root, src, ws, keep, progress)
    from calibration.recipe import host_recipe

    requested = (settings.get("int8") or {}).get("requested", "auto")
    recipe, recipe_reason = host_recipe(requested)
    engines = _engines(ws, be, exported, ranges, keep, recipe, progress, report)
    engines = {k: v for k, v in engines.items() if _source_option(src, k) is not None}

    from legocompile.profile.accuracy import Metric, bundle_metric, metric_of

    if data is not None:
        metric = bundle_metric(metric_of(src.teacher))  # built-in metrics only: a bundle names no code to import
        eval_x, eval_y = _check_data(data, src)
        eval_in = _block_inputs(be, chain, engines, eval_x, progress)
        gates = _gate(ws, be, exported, engines, eval_in, tolerance, progress, report)
    else:
        # What the profiler measures on the synthetic input is discarded (the drops are kept from the source), so
        # no metric is evaluated: any model's outputs, one or several, and the bundle's own metric stays unimported.
        metric = Metric("unmeasured", lambda outputs, labels: 0.0, "unmeasured")
        rng = np.random.default_rng(SYNTHETIC_SEED)
        eval_x = rng.standard_normal((prof.batch_size, *src.input.shape[1:])).astype(np.float32)
        eval_y = np.zeros(prof.batch_size, np.int64)
        eval_in = _block_inputs(be, chain, engines, eval_x, progress)
        gates = None

    from legocompile.profile.profiler import profile_engines

    profiles, teacher = profile_engines(ws, be, be.fingerprint(), chain=chain, engines=engines, eval_in=eval_in,
                                        eval_y=eval_y, settings=prof, progress=progress, report=report,
                                        metric=metric)
    additivity = src.additivity
    if data is not None:
        from legocompile.profile.additivity import check_additivity

        selectable = [[k for k in sorted(engines, key=_option_order) if k[0] == i and gates[k]["excluded"] is None]
                      for i in range(len(chain))]
        additivity = check_additivity(
            ws, be, options=selectable, engines=engines, drops={k: v["accuracy_drop"] for k, v in profiles.items()},
            teacher_accuracy=teacher["accuracy"], eval_x=eval_x, eval_y=eval_y,
            num_selections=int((src.additivity or {}).get("num_selections", 24)), progress=progress,
            metric=metric)
        report.excluded = [f"{chain[k[0]].name} {k[1]}/{k[2]}: {g['excluded']}"
                           for k, g in sorted(gates.items(), key=lambda kv: _option_order(kv[0])) if g["excluded"]]
    else:
        kept = ("accuracy", "num_eval", "pytorch_accuracy", "metric")
        teacher = {**{k: v for k, v in src.teacher.items() if k in kept},
                   **{k: v for k, v in teacher.items() if k not in kept}}

    files: dict[str, Path] = dict(carried)
    blocks = []
    for i, b in enumerate(src.blocks):
        options = []
        for o in b.options:
            k = (i, o.variant, o.precision)
            if k not in engines:
                continue
            rel = engine_rel(b.name, o.variant, o.precision, be.engine_suffix)
            files[rel] = engines[k]["path"]
            p = profiles[k]
            changes: dict[str, Any] = dict(
                backend=be.name, engine=rel, sha256=engines[k]["sha256"], latency_ms=p["latency_ms"],
                latency_p90_ms=p["latency_p90_ms"], memory_bytes=p["memory_bytes"])
            if gates is not None:
                g = gates[k]
                changes |= dict(accuracy_drop=p["accuracy_drop"], output_max_abs_err=p["output_max_abs_err"],
                                excluded=g["excluded"],
                                accuracy_gate={n: g[n] for n in ("rel_l2", "max_abs", "samples", "tolerance",
                                                                 "export_relative_err", "export_tolerance")})
            options.append(dataclasses.replace(o, **changes))
        blocks.append(dataclasses.replace(b, options=tuple(options)))

    measured_here = data is not None
    settings["profile"] = prof.to_json()
    if "int8" in keep:
        settings["int8"] = {"recipe": recipe.to_json(), "reason": recipe_reason, "requested": requested}
    settings["retarget"] = {
        "source": {"manifest_sha256": source_id, "path": str(src_root), "model": src.model,
                   "backend": sorted({o.backend for b in src.blocks for o in b.options}), "device": src.device,
                   "tools": src.tools, "profile": src.settings.get("profile")},
        "backend": be.name,
        "accuracy": (f"measured here on {len(eval_y)} samples" if measured_here else MEASURED_ELSEWHERE),
        "measured_elsewhere": [] if measured_here else list(ACCURACY_FIELDS),
        "timing_input": "evaluation data" if measured_here else f"synthetic (standard normal, seed {SYNTHETIC_SEED})",
    }
    manifest = dataclasses.replace(
        src, blocks=tuple(blocks), teacher=teacher, device=be.fingerprint() | {"cpu_count": _cpu_count()},
        tools=_tools(), settings=settings, additivity=additivity, files={},
    )
    with progress.stage("bundle", 1) as advance:
        write_bundle(out, manifest, files)
        written = read_bundle(out)  # the verifying reader: schema, paths and every checksum
        advance()
    changed = [rel for rel in carried if written.files.get(rel) != src.files[rel]]
    if changed:  # pragma: no cover - the copies are checked when read; this would be a bug
        raise LegoCompileError(f"{out}: {changed[0]} differs from the source bundle's copy")
    return out


# ---------------------------------------------------------------------------------------------------- helpers
def _source_option(src: Manifest, k: tuple[int, str, str]) -> OptionEntry | None:
    i, variant, precision = k
    return next((o for o in src.blocks[i].options if o.variant == variant and o.precision == precision), None)


def _copy_verified(root: Path, rel: str, sha256: str, ws: Workspace, suffix: str) -> Path:
    """The bundle file ``rel`` as a work-directory file named by its sha256 (read once, checked, then written)."""
    path = ws.path("sources", sha256, suffix)
    if not path.exists():
        atomic_write_bytes(path, read_verified_bytes(root, rel, sha256))
    return path


def _read_sources(root: Path, src: Manifest, ws: Workspace, precisions: Sequence[str], progress):
    """Each variant's ONNX (and, for int8, its calibration ranges) copied out of the bundle into the work folder."""
    from legocompile import __version__

    calib = calibration_files(src)
    int8 = "int8" in precisions
    variants = [(i, b, name) for i, b in enumerate(src.blocks) for name in dict.fromkeys(o.variant for o in b.options)]
    if int8:
        lacking = [f"{b.name}/{name}" for _, b, name in variants if (b.name, name) not in calib]
        if lacking:
            raise LegoCompileError(
                f"{root}: no int8 calibration ranges for {lacking[0]} (the bundle was built before bundles carried "
                f"them); rebuild it with legocompile >= {__version__} from this release, or retarget without int8 "
                "(--precision fp32 or fp32,fp16)")
    exported: dict[tuple[int, str], dict] = {}
    ranges: dict[tuple[int, str], Any] = {}
    carried: dict[str, Path] = {}
    with progress.stage("read bundle", len(variants)) as advance:
        for i, b, name in variants:
            o = next(o for o in b.options if o.variant == name)
            path = _copy_verified(root, o.onnx, src.files[o.onnx], ws, ".onnx")
            carried[o.onnx] = path
            gate = o.accuracy_gate or {}
            exported[(i, name)] = {"path": path, "sha256": src.files[o.onnx],
                                   "relative_err": float(gate.get("export_relative_err", 0.0))}
            for kind, rel in calib.get((b.name, name), {}).items():
                carried[rel] = _copy_verified(root, rel, src.files[rel], ws, ".json" if kind == "ranges" else ".cache")
            if int8:
                from calibration.ranges import TensorRanges

                ranges[(i, name)] = TensorRanges.from_json(carried[calib[(b.name, name)]["ranges"]])
            advance()
    return exported, ranges, carried


def _check_data(data, src: Manifest) -> tuple[np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(data[0], dtype=np.float32)
    y = np.asarray(data[1])  # labels as given (class ids, masks...): the bundle's metric reads them
    if x.ndim != len(src.input.shape) or tuple(x.shape[1:]) != tuple(src.input.shape[1:]):
        raise LegoCompileError(f"data: x has shape {tuple(x.shape)}; the bundle's input is "
                               f"(N, {', '.join(map(str, src.input.shape[1:]))})")
    if len(x) != len(y) or len(y) == 0:
        raise LegoCompileError(f"data: {len(x)} inputs but {len(y)} labels")
    return x, y


def _block_inputs(be, chain, engines, x: np.ndarray, progress) -> list[np.ndarray]:
    """Every block's input on ``x``, from the chain of this backend's fp32 engines of the original blocks."""
    from legocompile.profile.profiler import run_batched

    inputs = [x]
    with progress.stage("block inputs (fp32 chain)", len(chain) - 1) as advance:
        for i in range(len(chain) - 1):
            inputs.append(run_batched(be.load(engines[(i, "s0", "fp32")]["path"]), inputs[-1]))
            advance()
    logger.info("block inputs for %d samples from the fp32 engine chain", len(x))
    return inputs
