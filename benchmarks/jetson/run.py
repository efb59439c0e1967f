"""Jetson benchmark suite for a legocompile bundle: static runs and budget-trace replays, one JSON + PNGs per run.

Runs unchanged on any host with the ONNX Runtime CPU backend and on a Jetson with TensorRT. See README.md here.

    python benchmarks/jetson/run.py BUNDLE [--trace FILE ...] [--data eval.npz] [--frames N] [--out DIR] [--quick]

Progress goes to stderr, the summary table to stdout. Exit status: 0 done, 1 the bundle cannot be used,
2 a bad argument, trace or data file (one line on stderr).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from jetsonbench import device as device_mod  # noqa: E402
from jetsonbench import static  # noqa: E402
from jetsonbench.traces import TraceError, bundle_ranges, frame_schedule, load_trace, resolve, shipped_traces  # noqa: E402

SUITE_VERSION = 1
DEFAULT_OUT = HERE.parent / "results" / "jetson"

QUICK = {"engine_warmup": 5, "engine_runs": 30, "chain_warmup": 20, "chain_runs": 100, "eager_warmup": 5,
         "eager_runs": 30, "frames": 60, "eval_samples": 128}
FULL = {"engine_warmup": 50, "engine_runs": 300, "chain_warmup": 100, "chain_runs": 1000, "eager_warmup": 50,
        "eager_runs": 300, "frames": None, "eval_samples": 1000}


class UsageError(Exception):
    """A bad argument or input file: one line, exit 2."""


def progress(msg: str) -> None:
    print(f"[jetson] {msg}", file=sys.stderr, flush=True)


def _rate(text: str) -> float | str:
    if text == "max":
        return "max"
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--rate must be a number of frames per second or 'max', got {text!r}")
    if not math.isfinite(v) or v <= 0:
        raise argparse.ArgumentTypeError(f"--rate must be positive, got {text!r}")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    if v <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return v


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="run.py", description=__doc__.splitlines()[0])
    ap.add_argument("bundle", help="a legocompile bundle (legocompile build ... --out BUNDLE)")
    ap.add_argument("--trace", action="append", metavar="FILE",
                    help="budget trace JSON (repeatable; default: every trace in benchmarks/jetson/traces/)")
    ap.add_argument("--data", metavar="FILE.npz", help="evaluation data: an .npz with arrays x (inputs) and y (labels); "
                    "frames are its samples, and accuracy is measured")
    ap.add_argument("--frames", type=_positive_int, help="frames per trace, shared among its phases by duration "
                    "(default: duration x rate; 60 with --quick)")
    ap.add_argument("--rate", type=_rate, metavar="HZ|max", help="frame rate for every trace (default: each trace's)")
    ap.add_argument("--out", metavar="DIR", help=f"where the JSON and PNGs go (default: {DEFAULT_OUT})")
    ap.add_argument("--quick", action="store_true", help="short runs (CI, smoke tests)")
    ap.add_argument("--threads", type=_positive_int, help="ORT intra-op threads (default: the bundle's profile setting)")
    ap.add_argument("--sample-interval", type=float, default=0.05, metavar="S", help="resource sampling period (s)")
    ap.add_argument("--eval-samples", type=int, metavar="N",
                    help="eval samples per distinct selection, after each replay (default 1000; 128 with --quick)")
    ap.add_argument("--latency-quantile", choices=["median", "p90"], default="median",
                    help="which profiled latency of each engine the runtime's latency budgets count (default median; "
                         "p90 makes a budget a promise for 9 frames in 10); trace fractions resolve against it")
    ap.add_argument("--keep-warm-mb", type=float, default=0.0, metavar="MB",
                    help="Runtime keep_warm_mb for the replays: engines outside the selection kept loaded, so that "
                         "switching back is fast (default 0, the Runtime's default: unload them)")
    ap.add_argument("--no-static", action="store_true", help="skip the static runs")
    ap.add_argument("--no-plots", action="store_true", help="write the JSON only")
    ap.add_argument("--config", metavar="FILE", help="legocompile.toml whose [model] is timed in PyTorch eager")
    ap.add_argument("--torch-model", choices=["example"], help="time the built-in example's model in PyTorch eager")
    ap.add_argument("--trtexec", metavar="PATH", help="trtexec to use (default: PATH, /usr/src/tensorrt/bin/trtexec)")
    ap.add_argument("--trtexec-whole", action="store_true",
                    help="also build and time the composed whole model with trtexec (takes minutes on a Jetson)")
    return ap


def load_npz(path: str, input_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` from an .npz, read as ``legocompile run --data`` reads it (no pickles; labels of any shape with one
    row per input); :class:`UsageError` with one line otherwise."""
    from legocompile.errors import LegoCompileError
    from legocompile.evaldata import load_eval_npz

    try:
        x, y = load_eval_npz(path, input_shape)
    except LegoCompileError as e:
        raise UsageError(str(e)) from None
    if len(x) < input_shape[0]:
        raise UsageError(f"{path}: {len(x)} samples; one frame takes {input_shape[0]}")
    return x, y


def _unique(name: str, taken: dict) -> str:
    out, n = name, 2
    while out in taken:
        out, n = f"{name}-{n}", n + 1
    return out


def _fmt(v, spec: str, none: str = "-") -> str:
    return none if v is None else format(v, spec)


def summary_table(report: dict) -> str:
    rows = [("trace", "mode", "frames", "misses", "miss rate", "dropped", "switch med/max ms", "init load ms",
             "sel.", "acc pred", "acc meas", "RSS peak-base MB", "max mem budget MB")]
    failed = []
    for name, tr in report["traces"].items():
        if tr.get("status") != "ok":
            failed.append(f"trace {name}: failed ({tr.get('reason')})")
            continue
        s, t = tr["summary"], tr["trace"]
        sw = s["switch_ms"]
        meas = s["accuracy"].get("measured_eval_mean", s["accuracy"].get("measured_stream"))
        rss = s["rss"]
        rows.append((
            name, f"{t['frame_rate_hz']:g} Hz" if t["frame_rate_hz"] else "max", str(s["frames"]),
            str(s["misses"]), _fmt(None if s["miss_rate"] is None else s["miss_rate"] * 100, ".1f") + "%",
            str(s["dropped"]),
            f"{sw['median']:.2f}/{sw['max']:.2f}" if sw["count"] else "-", f"{s['initial_load_ms']:.1f}",
            str(s["distinct_selections"]),
            _fmt(None if s["accuracy"]["predicted_mean"] is None else s["accuracy"]["predicted_mean"] * 100, ".1f"),
            _fmt(None if meas is None else meas * 100, ".1f"),
            _fmt(None if rss["hwm_over_base_bytes"] is None else rss["hwm_over_base_bytes"] / 1e6, ".2f"),
            _fmt(None if rss["max_memory_budget_bytes"] is None else rss["max_memory_budget_bytes"] / 1e6, ".2f"),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines += failed
    st = report.get("static", {})
    for name, e in st.get("chain_vs_whole", {}).get("selections", {}).items():
        if e.get("status") == "ok":
            line = (f"static {name}: chain {e['chain']['median_ms']:.4f} ms (p90 {e['chain']['p90_ms']:.4f}), "
                    f"predicted {e['predicted_ms']:.4f} ms")
            if "whole" in e:
                line += f"; whole model {e['whole']['median_ms']:.4f} ms, chain/whole {e['chain_over_whole']:.2f}"
            lines.append(line)
    for key in ("whole_model",):
        e = st.get("chain_vs_whole", {}).get(key)
        if e and e.get("status") != "ok":
            lines.append(f"static whole model: skipped ({e['reason']})")
    eng = [e for e in st.get("engines", []) if e.get("status") == "ok"]
    if eng:
        ratios = [e["measured_over_profiled"] for e in eng if e.get("measured_over_profiled")]
        lines.append(f"static engines: {len(eng)} timed alone, measured/profiled median {np.median(ratios):.2f} "
                     f"(range {min(ratios):.2f}-{max(ratios):.2f})")
    for key, label in (("pytorch_eager", "PyTorch eager"), ("trtexec", "trtexec"), ("trtexec_whole", "trtexec whole")):
        e = st.get(key)
        if not e:
            continue
        if e.get("status") == "ok" and key == "pytorch_eager":
            lines.append(f"static {label}: {e['eager']['median_ms']:.4f} ms"
                         + (f", eager/chain {e['eager_over_chain']:.2f}" if "eager_over_chain" in e else ""))
        elif e.get("status") == "ok":
            lines.append(f"static {label}: ran (see JSON)")
        else:
            lines.append(f"static {label}: {e.get('status')} ({e.get('reason')})")
    return "\n".join(lines)


def _default_out() -> Path:
    """The default results folder; a folder this creates gets a ``.gitignore`` so results are never committed."""
    if not DEFAULT_OUT.exists():
        DEFAULT_OUT.mkdir(parents=True)
        (DEFAULT_OUT / ".gitignore").write_text("# results of benchmarks/jetson/run.py: not committed\n*\n")
    return DEFAULT_OUT


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _main(args, argv if argv is not None else sys.argv[1:])
    except (UsageError, TraceError) as e:
        print(f"run.py: error: {e}", file=sys.stderr)
        return 2


def _main(args, argv: list[str]) -> int:
    from legocompile.errors import LegoCompileError
    from legocompile.profile.accuracy import bundle_metric, metric_of

    cfg = dict(QUICK if args.quick else FULL)
    if args.eval_samples is not None:
        cfg["eval_samples"] = max(0, args.eval_samples)
    frames_total = args.frames if args.frames is not None else cfg["frames"]
    if not (args.sample_interval > 0 and math.isfinite(args.sample_interval)):
        raise UsageError(f"--sample-interval must be a positive number of seconds, got {args.sample_interval}")
    if not (args.keep_warm_mb >= 0 and math.isfinite(args.keep_warm_mb)):
        raise UsageError(f"--keep-warm-mb must be a number >= 0, got {args.keep_warm_mb}")
    if args.config and args.torch_model:
        raise UsageError("give --config or --torch-model, not both")

    trace_paths = args.trace or [str(p) for p in shipped_traces()]
    if not trace_paths:
        raise UsageError("no traces: pass --trace FILE")
    traces = [load_trace(p) for p in trace_paths]  # every trace is checked before anything runs

    import legocompile

    try:
        rt = legocompile.Runtime.load(args.bundle, threads=args.threads)
    except LegoCompileError as e:
        print(f"run.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 1
    manifest = rt.manifest
    root = Path(args.bundle)
    input_shape = tuple(manifest.input.shape)
    batch = input_shape[0]
    metric_name = metric_of(manifest.teacher)
    metric_note = None
    if args.data:
        x_eval, y_eval = load_npz(args.data, input_shape)
        try:
            metric = bundle_metric(metric_name)
        except LegoCompileError as e:  # the project's own metric: a bundle is data, its code is never imported
            metric, y_eval = None, None
            metric_note = f"accuracy predicted only: {' '.join(str(e).split())}"
            progress(metric_note)
    else:
        metric = None
        x_eval = np.random.default_rng(0).standard_normal((64 * batch, *input_shape[1:])).astype(np.float32)
        y_eval = None

    ranges = bundle_ranges(manifest, args.latency_quantile)
    plans = []
    for tr in traces:
        plans.append((tr, resolve(tr, ranges), frame_schedule(tr, frames_total)))

    out_dir = Path(args.out) if args.out else _default_out()
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    stem = f"jetson-{manifest.model}-{stamp}"

    progress(f"device record ({'quick' if args.quick else 'full'} run)")
    dev = device_mod.collect()
    backends = sorted({o.backend for b in manifest.blocks for o in b.options})
    threads = args.threads or manifest.settings.get("profile", {}).get("threads")
    report: dict = {
        "benchmark": "jetson",
        "suite_version": SUITE_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": ["benchmarks/jetson/run.py", *argv],
        "device": dev,
        "machine": {  # the fields benchmarks/_common.machine_info records, for comparison with the other benchmarks
            "platform": dev["platform"], "processor": dev["cpu"].get("model"), "cpu_count": dev["cpu"]["count"],
            "load_average_1m": dev.get("load_average_1m"), "python": dev["python"],
            "onnxruntime": dev.get("versions", {}).get("onnxruntime"), "torch": dev.get("versions", {}).get("torch"),
        },
        "bundle": {
            "path": str(root.resolve()), "model": manifest.model, "backends": backends,
            "blocks": len(manifest.blocks), "options": sum(len(b.options) for b in manifest.blocks),
            "selectable_options": sum(1 for b in manifest.blocks for o in b.options if not o.excluded),
            "input_shape": list(input_shape), "teacher_accuracy": manifest.teacher.get("accuracy"),
            "metric": metric_name, "profiled_on": manifest.device,
        },
        "settings": {"quick": args.quick, "threads": threads, "frames_per_trace": frames_total,
                     "latency_quantile": args.latency_quantile,
                     "keep_warm_mb": args.keep_warm_mb,
                     "rate_override_hz": args.rate, "sample_interval_s": args.sample_interval,
                     "eval_samples": cfg["eval_samples"] if y_eval is not None else 0,
                     "data": str(Path(args.data).resolve()) if args.data else None,
                     "inputs": f"{len(x_eval)} samples of {args.data}" if args.data else
                     "64 random-normal frames (no --data: accuracy is predicted only)",
                     **({"accuracy_note": metric_note} if metric_note else {})},
        "ranges": ranges.to_json(),
        "static": {},
        "traces": {},
    }

    from jetsonbench.sampling import Sampler

    def sampled(fn):
        with Sampler(args.sample_interval) as s:
            result = fn()
        return result, s.summary()

    x1 = np.ascontiguousarray(x_eval[:batch])
    st = report["static"]
    if args.no_static:
        st["status"] = "skipped (--no-static)"
    else:
        progress("static: every engine alone")
        st["engines"], st["engines_sampled"] = sampled(lambda: static.engine_latencies(
            manifest, root, warmup=cfg["engine_warmup"], runs=cfg["engine_runs"], progress=progress))
        progress("static: chained selections vs one whole-model engine")
        st["chain_vs_whole"], st["chain_vs_whole_sampled"] = sampled(lambda: static.chain_vs_whole(
            rt, manifest, root, x1, warmup=cfg["chain_warmup"], runs=cfg["chain_runs"], progress=progress))
        model, why = static.load_torch_model(args.config, args.torch_model == "example", manifest)
        if model is None:
            st["pytorch_eager"] = {"status": "skipped", "reason": why}
        else:
            progress("static: PyTorch eager")
            teacher = next((v for k, v in st["chain_vs_whole"]["selections"].items()
                            if k.startswith("teacher") and v.get("status") == "ok"), None)
            st["pytorch_eager"], st["pytorch_eager_sampled"] = sampled(lambda: static.pytorch_eager(
                model, x1, threads=threads or 1, warmup=cfg["eager_warmup"], runs=cfg["eager_runs"],
                chain_median_ms=teacher["chain"]["median_ms"] if teacher else None))
            del model
        trtexec = static.find_trtexec(args.trtexec)
        with tempfile.TemporaryDirectory(prefix="lc-jetson-") as tmp:
            st["trtexec"] = static.trtexec_engines(manifest, root, trtexec, Path(tmp), quick=args.quick,
                                                   progress=progress)
            if args.trtexec_whole:
                progress("static: trtexec on the composed whole model (building it)")
                st["trtexec_whole"] = static.trtexec_whole(manifest, root, trtexec, Path(tmp), quick=args.quick)
    # One-time process costs (ONNX Runtime's environment and allocators, made by the first session; what the first
    # switch allocates) are paid here, before any replay measures its RSS base, whether or not static runs ran.
    try:
        for sel in list(static.uniform_selections(manifest).values())[::-1]:
            rt.select(selection=sel)
            rt(x1)
    except Exception as e:  # the replays will say what fails; the run still writes what it measured
        progress(f"the Runtime cannot run a frame: {type(e).__name__}: {' '.join(str(e).split())[:300]}")
    del rt  # the replays run on fresh Runtimes: each starts with no engine loaded

    from jetsonbench.replay import replay

    def make_runtime():
        return legocompile.Runtime.load(args.bundle, threads=args.threads, verify=False, keep_warm_mb=args.keep_warm_mb,
                                        latency_quantile=args.latency_quantile)

    # Warm-up pass, discarded: every phase of every trace once, one frame each. The first switches of a process
    # leave memory that the C heap keeps and later switches reuse (measured here: ~2.5 MB with the test bundles,
    # charged to whichever trace ran first); after this pass each trace starts from the same steady state.
    progress("warm-up pass over the traces' budgets (discarded)")
    for tr, resolved, schedule in plans:
        try:
            replay(make_runtime, tr, resolved, [1] * len(resolved), rate_hz=None, inputs=x_eval, labels=None,
                   batch=batch, sample_interval_s=args.sample_interval, eval_samples=0, progress=lambda m: None,
                   tegrastats=False)
        except Exception:  # the measured replay reports it
            pass

    for tr, resolved, schedule in plans:
        rate = tr.frame_rate_hz if args.rate is None else (None if args.rate == "max" else args.rate)
        progress(f"trace {tr.name}: {len(resolved)} phases, {sum(schedule)} frames, "
                 f"{'%g Hz' % rate if rate else 'as fast as possible'}")
        name = _unique(tr.name, report["traces"])
        try:
            result = replay(make_runtime, tr, resolved, schedule, rate_hz=rate, inputs=x_eval, labels=y_eval, batch=batch,
                            sample_interval_s=args.sample_interval, eval_samples=cfg["eval_samples"],
                            progress=progress, metric=metric)
        except Exception as e:  # recorded, and the other traces still run
            reason = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            progress(f"trace {tr.name} failed: {reason}")
            result = {"status": "failed", "reason": reason, "trace": {"name": tr.name, "source": tr.source}}
        report["traces"][name] = result

    json_path = out_dir / f"{stem}.json"
    pngs = {}
    if not args.no_plots:
        from jetsonbench import plots

        pngs["latency_cdf"] = str(plots.latency_cdf(report, out_dir / f"{stem}-latency_cdf.png"))
        for name, tr in report["traces"].items():
            if tr.get("status") != "ok":
                continue
            pngs[f"trace {name}"] = str(plots.trace_timeline(tr, out_dir / f"{stem}-trace-{name}.png",
                                                             f"{manifest.model}: "))
    report["plots"] = pngs
    from legocompile.workspace import atomic_write_json

    atomic_write_json(json_path, report)
    print(summary_table(report))
    print(f"wrote {json_path}" + (f" and {len(pngs)} PNGs" if pngs else ""))
    return 0 if all(t.get("status") == "ok" for t in report["traces"].values()) else 1


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore")
    t0 = time.perf_counter()
    code = main()
    progress(f"done in {time.perf_counter() - t0:.1f} s")
    sys.exit(code)
