"""The profiling probe: a separate process that measures engines the way the Runtime will run them.

Why a separate process: resident-memory figures are only meaningful in a clean process, and the probe must set
up ORT threading exactly like an application that loads the bundle (the process-wide pool, if the build opted in
to it, cannot be undone). The build process stays an ordinary ORT user.

The probe reaches engines only through the backend protocol (:mod:`legocompile.backends.base`): the job names the
backend, and the probe loads, binds and allocates through it and sets its threading up with ``configure``, as
the Runtime does. The figures below were measured with the ONNX Runtime backend. For a GPU backend the resident
set size is host memory only (its engines' device memory is measured by the backend's own profiling, e.g.
:mod:`legocompile.backends.tensorrt.profiling`).

**Memory** (``memory_bytes``): the resident bytes that keeping one more instance of the engine loaded adds, at the
profile batch size, in the Runtime's threading mode. For each engine the probe forks a child before any ORT
session or thread exists. The child reads the engine's bytes and loads it from them, as the Runtime does. It loads
two instances first (paging in ORT's code and process-wide state, paid once per process). Then it loads eight
more, one at a time, and reads the resident set size (``/proc/self/statm``) after each. Each instance is loaded,
bound to preallocated boundary buffers, and run ten times, which sizes its activation arena, plans its memory
pattern and lets its pool thread take part. The figure is the median of the eight increments. If they spread by more than 25% of it (seen rarely:
one process's layout made every other instance of an engine cost 60% more), the engine is measured again in a new
process, twice at most, and the steadiest measurement counts. So it covers the weights as ORT keeps them (prepacked
layouts included), the session's own structures and per-session threads, and the touched part of the activation
arena.

What makes it repeatable is ``malloc_trim``: the C heap's free pages go back to the OS after each load, before the
first run, and before each reading. That is also what the Runtime does after a switch. Without it, whether an
engine's arena landed on pages that the load had just freed (still resident) or on fresh ones (resident only where
touched) changed from process to process. Figures of one engine then varied by up to 70%, and pruned variants
could measure above their originals. With it, two probe runs of the example's engines agree within 2%. The
initializer bytes are reported beside the figure (``memory_detail``) as its explainable floor. For the example
the figure is the weights plus 0.3 to 0.8 MB per engine: ORT's session structures, the arena and one pool thread.

Known limits. Under CPU contention ORT's pool thread may sit out an engine's runs and never touch its buffers:
with four busy processes on 2 cores, small engines measured up to 60 KB (10%) lower. Profile on a quiet machine.
A pruned variant can really cost more than its original: with channel counts that are not a multiple of 8, ORT
leaves its blocked (NCHWc) convolutions for im2col ones with a scratch buffer. Swapping the example's
``conv1-layer1.0`` to its 0.4 variant (19 channels) added 0.3 MB in a running Runtime, as profiled.

**Latency in context**: after the memory children, the probe configures ORT threading like the Runtime. A chain of
original engines of the same precision runs on real input, with one block swapped for the engine being measured,
and only that engine's call is timed. An engine timed alone, back to back, keeps its weights and activations in
cache. In a chain its neighbours evict them (4-10% slower here), and how much depends on the neighbours: int8
engines timed among fp32 neighbours came out ~20% slower than in an int8 chain. Rounds interleave all engines so
that drifts of the machine hit them alike. Each round ends by timing the whole chain as the Runtime calls it (copy
in, run the blocks, copy out); what that takes beyond the sum of the blocks' medians in the same round is the
chain's fixed overhead per call, and the profile keeps the median over rounds. (It used to time the chain once,
after all rounds: on a 2-vCPU VM whose engine times drift by 10-20% between minutes, that difference came out at
0.17 ms for a chain whose overhead measures 0.00 +- 0.05 ms interleaved, and over-predicted int8 chains by 25%.)

**Frame gap** (``[profile] frame_gap_ms``, default 0): by default the chains above run back to back, so every
engine is timed hot. An application that serves a camera runs one frame, then idles until the next: its caches
have cooled and ORT's pool threads have gone to sleep. Measured on a 2-core AMD EPYC (segmentation example, 5
blocks, 1 thread): ``rt(x)`` took 0.29 ms back to back, 0.79 ms after a 2 ms sleep, 1.02 ms at 30 Hz (33 ms
sleeps), 0.84 ms when spinning 33 ms instead of sleeping and 0.71 ms after evicting the caches. With a gap, the
probe sleeps that long before every timed chain run (each engine's and the whole chain's), so profiles, the
optimizer's budgets and the chain overhead describe frames as they are served. It adds about ``runs`` x gap per
engine to the profile stage (for 33 ms and 100 runs: 4 s per engine).
"""

from __future__ import annotations

import json
import os
import statistics
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
    output_shapes: tuple[tuple[int, ...], ...]  # one per output; a single shape is accepted for one output

    def __post_init__(self) -> None:
        shapes = tuple(self.output_shapes)
        if shapes and isinstance(shapes[0], int):
            shapes = (shapes,)
        object.__setattr__(self, "output_shapes", tuple(tuple(int(d) for d in s) for s in shapes))


def _allocate_outputs(be, shapes: list) -> object:
    """One buffer for one output shape, a tuple of buffers for several (what ``Engine.bind`` takes)."""
    bufs = tuple(be.allocate(tuple(s)) for s in shapes)
    return bufs[0] if len(bufs) == 1 else bufs


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


MEMORY_METHOD = "rss-slope-trimmed-v1"  # what memory_bytes means; see the module docstring
MEMORY_WARM = 2  # instances loaded before the first reading
MEMORY_STEPS = 8  # readings after those, one more instance each
MEMORY_RUNS = 10  # runs of each instance before the reading
MEMORY_UNSTEADY = 0.25  # increments spread wider than this (relative to their median): measure again
MEMORY_RETRIES = 2  # in new processes
MEMORY_SPREAD_FLOOR = 64 * 1024  # bytes: a spread this small is page granularity, never "unsteady" (see _unsteadiness)


def _initializer_bytes(data: bytes) -> int:
    """Bytes of the engine's initializers (weights) as stored: the floor of what keeping it loaded can cost."""
    import onnx

    model = onnx.load_from_string(data)
    total = 0
    for t in model.graph.initializer:
        n = 1
        for d in t.dims:
            n *= d
        total += n * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def _memory_child(path: str, shape: list[int], out_shapes: list[list[int]], threads: int,
                  backend: str = "onnxruntime") -> dict:
    """Resident bytes that one more loaded, run engine adds, measured like the Runtime holds it (see the module
    docstring). Returns the figure and the readings it comes from."""
    from legocompile.backends import get_backend
    from legocompile.runtime.executor import release_free_heap

    be = get_backend(backend)
    be.configure(threads=threads)
    data = Path(path).read_bytes()
    src, dst = be.allocate(tuple(shape)), _allocate_outputs(be, out_shapes)
    held = []

    def one_more() -> None:
        engine = be.load(data)  # from bytes, as the Runtime loads it
        run = engine.bind(src, dst)
        # The Runtime gives the heap's free pages back after loading, before the first call (see the docstring)
        release_free_heap()
        for _ in range(MEMORY_RUNS):  # size the arena, plan the memory pattern, let the pool threads take part
            run()
        held.append((engine, run))

    for _ in range(MEMORY_WARM):  # pages in ORT's code and process-wide state, paid once per process
        one_more()
    readings = []
    for step in range(MEMORY_STEPS + 1):
        if step:
            one_more()
        release_free_heap()  # freed load-time garbage goes back to the OS, as the Runtime does after a switch
        readings.append(_rss_bytes())
    deltas = [b - a for a, b in zip(readings, readings[1:])]
    weights = _initializer_bytes(data) if be.engine_suffix == ".onnx" else None  # other engine files are not ONNX
    return {"memory_bytes": int(round(max(statistics.median(deltas), 0))), "initializer_bytes": weights,
            "per_engine_deltas": deltas}


def _unsteadiness(m: dict) -> float:
    """Spread of one measurement's increments relative to their median, or to a floor for engines that add only a
    few dozen pages (a reference-evaluator engine adds 40-130 KB, read in 4 KB pages, spread up to 55 KB: not the
    allocator layout the retry is for). ORT engines add 0.3 MB or more, above the floor: they keep the plain ratio."""
    d = m["per_engine_deltas"]
    return (max(d) - min(d)) / max(statistics.median(d), MEMORY_SPREAD_FLOOR / MEMORY_UNSTEADY, 1)


def _memory_forked(args: list) -> dict | None:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: measure, report, exit without running the parent's cleanup
        os.close(r)
        try:
            value = json.dumps(_memory_child(*args))
        except Exception:
            value = ""
        os.write(w, value.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        text = f.read()
    os.waitpid(pid, 0)
    return json.loads(text) if text else None


def _memory_spawned(args: list) -> dict | None:
    """The same measurement in a new process (not a fork): a new address-space layout."""
    code = ("import json, sys; from legocompile.profile.probe import _memory_child; "
            "print(json.dumps(_memory_child(*json.loads(sys.argv[1]))))")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(args)], capture_output=True, text=True, check=False)
    return json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 and proc.stdout.strip() else None


def _measure_memory_forked(engines: list[dict], threads: int, backend: str = "onnxruntime") -> list[dict | None]:
    out: list[dict | None] = []
    for e in engines:
        args = [e["path"], e["input_shape"], e["output_shapes"], threads, backend]
        m = _memory_forked(args)
        if m is not None:
            m["attempts"] = 1
            # Rarely, a process's layout makes the increments alternate (seen: 1.55, 2.51, 2.08, 2.51, ... MB for an
            # engine that measures 1.56 MB steadily elsewhere). That is the allocator, not the engine: measure again
            # in new processes and keep the steadiest measurement.
            for _ in range(MEMORY_RETRIES):
                if _unsteadiness(m) <= MEMORY_UNSTEADY:
                    break
                again = _memory_spawned(args)
                if again is not None:
                    again["attempts"] = m["attempts"] + 1
                    m = again if _unsteadiness(again) < _unsteadiness(m) else {**m, "attempts": again["attempts"]}
        out.append(m)
    return out


def _latency_in_context(be, engines: list[dict], job: dict) -> dict:
    import time

    import numpy as np

    from legocompile.profile.latency import LatencyStats

    contexts = job["contexts"]  # name -> engine index per block position
    base = contexts[job["overhead_context"]]
    bufs = [be.allocate(tuple(engines[base[0]]["input_shape"]))]
    bufs += [_allocate_outputs(be, engines[k]["output_shapes"]) for k in base]
    x = np.load(job["chain_input"])
    bufs[0].upload(x)
    bound = [be.load(Path(e["path"])).bind(bufs[e["block"]], bufs[e["block"] + 1]) for e in engines]
    base_runs = [bound[k] for k in base]
    context_runs = {name: [bound[k] for k in chain] for name, chain in contexts.items()}
    rounds, warmup = 10, job["warmup"]
    gap, sleep = job.get("frame_gap_ms", 0.0) / 1e3, time.sleep
    per_round = max(1, job["runs"] // rounds)
    samples: list[list[list[float]]] = [[[] for _ in range(rounds)] for _ in engines]  # engine -> round -> ms
    chain_ms: list[list[float]] = [[] for _ in range(rounds)]  # round -> ms of the whole chain
    clock = time.perf_counter
    first, last = bufs[0], bufs[-1] if isinstance(bufs[-1], tuple) else (bufs[-1],)

    def runtime_call() -> None:  # what Runtime.__call__ does around the blocks
        first.upload(x)
        for run in base_runs:
            run()
        for out in last:
            out.download()

    for r in range(rounds):
        skip = warmup if r == 0 else 2
        for k, e in enumerate(engines):
            runs = list(context_runs[e["context"]])
            runs[e["block"]] = bound[k]
            target = bound[k]
            for it in range(skip + per_round):
                if gap and it >= skip:
                    sleep(gap)  # the frame arrives after the application's idle time, as served
                for run in runs:
                    if run is target:
                        t0 = clock()
                        run()
                        dt = clock() - t0
                    else:
                        run()
                if it >= skip:
                    samples[k][r].append(dt * 1e3)
        # the whole chain in the same round (see "Latency in context" in the module docstring)
        for it in range(skip + 2 * per_round):
            if gap and it >= skip:
                sleep(gap)
            t0 = clock()
            runtime_call()
            dt = clock() - t0
            if it >= skip:
                chain_ms[r].append(dt * 1e3)
    def pooled(rounds_ms: list[list[float]]) -> dict:  # median and p90 over every round's samples
        a = np.asarray([v for round_ in rounds_ms for v in round_])
        return LatencyStats(float(np.median(a)), float(np.percentile(a, 90)), len(a), warmup).to_json()

    stats = [pooled(per_engine) for per_engine in samples]
    chain = pooled(chain_ms)
    # per round: the chain's median minus the sum of its blocks' medians; the overhead is the median over rounds
    per_round_overhead = [float(np.median(chain_ms[r])) - sum(float(np.median(samples[k][r])) for k in base)
                          for r in range(rounds)]
    chain["overhead_ms"] = max(0.0, float(np.median(per_round_overhead)))
    return {"latency": stats, "chain": chain}


def _serve() -> None:
    """Probe entry point: a JSON job on stdin, a JSON result on stdout."""
    import legocompile.runtime.executor  # noqa: F401
    from legocompile.backends import get_backend

    job = json.load(sys.stdin)
    name = job.get("backend", "onnxruntime")
    be = get_backend(name)
    be.preload()  # imported once before forking (no session or thread exists yet), so children do not pay for it
    engines = job["engines"]
    memory = _measure_memory_forked(engines, job["threads"], name) if job["memory"] else []

    be.configure(threads=job["threads"])
    result = {"memory_bytes": [-1 if m is None else m["memory_bytes"] for m in memory],
              "memory_detail": memory, "memory_method": MEMORY_METHOD, "threads": job["threads"], "backend": name}
    if job["latency"]:
        result.update(_latency_in_context(be, engines, job))
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
    backend: str = "onnxruntime",
    frame_gap_ms: float = 0.0,
) -> dict:
    """Measure ``engines`` in a fresh probe process; see the module docstring.

    Args:
        contexts: context name -> index into ``engines`` of the chain's engine at each block position; each
            engine is timed in the context its ``context`` names.
        overhead_context: the context whose whole-chain time gives the chain's fixed overhead.
        chain_input: ``.npy`` with a real input of block 0 at the profile batch size.
        backend: the registry name of the backend that loads and runs the engines (:mod:`legocompile.backends`).
        frame_gap_ms: idle time before each timed chain run (0: back to back); see "Latency in context".
    """
    if not hasattr(os, "fork") or not Path("/proc/self/statm").exists():
        raise LegoCompileError("profiling needs Linux (/proc and fork)")
    job = {
        "backend": backend,
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "frame_gap_ms": float(frame_gap_ms),
        "memory": memory,
        "latency": latency,
        "contexts": {k: list(v) for k, v in contexts.items()},
        "overhead_context": overhead_context,
        "chain_input": str(chain_input),
        "engines": [
            {"path": str(e.path), "block": e.block, "context": e.context, "input_shape": list(e.input_shape),
             "output_shapes": [list(s) for s in e.output_shapes]}
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
