"""Resident memory of a loaded engine: weights + activation arena, measured.

Each engine is measured in a fresh child process forked from a small probe process that has imported ONNX Runtime
but loaded nothing. The child first loads the engine once and runs it, which pages in ORT's code and creates its
process-wide state (about 16 MB here, paid once per process, not per engine). Then it reads its resident set size,
loads a second instance, runs one inference at the profile batch size (which sizes the activation arena), and reads
its RSS again. The difference is what keeping that engine loaded costs. Measuring in the build process instead would
count allocator reuse and other engines' memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from legocompile.errors import LegoCompileError


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _probe_one(path: str, shape: list[int], threads: int) -> int:
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


def _serve() -> None:
    """Probe entry point: reads ``{"threads": n, "engines": [[path, shape], ...]}`` on stdin, prints bytes per engine."""
    import onnxruntime  # noqa: F401  (imported once, before forking)

    job = json.load(sys.stdin)
    results = []
    for path, shape in job["engines"]:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                value = _probe_one(path, shape, job["threads"])
            except Exception:
                value = -1
            os.write(w, str(value).encode())
            os._exit(0)
        os.close(w)
        with os.fdopen(r) as f:
            value = int(f.read() or -1)
        os.waitpid(pid, 0)
        results.append(value)
    json.dump(results, sys.stdout)


def measure_memory(engines: list[tuple[Path, tuple[int, ...]]], *, threads: int) -> list[int]:
    """Resident bytes of each engine when loaded and run once with an input of the given shape."""
    if not engines:
        return []
    if not hasattr(os, "fork") or not Path("/proc/self/statm").exists():
        raise LegoCompileError("memory profiling needs Linux (/proc and fork)")
    job = {"threads": threads, "engines": [[str(p), list(s)] for p, s in engines]}
    proc = subprocess.run(
        [sys.executable, "-c", "from legocompile.profile.memory import _serve; _serve()"],
        input=json.dumps(job),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise LegoCompileError(f"memory probe failed: {proc.stderr.strip().splitlines()[-1:]}")
    values = json.loads(proc.stdout)
    bad = [str(p) for (p, _), v in zip(engines, values) if v < 0]
    if bad:
        raise LegoCompileError(f"memory probe could not load {bad[0]}")
    return values
