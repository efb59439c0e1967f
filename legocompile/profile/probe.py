"""The profiling probe: a separate process that measures engines the way the Runtime will run them.

Why a separate process: ORT's process-wide thread pool (which the Runtime uses to chain engines cheaply) cannot be
undone once created, and resident-memory figures are only meaningful in a clean process. The build process stays
an ordinary ORT user; the probe is set up exactly like an application that loads the bundle.

Order matters. The probe first measures **memory**, forking one child per engine before any ORT thread exists: the
child loads the engine once and runs it (paging in ORT's code and process-wide state, about 16 MB here, paid once
per process), reads its resident set size, loads a second instance, runs one inference at the profile batch size
(which sizes the activation arena), and reads its RSS again; the difference is what keeping that engine loaded
costs. Then the probe configures ORT threading like the Runtime and measures **latency in context**: a chain of
original engines of the same precision runs on real input with one block swapped for the engine being measured,
and only that engine's call is timed. An engine timed alone, back to back, keeps its weights and activations in
cache; in a chain its neighbours evict them (4-10% slower here), and how much depends on the neighbours: int8
engines timed among fp32 neighbours came out ~20% slower than in an int8 chain. Rounds interleave all engines
so drifts of the machine hit them alike. Finally it times the whole chain as the Runtime calls it (copy in, run the
blocks, copy out); what that takes beyond the sum of the blocks is the chain's fixed overhead per call.
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
    block: int  # position in the chain
    context: str  # which context chain to time it in (see run_probe's ``contexts``)
    input_shape: tuple[int, ...]  # at the profile batch size
    output_shape: tuple[int, ...]


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


def _latency_in_context(be, engines: list[dict], job: dict) -> dict:
    import time

    import numpy as np

    from legocompile.profile.latency import LatencyStats, measure_latency

    contexts = job["contexts"]  # name -> engine index per block position
    base = contexts[job["overhead_context"]]
    shapes = [engines[base[0]]["input_shape"]] + [engines[k]["output_shape"] for k in base]
    bufs = [be.allocate(tuple(s)) for s in shapes]
    x = np.load(job["chain_input"])
    bufs[0].numpy()[...] = x
    bound = [be.load(Path(e["path"])).bind(bufs[e["block"]], bufs[e["block"] + 1]) for e in engines]
    base_runs = [bound[k] for k in base]
    context_runs = {name: [bound[k] for k in chain] for name, chain in contexts.items()}
    rounds, warmup = 10, job["warmup"]
    per_round = max(1, job["runs"] // rounds)
    samples: list[list[float]] = [[] for _ in engines]
    clock = time.perf_counter
    for r in range(rounds):
        for k, e in enumerate(engines):
            runs = list(context_runs[e["context"]])
            runs[e["block"]] = bound[k]
            target = bound[k]
            for it in range((warmup if r == 0 else 2) + per_round):
                for run in runs:
                    if run is target:
                        t0 = clock()
                        run()
                        dt = clock() - t0
                    else:
                        run()
                if it >= (warmup if r == 0 else 2):
                    samples[k].append(dt * 1e3)
    stats = []
    for s in samples:
        a = np.asarray(s)
        stats.append(LatencyStats(float(np.median(a)), float(np.percentile(a, 90)), len(a), warmup).to_json())

    out = bufs[-1].numpy()

    def runtime_call() -> None:  # what Runtime.__call__ does around the blocks
        np.copyto(bufs[0].numpy(), x)
        for run in base_runs:
            run()
        out.copy()

    chain = measure_latency(runtime_call, warmup=warmup, runs=job["runs"] * 2).to_json()
    blocks_ms = sum(stats[k]["latency_ms"] for k in base)
    chain["overhead_ms"] = max(0.0, chain["latency_ms"] - blocks_ms)
    return {"latency": stats, "chain": chain}


def _serve() -> None:
    """Probe entry point: a JSON job on stdin, a JSON result on stdout."""
    import onnxruntime  # noqa: F401  (imported before forking; no session or thread exists yet)

    job = json.load(sys.stdin)
    engines = job["engines"]
    memory = _measure_memory_forked(engines, job["threads"]) if job["memory"] else []

    from legocompile.backends.onnxrt import OnnxRuntimeBackend, configure_threads

    configure_threads(job["threads"])
    result = {"memory_bytes": memory, "threads": job["threads"]}
    if job["latency"]:
        result.update(_latency_in_context(OnnxRuntimeBackend(), engines, job))
    json.dump(result, sys.stdout)


def run_probe(
    engines: list[ProbeEngine],
    *,
    threads: int,
    warmup: int,
    runs: int,
    contexts: dict[str, list[int]],
    overhead_context: str,
    chain_input: Path,
    memory: bool = True,
    latency: bool = True,
) -> dict:
    """Measure ``engines`` in a fresh probe process; see the module docstring.

    Args:
        contexts: context name -> index into ``engines`` of the chain's engine at each block position; each
            engine is timed in the context its ``context`` names.
        overhead_context: the context whose whole-chain time gives the chain's fixed overhead.
        chain_input: ``.npy`` with a real input of block 0 at the profile batch size.
    """
    if not hasattr(os, "fork") or not Path("/proc/self/statm").exists():
        raise LegoCompileError("profiling needs Linux (/proc and fork)")
    job = {
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "memory": memory,
        "latency": latency,
        "contexts": {k: list(v) for k, v in contexts.items()},
        "overhead_context": overhead_context,
        "chain_input": str(chain_input),
        "engines": [
            {"path": str(e.path), "block": e.block, "context": e.context, "input_shape": list(e.input_shape),
             "output_shape": list(e.output_shape)}
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
