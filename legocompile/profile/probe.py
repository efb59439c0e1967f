"""The profiling probe: a separate process that measures engines the way the Runtime will run them.

Why a separate process: ORT's process-wide thread pool (which the Runtime uses to chain engines cheaply) cannot be
undone once created, and resident-memory figures are only meaningful in a clean process. The build process stays
an ordinary ORT user; the probe is set up exactly like an application that loads the bundle.

Order matters. The probe first measures **memory**, forking one child per engine before any ORT thread exists: the
child loads the engine once and runs it (paging in ORT's code and process-wide state, about 16 MB here, paid once
per process), reads its resident set size, loads a second instance, runs one inference at the profile batch size
(which sizes the activation arena), and reads its RSS again; the difference is what keeping that engine loaded
costs. Then the probe configures ORT threading like the Runtime and measures **latency**: each engine bound to
preallocated buffers fed a real block input, in interleaved rounds, and the chain of the original fp32 engines.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from legocompile.errors import LegoCompileError


@dataclass(frozen=True)
class ProbeEngine:
    path: Path
    input_shape: tuple[int, ...]  # at the profile batch size
    output_shape: tuple[int, ...]
    input_file: Path  # .npy with a real input of input_shape


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _memory_child(path: str, shape: list[int], threads: int) -> int:
    import numpy as np

    from legocompile.backends.onnxrt.session import configure_threads, create_session
    from legocompile.export import INPUT_NAME, OUTPUT_NAME

    configure_threads(threads)
    x = np.zeros(shape, dtype=np.float32)
    warm = create_session(path)
    warm.run([OUTPUT_NAME], {INPUT_NAME: x})
    before = _rss_bytes()
    session = create_session(path)
    session.run([OUTPUT_NAME], {INPUT_NAME: x})
    after = _rss_bytes()
    del warm, session
    return max(0, after - before)


def _measure_memory_forked(engines: list[dict], threads: int) -> list[int]:
    out = []
    for e in engines:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: measure, report, exit without running the parent's cleanup
            os.close(r)
            try:
                value = _memory_child(e["path"], e["input_shape"], threads)
            except Exception:
                value = -1
            os.write(w, str(value).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            text = f.read()
        os.waitpid(pid, 0)
        out.append(int(text) if text else -1)
    return out


def _serve() -> None:
    """Probe entry point: a JSON job on stdin, a JSON result on stdout."""
    import numpy as np

    import onnxruntime  # noqa: F401  (imported before forking; no session or thread exists yet)

    job = json.load(sys.stdin)
    engines = job["engines"]
    memory = _measure_memory_forked(engines, job["threads"]) if job["memory"] else []

    from legocompile.backends.onnxrt import OnnxRuntimeBackend, configure_threads
    from legocompile.profile.latency import interleaved_latency, measure_latency

    configure_threads(job["threads"])
    be = OnnxRuntimeBackend()
    runs, loaded = {}, {}
    for k, e in enumerate(engines):
        src, dst = be.allocate(tuple(e["input_shape"])), be.allocate(tuple(e["output_shape"]))
        src.numpy()[...] = np.load(e["input_file"])
        loaded[k] = be.load(Path(e["path"]))
        runs[k] = loaded[k].bind(src, dst)
    stats = interleaved_latency(runs, warmup=job["warmup"], runs=job["runs"]) if job["latency"] else {}
    chains = []
    for chain in job["chains"]:  # lists of engine indices, run back to back on shared boundary buffers
        bufs = [be.allocate(tuple(engines[chain[0]]["input_shape"]))]
        bufs += [be.allocate(tuple(engines[k]["output_shape"])) for k in chain]
        bufs[0].numpy()[...] = np.load(engines[chain[0]]["input_file"])
        bound = [loaded[k].bind(bufs[i], bufs[i + 1]) for i, k in enumerate(chain)]

        def run_chain(bound=bound) -> None:
            for r in bound:
                r()

        chains.append(measure_latency(run_chain, warmup=job["warmup"], runs=job["runs"]).to_json())
    result = {
        "memory_bytes": memory,
        "latency": [stats[k].to_json() for k in range(len(engines))] if stats else [],
        "chains": chains,
        "threads": job["threads"],
    }
    json.dump(result, sys.stdout)


def run_probe(
    engines: list[ProbeEngine],
    *,
    threads: int,
    warmup: int,
    runs: int,
    chains: list[list[int]] = (),
    memory: bool = True,
    latency: bool = True,
) -> dict:
    """Measure ``engines`` (and chains of them, by index) in a fresh probe process; see the module docstring."""
    if not hasattr(os, "fork") or not Path("/proc/self/statm").exists():
        raise LegoCompileError("profiling needs Linux (/proc and fork)")
    job = {
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "memory": memory,
        "latency": latency,
        "chains": [list(c) for c in chains],
        "engines": [
            {"path": str(e.path), "input_shape": list(e.input_shape), "output_shape": list(e.output_shape),
             "input_file": str(e.input_file)}
            for e in engines
        ],
    }
    proc = subprocess.run(
        [sys.executable, "-c", "from legocompile.profile.probe import _serve; _serve()"],
        input=json.dumps(job), capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise LegoCompileError(f"profiling probe failed: {tail[0]}")
    result = json.loads(proc.stdout)
    bad = [e.path.name for e, m in zip(engines, result["memory_bytes"]) if m < 0]
    if bad:
        raise LegoCompileError(f"profiling probe could not load engine {bad[0]}")
    return result
