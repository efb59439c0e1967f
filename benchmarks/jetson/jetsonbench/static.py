"""Static runs: every engine alone, the chained selection against one whole-model engine, PyTorch eager, trtexec.

Each measurement is either ``{"status": "ok", ...}`` or ``{"status": "skipped", "reason": "..."}``: nothing that
cannot run here is invented.

* **Per engine**: each selectable engine of the bundle is loaded through its backend and run alone between two
  boundary buffers of its block (random normal input; the nets here time the same on any data). ONNX Runtime
  engines are timed on the wall clock; TensorRT engines with CUDA events on their stream, as the build's
  profiler does (:mod:`legocompile.backends.tensorrt.profiling`). The result is set beside the bundle's profile.
* **Chain vs whole model**: the Runtime running the teacher's selection (each block's original fp32 engine), and
  the other uniform selections, against one ORT session of the whole model, which is the bundle's per-block fp32
  ONNX exports composed with ``onnx.compose`` and loaded through the same backend, so with the same session
  settings. Timed in interleaved rounds (machine drift hits all alike). The chain call copies its input in and its
  output out; the whole-model session runs bound to its buffers (as ``benchmarks/bench_chain.py`` does).
* **PyTorch eager**, when torch is installed and the model is given (``--config`` or ``--torch-model example``;
  a bundle holds no PyTorch model). Timed apart: torch's OpenMP threads spin after a call and would slow
  whatever ran next.
* **trtexec**, when it is found and the bundle holds TensorRT engines: ``trtexec --loadEngine`` on each engine's
  plan (the bundle's engine file minus its compatibility header), ``GPU Compute Time`` median against the profile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

ORT = "onnxruntime"


# ------------------------------------------------------------------------------------------------------- timing
def stats(samples_ms) -> dict:
    a = np.asarray(samples_ms, dtype=np.float64)
    if a.size == 0:
        return {"runs": 0}
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "p99_ms": float(np.percentile(a, 99)), "mean_ms": float(a.mean()), "min_ms": float(a.min()),
            "runs": int(a.size)}


def time_calls(fn: Callable[[], object], *, warmup: int, runs: int) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(runs)
    clock = time.perf_counter
    for i in range(runs):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    return out * 1e3


def interleaved(fns: dict[str, Callable[[], object]], *, warmup: int, runs: int, rounds: int = 10) -> dict[str, np.ndarray]:
    """Per-call samples (ms) of each function, timed in interleaved rounds (each round warms its function up)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per_round = max(1, runs // rounds)
    samples: dict[str, list] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            samples[name].extend(time_calls(fn, warmup=min(20, warmup), runs=per_round))
    return {k: np.asarray(v) for k, v in samples.items()}


# ------------------------------------------------------------------------------------------------------ engines
def _backend(cache: dict, name: str):
    if name not in cache:
        from legocompile.backends import get_backend
        from legocompile.errors import LegoCompileError

        try:
            cache[name] = get_backend(name)
        except LegoCompileError as e:  # e.g. TensorRT not installed
            cache[name] = e
    return cache[name]


def _fill(buf, rng) -> None:
    try:
        arr = buf.numpy()
    except Exception:  # a device buffer without a host view: leave it as allocated
        return
    if isinstance(arr, np.ndarray):
        arr[...] = rng.standard_normal(arr.shape).astype(arr.dtype)


def engine_latencies(manifest, root: Path, *, warmup: int, runs: int, progress: Callable[[str], None]) -> list[dict]:
    """Every engine of the bundle timed alone (see the module docstring)."""
    rng = np.random.default_rng(0)
    backends: dict[str, Any] = {}
    out = []
    total = sum(len(b.options) for b in manifest.blocks)
    done = 0
    for b in manifest.blocks:
        for o in b.options:
            done += 1
            entry: dict[str, Any] = {"block": b.name, "variant": o.variant, "precision": o.precision,
                                     "backend": o.backend, "profiled_ms": o.latency_ms,
                                     "profiled_p90_ms": o.latency_p90_ms, "memory_bytes": o.memory_bytes}
            out.append(entry)
            if o.excluded:
                entry |= {"status": "skipped", "reason": f"excluded from selection: {' '.join(str(o.excluded).split())}"}
                continue
            be = _backend(backends, o.backend)
            if isinstance(be, Exception):
                entry |= {"status": "skipped", "reason": f"{o.backend} backend unavailable: {be}"}
                continue
            try:
                engine = be.load(root / o.engine)
                src, dst = be.allocate(tuple(b.input.shape)), _outputs(be, b, b.input.shape[0])
                _fill(src, rng)
                run = engine.bind(src, dst)
                if o.backend == "tensorrt":
                    from legocompile.backends.tensorrt.profiling import measure_latency

                    res = be.resources()
                    s = measure_latency(run, res.api, res.stream, warmup=warmup, runs=runs)
                    measured = {"median_ms": s.median_ms, "p90_ms": s.p90_ms, "runs": s.runs, "clock": "cuda events"}
                else:
                    measured = stats(time_calls(run, warmup=warmup, runs=runs)) | {"clock": "wall"}
            except Exception as e:  # one engine that fails to run is a result, not the end of the suite
                entry |= {"status": "failed", "reason": f"{type(e).__name__}: {_line(str(e))}"}
                continue
            finally:
                run = engine = src = dst = None  # noqa: F841  (free before the next engine)
            entry |= {"status": "ok", "measured": measured,
                      "measured_over_profiled": measured["median_ms"] / o.latency_ms if o.latency_ms > 0 else None}
            progress(f"engine {done}/{total} {b.name} {o.variant}/{o.precision}: {measured['median_ms']:.4f} ms "
                     f"(profiled {o.latency_ms:.4f})")
    return out


def _outputs(be, block, batch: int):
    """A block's output buffer at ``batch``, or one per output for a last block that returns several."""
    bufs = tuple(be.allocate((batch, *t.shape[1:])) for t in block.outputs)
    return bufs[0] if len(bufs) == 1 else bufs


def _line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


# ---------------------------------------------------------------------------------------------- whole model (ORT)
def compose_whole_onnx(manifest, root: Path) -> bytes:
    """The teacher as one ONNX model: every block's original fp32 export (``onnx/<block>/s0.onnx``) composed in
    order with ``onnx.compose``, input ``x`` and the last block's outputs (``y``, or ``y``, ``y1``, ...)."""
    import onnx
    from onnx import compose

    from legocompile.export import INPUT_NAME, OUTPUT_NAME

    models = []
    for i, b in enumerate(manifest.blocks):
        m = onnx.load(str(root / b.option("s0", "fp32").onnx))
        models.append(compose.add_prefix(m, prefix=f"b{i}_"))
    merged = models[0]
    for i, m in enumerate(models[1:], start=1):
        merged = compose.merge_models(merged, m, io_map=[(f"b{i - 1}_{OUTPUT_NAME}", f"b{i}_{INPUT_NAME}")])
    g = merged.graph
    rename = {g.input[0].name: INPUT_NAME}  # the last block's outputs (y, or y, y1, ... for a tuple) keep their names
    rename |= {o.name: o.name.removeprefix(f"b{len(models) - 1}_") for o in g.output}
    for node in g.node:
        for seq in (node.input, node.output):
            for k, name in enumerate(seq):
                if name in rename:
                    seq[k] = rename[name]
    for vi in (*g.input, *g.output):
        vi.name = rename.get(vi.name, vi.name)
    onnx.checker.check_model(merged)
    return merged.SerializeToString()


def uniform_selections(manifest) -> dict[str, list[tuple[str, str]]]:
    """The teacher's selection, every other precision of the original variants where each block offers it, and the
    fastest selection by the profiles; name -> explicit selection."""
    from legocompile.optimize.select import selectable

    out: dict[str, list[tuple[str, str]]] = {"teacher (s0/fp32)": [("s0", "fp32")] * len(manifest.blocks)}
    precisions = sorted({o.precision for b in manifest.blocks for o in b.options} - {"fp32"})
    for p in precisions:
        if all(any(o.key == ("s0", p) for o in selectable(b)) for b in manifest.blocks):
            out[f"all s0/{p}"] = [("s0", p)] * len(manifest.blocks)
    fastest = [min(selectable(b), key=lambda o: o.latency_ms).key for b in manifest.blocks]
    if fastest not in out.values():
        out["fastest (profiled)"] = fastest
    return out


def chain_vs_whole(rt, manifest, root: Path, x: np.ndarray, *, warmup: int, runs: int,
                   progress: Callable[[str], None]) -> dict:
    """The Runtime's chain for each uniform selection against one whole-model ORT session (see module docstring)."""
    backend_names = {o.backend for b in manifest.blocks for o in b.options}
    result: dict[str, Any] = {"selections": {}}
    whole_run = None
    if backend_names == {ORT}:
        try:
            from legocompile.backends import get_backend

            be = get_backend(ORT)
            whole = be.load(compose_whole_onnx(manifest, root))
            src = be.allocate(tuple(x.shape))
            dst = _outputs(be, manifest.blocks[-1], x.shape[0])
            np.copyto(src.numpy(), x)
            whole_run = whole.bind(src, dst)
            result["whole_model"] = {"status": "ok", "engine": "onnx.compose of onnx/<block>/s0.onnx, one ORT session",
                                     "check_max_abs_diff": None}
        except Exception as e:
            result["whole_model"] = {"status": "skipped", "reason": f"could not compose the whole model: "
                                                                    f"{type(e).__name__}: {_line(str(e))}"}
    else:
        result["whole_model"] = {"status": "skipped", "reason": (
            f"the bundle's engines are {', '.join(sorted(backend_names))}: no whole-model engine to compare with "
            "(for TensorRT see --trtexec-whole)")}
    for name, sel in uniform_selections(manifest).items():
        try:
            chosen = rt.select(selection=sel)
            fns = {"chain": lambda: rt(x)}
            if whole_run is not None:
                fns["whole"] = whole_run
            samples = interleaved(fns, warmup=warmup, runs=runs)
        except Exception as e:
            result["selections"][name] = {"status": "failed", "reason": f"{type(e).__name__}: {_line(str(e))}"}
            continue
        entry: dict[str, Any] = {"status": "ok", "selection": [f"{v}/{p}" for v, p in sel],
                                 "predicted_ms": chosen.latency_ms, "chain": stats(samples["chain"]),
                                 "chain_samples_ms": [round(float(v), 5) for v in samples["chain"]]}
        entry["predicted_over_measured"] = chosen.latency_ms / entry["chain"]["median_ms"]
        if whole_run is not None:
            entry["whole"] = stats(samples["whole"])
            entry["whole_samples_ms"] = [round(float(v), 5) for v in samples["whole"]]
            entry["chain_over_whole"] = entry["chain"]["median_ms"] / entry["whole"]["median_ms"]
        result["selections"][name] = entry
        msg = f"chain {name}: {entry['chain']['median_ms']:.4f} ms (predicted {chosen.latency_ms:.4f})"
        if "whole" in entry:
            msg += f", whole model {entry['whole']['median_ms']:.4f} ms, chain/whole {entry['chain_over_whole']:.2f}"
        progress(msg)
    if whole_run is not None:  # the same function? the teacher chain and the whole model must agree
        try:
            rt.select(selection=[("s0", "fp32")] * len(manifest.blocks))
            whole_run()
            from legocompile.outputs import as_outputs

            result["whole_model"]["check_max_abs_diff"] = max(
                float(np.max(np.abs(c - w.numpy()))) for c, w in zip(as_outputs(rt(x)), as_outputs(dst), strict=True))
        except Exception as e:
            result["whole_model"]["check_max_abs_diff"] = f"not checked: {type(e).__name__}: {_line(str(e))}"
    return result


# ------------------------------------------------------------------------------------------------ PyTorch eager
EXAMPLE_MODEL = "resnet18_digits"  # the built-in example's model name in its bundles (legocompile.project.example_config)


def load_torch_model(config: str | None, example: bool, manifest):
    """(model, None), or (None, the reason there is none). The model must be the bundle's: same name (the project's
    ``[model].name`` or the example's) and the same input shape."""
    from importlib.util import find_spec

    if find_spec("torch") is None:
        return None, "torch is not installed"
    if not config and not example:
        return None, ("no PyTorch model: a bundle holds none; pass --config legocompile.toml (its [model]) or "
                      "--torch-model example (the built-in example)")
    try:
        if example:
            if manifest.model != EXAMPLE_MODEL:
                return None, f"the bundle's model is {manifest.model!r}, not the built-in example ({EXAMPLE_MODEL!r})"
            from legocompile.examples import EXAMPLE_INPUT_SHAPE, load_example_model

            model, shape = load_example_model(), tuple(EXAMPLE_INPUT_SHAPE)
        else:
            from legocompile.project import resolve_project

            project = resolve_project(config)
            if project.config.model.name != manifest.model:
                return None, (f"{config} describes model {project.config.model.name!r}, the bundle holds "
                              f"{manifest.model!r}")
            model, shape = project.load_model(), tuple(project.config.model.input_shape)
    except Exception as e:
        return None, f"could not load the model: {type(e).__name__}: {_line(str(e))}"
    if shape[1:] != tuple(manifest.input.shape[1:]):
        return None, f"the model's input shape {shape} is not the bundle's {tuple(manifest.input.shape)}"
    return model.eval(), None


def pytorch_eager(model, x: np.ndarray, *, threads: int, warmup: int, runs: int, chain_median_ms: float | None) -> dict:
    import torch

    torch.set_num_threads(threads)
    xt = torch.from_numpy(np.ascontiguousarray(x))

    def call():
        with torch.no_grad():
            model(xt)

    try:
        samples = time_calls(call, warmup=warmup, runs=runs)
    except Exception as e:
        return {"status": "failed", "reason": f"{type(e).__name__}: {_line(str(e))}"}
    out = {"status": "ok", "torch": torch.__version__, "threads": threads, "eager": stats(samples),
           "samples_ms": [round(float(v), 5) for v in samples]}
    if chain_median_ms:
        out["eager_over_chain"] = out["eager"]["median_ms"] / chain_median_ms
    return out


# ------------------------------------------------------------------------------------------------------ trtexec
_STAT_KEYS = {"min": "min", "max": "max", "mean": "mean", "median": "median", "percentile(90%)": "p90",
              "percentile(95%)": "p95", "percentile(99%)": "p99"}
_NUM = r"([0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)"


def _summary_line(text: str, label: str) -> dict | None:
    """TensorRT 8+: ``[I] GPU Compute Time: min = 0.6 ms, max = 1.0 ms, ..., median = 0.65 ms, percentile(99%) = ..``"""
    m = re.search(rf"{re.escape(label)}: (.*?ms)\s*$", text, re.M)
    if not m:
        return None
    out = {}
    for key, value in re.findall(rf"(min|max|mean|median|percentile\(\d+%\)) = {_NUM} ms", m.group(1)):
        if key in _STAT_KEYS:
            out[_STAT_KEYS[key]] = float(value)
    return out or None


def _legacy_block(text: str, header: str) -> dict | None:
    """TensorRT 7: ``[I] GPU Compute`` then ``[I] min: 4.24 ms`` ... ``[I] percentile: 5.36 ms at 99%`` lines."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.search(rf"\[I\] {re.escape(header)}\s*$", line):
            out: dict[str, float] = {}
            for nxt in lines[i + 1:]:
                m = re.search(rf"\[I\] (min|max|mean|median): {_NUM} ms", nxt)
                if m:
                    out[m.group(1)] = float(m.group(2))
                    continue
                m = re.search(rf"\[I\] percentile: {_NUM} ms at (\d+)%", nxt)
                if m:
                    out[f"p{m.group(2)}"] = float(m.group(1))
                    continue
                break
            return out or None
    return None


def parse_trtexec_output(text: str) -> dict:
    """trtexec's performance summary -> ``{"gpu_compute_ms": {median, ...}, "latency_ms": {...},
    "throughput_qps": ..., "tensorrt_version": "8.6.2", "passed": bool}``; keys only for what the text holds."""
    out: dict[str, Any] = {}
    gpu = _summary_line(text, "GPU Compute Time") or _legacy_block(text, "GPU Compute")
    if gpu:
        out["gpu_compute_ms"] = gpu
    lat = _summary_line(text, "Latency") or _legacy_block(text, "Host Latency")
    if lat:
        out["latency_ms"] = lat
    m = re.search(rf"Throughput: {_NUM} qps", text)
    if m:
        out["throughput_qps"] = float(m.group(1))
    m = re.search(r"TensorRT version: (\d+\.\d+\.\d+)", text)
    if m:
        out["tensorrt_version"] = m.group(1)
    else:
        m = re.search(r"\[TensorRT v(\d{4,6})\]", text)
        if m:
            d = m.group(1)  # v8602 -> 8.6.2, v100300 -> 10.3.0
            major, minor, patch = d[:-4] if len(d) > 4 else d[0], d[-4:-2] if len(d) > 4 else d[1], d[-2:]
            out["tensorrt_version"] = f"{int(major)}.{int(minor)}.{int(patch)}"
    if "&&&& PASSED" in text:
        out["passed"] = True
    elif "&&&& FAILED" in text:
        out["passed"] = False
    return out


def find_trtexec(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("trtexec") or next(
        (p for p in ("/usr/src/tensorrt/bin/trtexec",) if os.access(p, os.X_OK)), None)


def trtexec_args(trtexec: str, plan: Path, input_shape: tuple[int, ...], *, quick: bool) -> list[str]:
    from legocompile.export import INPUT_NAME

    return [trtexec, f"--loadEngine={plan}", f"--shapes={INPUT_NAME}:{'x'.join(str(d) for d in input_shape)}",
            f"--warmUp={100 if quick else 500}", f"--iterations={50 if quick else 500}",
            f"--duration={0 if quick else 3}", "--avgRuns=10"]


def trtexec_engines(manifest, root: Path, trtexec: str | None, workdir: Path, *, quick: bool,
                    progress: Callable[[str], None]) -> dict:
    trt_options = [(b, o) for b in manifest.blocks for o in b.options if o.backend == "tensorrt" and not o.excluded]
    if not trt_options:
        return {"status": "skipped", "reason": "the bundle has no TensorRT engines (retarget it with "
                                               "`legocompile retarget BUNDLE --backend tensorrt --out DEVICE_BUNDLE`)"}
    if trtexec is None:
        return {"status": "skipped", "reason": "trtexec not found (not on PATH, not /usr/src/tensorrt/bin/trtexec; "
                                               "or pass --trtexec PATH)"}
    from legocompile.backends.tensorrt.engine_file import unpack

    engines = []
    for b, o in trt_options:
        entry: dict[str, Any] = {"block": b.name, "variant": o.variant, "precision": o.precision,
                                 "profiled_ms": o.latency_ms}
        try:
            _, plan = unpack((root / o.engine).read_bytes(), o.engine)
            plan_path = workdir / f"{b.name}-{o.variant}-{o.precision}.plan"
            plan_path.write_bytes(plan)
            argv = trtexec_args(trtexec, plan_path, tuple(b.input.shape), quick=quick)
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, timeout=300)
            parsed = parse_trtexec_output(proc.stdout)
            entry["command"] = " ".join(argv)
            if proc.returncode != 0 or "gpu_compute_ms" not in parsed:
                errors = [ln for ln in proc.stdout.splitlines() if "[E]" in ln or "Error" in ln]
                entry |= {"status": "failed", "reason": f"trtexec exited {proc.returncode}: "
                                                        f"{_line(errors[0] if errors else proc.stdout[-300:])}"}
            else:
                entry |= {"status": "ok", **parsed}
                med = parsed["gpu_compute_ms"].get("median")
                if med and o.latency_ms > 0:
                    entry["measured_over_profiled"] = med / o.latency_ms
                progress(f"trtexec {b.name} {o.variant}/{o.precision}: GPU compute median {med} ms "
                         f"(profiled {o.latency_ms:.4f})")
        except Exception as e:
            entry |= {"status": "failed", "reason": f"{type(e).__name__}: {_line(str(e))}"}
        engines.append(entry)
    return {"status": "ok", "trtexec": trtexec, "engines": engines}


def trtexec_whole(manifest, root: Path, trtexec: str | None, workdir: Path, *, quick: bool) -> dict:
    """Optional (``--trtexec-whole``): trtexec builds the composed fp32 whole model and times it (build time:
    minutes on a Jetson)."""
    if trtexec is None:
        return {"status": "skipped", "reason": "trtexec not found"}
    try:
        onnx_path = workdir / "whole-fp32.onnx"
        onnx_path.write_bytes(compose_whole_onnx(manifest, root))
        shape = "x".join(str(d) for d in manifest.input.shape)
        from legocompile.export import INPUT_NAME

        argv = [trtexec, f"--onnx={onnx_path}", f"--shapes={INPUT_NAME}:{shape}", f"--minShapes={INPUT_NAME}:{shape}",
                f"--optShapes={INPUT_NAME}:{shape}", f"--maxShapes={INPUT_NAME}:{shape}",
                f"--iterations={50 if quick else 500}", f"--duration={0 if quick else 3}"]
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=1800)
        parsed = parse_trtexec_output(proc.stdout)
        if proc.returncode != 0 or "gpu_compute_ms" not in parsed:
            return {"status": "failed", "reason": f"trtexec exited {proc.returncode}", "command": " ".join(argv)}
        return {"status": "ok", "command": " ".join(argv), "precision": "fp32", **parsed}
    except Exception as e:
        return {"status": "failed", "reason": f"{type(e).__name__}: {_line(str(e))}"}
