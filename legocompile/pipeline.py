"""``compile``: model → blocks → ONNX → engines → profiles → bundle, each stage cached by content.

Data flows one way: each stage reads the previous stage's artefacts (files in the work directory, keyed by the hash
of everything they depend on) and writes its own. A rerun with nothing changed loads every artefact from the cache
and builds nothing; an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from legocompile._log import logger
from legocompile.config import CalibrationConfig, ProfileConfig, normalize_precisions
from legocompile.errors import LegoCompileError
from legocompile.modes import eval_mode
from legocompile.progress import Progress, SilentProgress
from legocompile.workspace import Workspace, content_key, sha256_file

STAGES = ("derive", "retrain", "export", "calibrate", "engines", "profile", "bundle")
PARTITION_TOLERANCE = 1e-4  # max |chain - model| allowed, relative to the output's magnitude


@dataclass
class BuildReport:
    """What a build did: which stages ran and which were cached (for the CLI's summary and for tests)."""

    bundle: Path
    built: dict[str, int] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)
    unprunable: list[str] = field(default_factory=list)  # layers pruning left whole, with the reason

    def count(self, stage: str, was_cached: bool) -> None:
        target = self.cached if was_cached else self.built
        target[stage] = target.get(stage, 0) + 1


def _module_key(module, input_shape) -> str:
    import torch

    state = module.state_dict()
    parts = [str(getattr(module, "code", type(module).__name__)), list(input_shape), torch.__version__]
    for name in sorted(state):
        parts += [name, state[name].detach().cpu().contiguous().numpy()]
    return content_key(*parts)


def _tools() -> dict[str, str]:
    import onnx
    import onnxruntime
    import torch

    from legocompile import __version__

    return {
        "legocompile": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "python": platform.python_version(),
    }


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
    model_name: str | None = None,
    data_provider: str | None = None,
    sparsities: Sequence[float] = (0.0,),
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
        eval_data: ``(inputs, int labels)`` used for accuracy profiles.
        out: the bundle folder (replaced atomically).
        blocks: ``"auto"`` or module paths that end each block.
        max_blocks: with ``"auto"``, merge the cheapest neighbours until at most this many blocks remain.
        precisions: engines to build per block; fp32 is always built.
        work_dir: cache folder (default: ``<out>/../legocompile-work``).
        data_provider: the ``pkg.mod:fn`` that produced the data, recorded so ``legocompile run`` can evaluate.
        sparsities: derive a pruned, retrained variant of every block per sparsity (0 is the original).
        retrain: :class:`legocompile.variants.retrain.RetrainSettings` for the descendants.
        train_data: model inputs the descendants are retrained on (default: ``calibration_data``).
        external_variants: :class:`legocompile.variants.stage.ExternalVariant` entries (bring your own).
        additivity_samples: random full selections measured to check the additive accuracy model (0: skip).
        until: stop after this stage (``derive``, ``retrain``, ``export``, ``calibrate``, ``engines``,
            ``profile``); the bundle is written only by a full run (``bundle``).
    """
    if until not in STAGES:
        raise LegoCompileError(f"unknown stage {until!r}; stages: {', '.join(STAGES)}")
    import torch

    from calibration.capture import block_inputs
    from calibration.ranges import CalibrationSettings
    from legocompile.backends import get_backend
    from legocompile.backends.onnxrt.session import ort_compat
    from legocompile.blocks import partition, verify_partition

    progress = progress or SilentProgress()
    precisions = normalize_precisions(list(precisions))
    out = Path(out).resolve()
    ws = Workspace(Path(work_dir) if work_dir else out.parent / "legocompile-work")
    report = report if report is not None else BuildReport(bundle=out)
    be = get_backend(backend)
    fingerprint = be.fingerprint()

    calib_x = _as_array(calibration_data, "calibration_data")[: calibration.num_samples]
    eval_x = _as_array(eval_data[0], "eval inputs")
    eval_y = np.asarray(eval_data[1]).astype(np.int64).reshape(-1)
    if len(eval_x) != len(eval_y) or len(eval_y) == 0:
        raise LegoCompileError(f"eval data: {len(eval_x)} inputs but {len(eval_y)} labels")
    example = torch.as_tensor(np.asarray(example_input, dtype=np.float32))[:1]

    with eval_mode(model):
        with progress.stage("partition", 1) as advance:
            chain = partition(model, example, blocks, max_blocks=max_blocks)
            err = verify_partition(model, chain, torch.from_numpy(eval_x[:16]))
            with torch.no_grad():
                scale = float(model(torch.from_numpy(eval_x[:16])).abs().max()) or 1.0
                teacher_logits = torch.cat(
                    [model(torch.from_numpy(eval_x[i : i + 256])) for i in range(0, len(eval_x), 256)]
                ).numpy()
            advance()
    if err > PARTITION_TOLERANCE * max(1.0, scale):
        raise LegoCompileError(f"the chain of blocks differs from the model by {err:.3g}; partition is not exact")
    from legocompile.profile import top1

    pytorch_accuracy = top1(teacher_logits, eval_y)
    logger.info("partitioned into %d blocks (max |chain - model| = %.2e)", len(chain), err)

    modules = [b.module for b in chain]
    with progress.stage("teacher activations", 2) as advance:
        calib_in = block_inputs(modules, calib_x)
        advance()
        eval_in = block_inputs(modules, eval_x)
        advance()

    from legocompile.variants.retrain import RetrainSettings
    from legocompile.variants.stage import build_variants

    module_keys = [_module_key(b.module, b.input_shape) for b in chain]
    train_x = calib_x if train_data is None else _as_array(train_data, "train_data")
    variants = build_variants(
        ws, chain, module_keys, calib_in, sparsities=sparsities, retrain=retrain or RetrainSettings(),
        train_inputs=train_x, external=external_variants, progress=progress, report=report, until=until,
    )
    if until in ("derive", "retrain"):
        return out
    settings = CalibrationSettings(method=calibration.method, num_samples=calibration.num_samples, percentile=calibration.percentile)

    # ---------------------------------------------------------------- export
    exported: dict[tuple[int, str], dict] = {}
    n_variants = sum(len(v) for v in variants)
    with progress.stage("export", n_variants) as advance:
        for i, block in enumerate(chain):
            for v in variants[i]:
                key = module_keys[i] if v.name == "s0" else _module_key(v.module, block.input_shape)
                onnx_path = ws.path("onnx", key, ".onnx")

                def do_export(v=v, i=i, onnx_path=onnx_path):
                    from legocompile.export import export_block

                    res = export_block(v.module, calib_in[i][:64], onnx_path)
                    return {"max_abs_err": res.max_abs_err, "num_checked": res.num_checked}

                meta, cached = ws.cached_json("onnx", key, do_export)
                if not onnx_path.exists():  # the meta survived but the model did not: redo
                    meta = do_export()
                    cached = False
                report.count("export", cached)
                exported[(i, v.name)] = {
                    **meta,
                    "path": onnx_path,
                    "sha256": sha256_file(onnx_path),
                    "params": int(sum(p.numel() for p in v.module.parameters())),
                    "sparsity": v.sparsity,
                }
                advance()

    if until == "export":
        return out

    # ---------------------------------------------------------------- calibration (int8 only)
    ranges: dict[tuple[int, str], Any] = {}
    if "int8" in precisions:
        from calibration.ranges import TensorRanges, compute_ranges

        with progress.stage(f"calibrate ({calibration.method})", n_variants) as advance:
            for i in range(len(chain)):
                for v in variants[i]:
                    ex = exported[(i, v.name)]
                    key = content_key(ex["sha256"], calib_in[i], repr(settings))
                    path = ws.path("calibration", key, ".json")
                    if path.exists():
                        ranges[(i, v.name)] = TensorRanges.from_json(path)
                        report.count("calibrate", True)
                    else:
                        with ort_compat():
                            r = compute_ranges(ex["path"], calib_in[i], settings)
                        r.to_json(path)
                        ranges[(i, v.name)] = r
                        report.count("calibrate", False)
                    advance()

    if until == "calibrate":
        return out

    # ---------------------------------------------------------------- engines
    engines: dict[tuple[int, str, str], dict] = {}
    with progress.stage("engines", n_variants * len(precisions)) as advance:
        for i in range(len(chain)):
            for v in variants[i]:
                ex = exported[(i, v.name)]
                for p in precisions:
                    r = ranges.get((i, v.name)) if p == "int8" else None
                    key = content_key(ex["sha256"], p, fingerprint, r.ranges if r else None)
                    path = ws.path("engines", key, be.engine_suffix)
                    cached = path.exists()
                    if not cached:
                        be.build(ex["path"], p, path, ranges=r)
                    report.count("engine", cached)
                    engines[(i, v.name, p)] = {"path": path, "sha256": sha256_file(path)}
                    advance()

    if until == "engines":
        return out

    # ---------------------------------------------------------------- profiles
    from legocompile.profile.profiler import profile_engines

    profiles, teacher = profile_engines(
        ws,
        be,
        fingerprint,
        chain=chain,
        engines=engines,
        eval_in=eval_in,
        eval_y=eval_y,
        settings=profile,
        progress=progress,
        report=report,
    )

    from legocompile.profile.additivity import check_additivity

    additivity = check_additivity(
        ws, be,
        options=[[(i, v.name, p) for v in variants[i] for p in precisions] for i in range(len(chain))],
        engines=engines, drops={k: v["accuracy_drop"] for k, v in profiles.items()},
        teacher_accuracy=teacher["accuracy"], eval_x=eval_x, eval_y=eval_y,
        num_selections=additivity_samples, progress=progress,
    )
    if until == "profile":
        return out

    # ---------------------------------------------------------------- bundle
    from legocompile.bundle import BlockEntry, Manifest, OptionEntry, TensorSpec, write_bundle

    files: dict[str, Path] = {}
    block_entries = []
    for i, block in enumerate(chain):
        options = []
        for v in variants[i]:
            ex = exported[(i, v.name)]
            onnx_rel = f"onnx/{block.name}/{v.name}.onnx"
            files[onnx_rel] = ex["path"]
            for p in precisions:
                eng = engines[(i, v.name, p)]
                rel = f"engines/{block.name}/{v.name}-{p}{be.engine_suffix}"
                files[rel] = eng["path"]
                prof = profiles[(i, v.name, p)]
                options.append(
                    OptionEntry(
                        variant=v.name,
                        sparsity=v.sparsity,
                        precision=p,
                        backend=be.name,
                        engine=rel,
                        sha256=eng["sha256"],
                        onnx=onnx_rel,
                        params=ex["params"],
                        export_max_abs_err=ex["max_abs_err"],
                        latency_ms=prof["latency_ms"],
                        latency_p90_ms=prof["latency_p90_ms"],
                        memory_bytes=prof["memory_bytes"],
                        accuracy_drop=prof["accuracy_drop"],
                        output_max_abs_err=prof["output_max_abs_err"],
                    )
                )
        batch = profile.batch_size
        block_entries.append(
            BlockEntry(
                name=block.name,
                input=TensorSpec(name="x", shape=(batch, *block.input_shape[1:])),
                output=TensorSpec(name="y", shape=(batch, *block.output_shape[1:])),
                options=tuple(options),
            )
        )
    teacher["pytorch_accuracy"] = pytorch_accuracy
    manifest = Manifest(
        schema_version=1,
        model=model_name or type(model).__name__,
        input=TensorSpec(name="x", shape=(profile.batch_size, *tuple(example.shape[1:]))),
        blocks=tuple(block_entries),
        teacher=teacher,
        device=fingerprint | {"cpu_count": _cpu_count()},
        tools=_tools(),
        settings={
            "profile": {
                "batch_size": profile.batch_size,
                "warmup": profile.warmup,
                "runs": profile.runs,
                "threads": profile.threads,
            },
            "calibration": {"method": calibration.method, "num_samples": len(calib_x), "percentile": calibration.percentile},
            "partition": {"blocks": blocks if isinstance(blocks, str) else list(blocks), "max_blocks": max_blocks,
                          "max_abs_err": err},
        },
        additivity=additivity,
        extra={"data_provider": data_provider} if data_provider else {},
    )
    with progress.stage("bundle", 1) as advance:
        write_bundle(out, manifest, files)
        advance()
    return out


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
