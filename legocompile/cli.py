"""The ``legocompile`` command. The only module that prints: tables and progress bars on stderr/stdout, or JSON."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Iterator

from legocompile.evaldata import load_eval_npz
from legocompile.errors import LegoCompileError


# ------------------------------------------------------------------------------------------------------ output
class RichProgress:
    """Progress bars on stderr, one per stage."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    @contextlib.contextmanager
    def stage(self, name: str, total: int) -> Iterator:
        if not self.enabled:
            yield lambda n=1: None
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        with Progress(
            TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=Console(stderr=True), transient=False,
        ) as bar:
            task = bar.add_task(name, total=total)
            yield lambda n=1: bar.advance(task, n)


def _console():
    from rich.console import Console

    console = Console()
    if not console.is_terminal:  # piped: don't wrap tables at rich's 80-column default
        console = Console(width=120)
    return console


def _emit(args, doc: dict, render) -> None:
    if args.json:
        json.dump(doc, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        render(doc)


def _mb(n: float) -> str:
    return f"{n / 1e6:.2f} MB"


FRAME_GAP_HELP = ("profile each frame after this many ms of idle time, as an application serving frames at a fixed "
                  "rate runs them (33 for 30 Hz; 0 times them back to back)")


# ------------------------------------------------------------------------------------------------------ build & stages
def _build(args, until: str = "bundle") -> None:
    from legocompile.config import normalize_precisions
    from legocompile.pipeline import BuildReport, compile, require_torch

    require_torch(f"legocompile {args.command}")
    from legocompile.profile.accuracy import resolve_metric
    from legocompile.project import resolve_project, with_overrides

    project = resolve_project(args.config, example=args.example)
    precisions = normalize_precisions(args.precision, "--precision") if args.precision else None
    project = with_overrides(project, precisions=precisions, out=args.out, backend=args.backend,
                             frame_gap_ms=args.frame_gap_ms)
    cfg = project.config
    progress = RichProgress(enabled=not args.quiet)
    t0 = time.perf_counter()
    model = project.load_model()
    data = project.load_data()
    report = BuildReport(bundle=cfg.build.out)
    compile(
        model,
        project.example_input(),
        calibration_data=data.calibration,
        eval_data=(data.eval_x, data.eval_y),
        train_data=data.train,
        out=cfg.build.out,
        blocks=cfg.blocks.cut,
        max_blocks=cfg.blocks.max_blocks,
        precisions=cfg.build.precisions,
        backend=cfg.build.backend,
        work_dir=cfg.build.work_dir,
        calibration=cfg.calibration,
        profile=cfg.profile,
        sparsities=cfg.variants.sparsities,
        channel_multiple=cfg.variants.channel_multiple,
        retrain=retrain_settings(cfg.variants),
        external_variants=external_variants(cfg),
        int8_format=cfg.build.int8_format,
        tolerance=cfg.build.tolerance,
        model_name=cfg.model.name,
        metric=resolve_metric(cfg.task.metric, search_path=cfg.root),
        progress=progress,
        report=report,
        until=until,
    )
    elapsed = time.perf_counter() - t0
    doc = {"stage": until, "work_dir": str(cfg.build.work_dir), "built": report.built, "cached": report.cached,
           "unprunable": report.unprunable, "same_widths": report.same_widths, "excluded": report.excluded,
           "seconds": round(elapsed, 2)}
    if until == "bundle":
        from legocompile.bundle import read_bundle
        from legocompile.inspect import summary

        doc = {**doc, "bundle": str(cfg.build.out), **summary(read_bundle(cfg.build.out, verify=False))}

    def render(d):
        c = _console()
        if until == "bundle":
            _render_summary(d)
            c.print(f"bundle: [bold]{d['bundle']}[/]")
        if d["unprunable"]:
            c.print(f"pruning left {len(d['unprunable'])} layers whole (tied to a residual add or the block boundary):")
            for note in d["unprunable"][:6]:
                c.print(f"  {note}")
            if len(d["unprunable"]) > 6:
                c.print(f"  ... {len(d['unprunable']) - 6} more in --json")
        if d["same_widths"]:
            c.print(f"pruning reached the same widths at {len(d['same_widths'])} sparsities (channel multiple "
                    f"{d['same_widths'][0]['channel_multiple']}); each is built once, under the less sparse name:")
            for n in d["same_widths"]:
                c.print(f"  block {n['block']}: {n['variant']} = {n['same_as']}")
        if d["excluded"]:
            c.print(f"the accuracy gate left {len(d['excluded'])} engines out of the selectable options:")
            for note in d["excluded"]:
                c.print(f"  {note}")
        built = ", ".join(f"{k} {v}" for k, v in d["built"].items()) or "nothing"
        cached = ", ".join(f"{k} {v}" for k, v in d["cached"].items()) or "nothing"
        c.print(f"built: {built}; cached: {cached}; {d['seconds']:.1f} s")

    _emit(args, doc, render)


def retrain_settings(v):
    from legocompile.variants.retrain import RetrainSettings

    return RetrainSettings(epochs=v.epochs, lr=v.lr, batch_size=v.batch_size, patience=v.patience,
                           val_fraction=v.val_fraction)


def external_variants(cfg) -> tuple:
    from legocompile.variants.stage import ExternalVariant

    return tuple(
        ExternalVariant(block=e.block, name=e.name, factory=e.factory, weights=e.weights, sparsity=e.sparsity,
                        search_path=cfg.root)
        for e in cfg.variants.external
    )


def _render_summary(d: dict) -> None:
    from rich.table import Table

    from legocompile.profile.accuracy import metric_label, metric_of

    c = _console()
    t = d["teacher"]
    c.print(f"[bold]{d['model']}[/]: teacher {metric_label(metric_of(t))} {t['accuracy'] * 100:.2f}% on "
            f"{t['num_eval']} samples, "
            f"chained fp32 latency {t['latency_ms']:.3f} ms"
            + (f" (each frame after {gap:g} ms idle)" if (gap := (d.get("profile") or {}).get("frame_gap_ms")) else ""))
    if d.get("int8"):
        c.print(f"int8 format: {d['int8']['reason']}")
    table = Table("block", "option", "params", "ms", "p90 ms", "MB", "Δacc pt", "export err", "gate err", "",
                  box=None)
    excluded = []
    for b in d["blocks"]:
        for k, o in enumerate(b["options"]):
            gate = o.get("accuracy_gate") or {}
            table.add_row(
                b["name"] if k == 0 else "", f"{o['variant']}/{o['precision']}", f"{o['params']:,}",
                f"{o['latency_ms']:.3f}", f"{o['latency_p90_ms']:.3f}", f"{o['memory_bytes'] / 1e6:.2f}",
                f"{o['accuracy_drop'] * 100:+.2f}", f"{o['export_max_abs_err']:.1e}",
                f"{gate['rel_l2']:.2%}" if "rel_l2" in gate else "-", "excluded" if o.get("excluded") else "",
            )
            if o.get("excluded"):
                excluded.append(f"{b['name']} {o['variant']}/{o['precision']}: {o['excluded']}")
    c.print(table)
    for note in excluded:
        c.print(f"not selectable: {note}")
    if d.get("retarget"):
        r = d["retarget"]
        src = r["source"]
        c.print(f"retargeted to {r['backend']} from {src['model']} bundle {src['manifest_sha256'][:12]} "
                f"({', '.join(src['backend'])}); accuracy drops and gate: {r['accuracy']}")
    if d.get("additivity"):
        a = d["additivity"]
        c.print(f"accuracy model check over {a['num_selections']} random selections: mean |predicted - measured| = "
                f"{a['mean_abs_error'] * 100:.2f} pt (LegoDNN's additive model: "
                f"{a.get('additive_mean_abs_error', float('nan')) * 100:.2f} pt)")
    if d.get("flat_accuracy"):
        c.print(f"note: {d['flat_accuracy']}")


def cmd_retarget(args) -> None:
    """Engines and profiles for this device from a bundle built elsewhere (no PyTorch needed)."""
    from legocompile.bundle import read_bundle
    from legocompile.inspect import summary
    from legocompile.pipeline import BuildReport
    from legocompile.retarget import retarget

    data = None
    if args.data:
        data = load_eval_npz(args.data, tuple(read_bundle(args.bundle, verify=False).input.shape))
    report = BuildReport(bundle=Path(args.out))
    t0 = time.perf_counter()
    out = retarget(args.bundle, args.out, backend=args.backend, data=data, threads=args.threads,
                   frame_gap_ms=args.frame_gap_ms,
                   precisions=args.precision, work_dir=args.work_dir, progress=RichProgress(enabled=not args.quiet),
                   report=report)
    doc = {"bundle": str(out), "built": report.built, "cached": report.cached, "excluded": report.excluded,
           "seconds": round(time.perf_counter() - t0, 2), **summary(read_bundle(out, verify=False))}

    def render(d):
        c = _console()
        _render_summary(d)
        for note in d["excluded"]:
            c.print(f"the accuracy gate left out {note}")
        built = ", ".join(f"{k} {v}" for k, v in d["built"].items()) or "nothing"
        cached = ", ".join(f"{k} {v}" for k, v in d["cached"].items()) or "nothing"
        c.print(f"bundle: [bold]{d['bundle']}[/]")
        c.print(f"built: {built}; cached: {cached}; {d['seconds']:.1f} s")

    _emit(args, doc, render)


def cmd_inspect(args) -> None:
    from legocompile.bundle import read_bundle
    from legocompile.inspect import summary

    doc = summary(read_bundle(args.bundle, verify=not args.no_verify))
    _emit(args, doc, _render_summary)


# ------------------------------------------------------------------------------------------------------ optimize & run
def _metric_label(manifest) -> str:
    from legocompile.profile.accuracy import metric_label, metric_of

    return metric_label(metric_of(manifest.teacher))


def _render_selection(d: dict) -> None:
    from rich.table import Table

    c = _console()
    table = Table("block", "variant", "precision")
    for s in d["selection"]:
        table.add_row(s["block"], s["variant"], s["precision"])
    c.print(table)
    p = d["predicted"]
    line = f"predicted: {d.get('metric', 'top-1')} {p['accuracy'] * 100:.2f}%, latency {p['latency_ms']:.3f} ms, memory {_mb(p['memory_bytes'])}"
    c.print(line)
    if "measured" in d:
        m = d["measured"]
        c.print(f"measured:  {d.get('metric', 'top-1')} {m['accuracy'] * 100:.2f}%, latency {m['latency_ms']:.3f} ms "
                f"(p90 {m['latency_p90_ms']:.3f}, {m['runs']} runs)")




def cmd_optimize(args) -> None:
    from legocompile.optimize.select import select_options

    from legocompile.bundle import read_bundle

    manifest = read_bundle(args.bundle, verify=False)
    sel = select_options(manifest, latency_ms=args.latency_ms, memory_mb=args.memory_mb,
                         latency_quantile=args.latency_quantile)
    _emit(args, sel.to_json() | {"metric": _metric_label(manifest)}, _render_selection)


def _render_run(d: dict) -> None:
    _render_selection({k: v for k, v in d.items() if k != "measured"})
    m = d["measured"]
    acc = f"{m['metric']} {m['accuracy'] * 100:.2f}%" if m["accuracy"] is not None else f"accuracy {m['accuracy_note']}"
    _console().print(f"measured:  {acc}, latency {m['latency_ms']:.3f} ms (p90 {m['latency_p90_ms']:.3f}, "
                     f"{m['runs']} runs)")


def cmd_run(args) -> None:
    """Select, then measure. Evaluation data comes only from the user: ``--data`` or ``--config`` (never the bundle,
    which is data and names no code to run)."""
    import numpy as np

    from legocompile.profile import measure_latency
    from legocompile.profile.accuracy import bundle_metric, metric_label, metric_of
    from legocompile.project import load_dataset, resolve_project
    from legocompile.runtime import Runtime

    if args.data and args.config:
        raise LegoCompileError("give --data or --config for the evaluation data, not both")
    rt = Runtime.load(args.bundle, latency_quantile=args.latency_quantile)
    shape = tuple(rt.manifest.input.shape)
    ex = ey = None
    if args.data:
        ex, ey = load_eval_npz(args.data, shape)
    elif args.config:
        cfg = resolve_project(args.config).config
        data = load_dataset(cfg.data_provider, search_path=cfg.root)
        ex, ey = np.ascontiguousarray(data.eval_x, dtype=np.float32), np.asarray(data.eval_y)
    sel = rt.select(latency_ms=args.latency_ms, memory_mb=args.memory_mb)
    measured: dict = {"accuracy": None, "metric": metric_label(metric_of(rt.manifest.teacher))}
    try:
        metric = bundle_metric(metric_of(rt.manifest.teacher)) if ex is not None else None
    except LegoCompileError as e:  # the project's own metric: a bundle never makes legocompile import code
        metric, measured["accuracy_note"] = None, str(e)
    if metric is not None:
        measured["accuracy"] = metric(rt.predict(ex), ey)
        measured["num_eval"] = len(ey)
    elif ex is None:
        measured["accuracy_note"] = "not measured (no evaluation data: pass --data FILE.npz or --config)"
    batch = shape[0]
    x = ex[:batch] if ex is not None and len(ex) >= batch else np.zeros(shape, np.float32)
    lat = measure_latency(lambda: rt(x), warmup=20, runs=args.runs)
    measured |= {"latency_ms": lat.median_ms, "latency_p90_ms": lat.p90_ms, "runs": lat.runs, "batch_size": batch}
    _emit(args, sel.to_json() | {"metric": measured["metric"], "measured": measured}, _render_run)


def _pareto_stem(bundle: str) -> Path:
    """Default output stem: ``./<bundle name>-pareto`` in the current folder, outside the checksummed bundle."""
    return Path.cwd() / f"{Path(bundle).resolve().name}-pareto"


def cmd_pareto(args) -> None:
    from legocompile.bundle import read_bundle
    from legocompile.optimize.pareto import write_pareto

    manifest = read_bundle(args.bundle, verify=False)
    stem = Path(args.out) if args.out else _pareto_stem(args.bundle)
    doc = write_pareto(manifest, stem, points=args.points)

    def render(d):
        c = _console()
        r = d["range"]
        c.print(f"{d['num_selections']} optimizer selections, {len(d['frontier'])} on the frontier; latency "
                f"{r['latency_ms'][0]:.3f}–{r['latency_ms'][1]:.3f} ms ({r['latency_ratio']:.2f}×), memory "
                f"{r['memory_bytes'][0] / 1e6:.2f}–{r['memory_bytes'][1] / 1e6:.2f} MB ({r['memory_ratio']:.2f}×), "
                f"{_metric_label(manifest)} {r['accuracy'][0] * 100:.2f}–{r['accuracy'][1] * 100:.2f}%")
        if d.get("flat_accuracy"):
            c.print(f"note: {d['flat_accuracy']}")
        c.print(f"wrote {d['json']} and {d['png']}")

    _emit(args, doc, render)


def cmd_verify(args) -> None:
    """Check every file of a bundle against its manifest. Problems go to stdout, one per line; exit 1 if any."""
    from legocompile.bundle import verify_bundle

    problems = verify_bundle(args.bundle)
    doc = {"bundle": str(args.bundle), "ok": not problems, "problems": problems}

    def render(d):
        if d["ok"]:
            print(f"ok: {d['bundle']}")
        for line in d["problems"]:
            print(line)

    _emit(args, doc, render)
    if problems:
        n = len(problems)
        raise LegoCompileError(f"{args.bundle}: verification failed ({n} problem{'s' if n > 1 else ''})")


# ------------------------------------------------------------------------------------------------------ parser
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON document on stdout instead of tables")
    p.add_argument("-v", "--verbose", action="store_true", help="log details")


def build_parser() -> argparse.ArgumentParser:
    from legocompile import __version__
    from legocompile.backends import BACKENDS
    from legocompile.project import EXAMPLES

    parser = argparse.ArgumentParser(
        prog="legocompile",
        description="Compile a block-switchable CNN into fp32/fp16/int8 engines, profile them, and run the bundle.",
    )
    parser.add_argument("--version", action="version", version=f"legocompile {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    stages = {
        "build": ("all stages, skipping what is cached, and write the bundle", "bundle"),
        "derive": ("cut the model into blocks and derive pruned descendants of each block", "derive"),
        "retrain": ("derive, then retrain the descendants on the teacher's intermediate features", "retrain"),
        "export": ("derive and retrain variants, then export each to ONNX", "export"),
        "calibrate": ("export, then compute int8 calibration ranges per block", "calibrate"),
        "profile": ("export, calibrate, build engines and profile them (no bundle)", "profile"),
    }
    for name, (help_text, until) in stages.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--config", help="project file (default: ./legocompile.toml, else the built-in example)")
        p.add_argument("--example", choices=list(EXAMPLES), help="build a built-in example, ignoring "
                       "./legocompile.toml: classification (the default example) or segmentation (mIoU)")
        p.add_argument("--precision", help="comma-separated: fp32,fp16,int8 (fp32 is always built)")
        p.add_argument("--out", help="bundle folder (default from the project, else ./legocompile-out)")
        p.add_argument("--backend", choices=sorted(BACKENDS), help="engine backend (default from the project, "
                       "else onnxruntime)")
        p.add_argument("--frame-gap-ms", type=float, help=FRAME_GAP_HELP + " (default from the project, else 0)")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        _add_common(p)
        p.set_defaults(func=lambda a, until=until: _build(a, until))

    help_text = "build engines and profiles for this device from a bundle built elsewhere (no PyTorch needed)"
    p = sub.add_parser("retarget", help=help_text, description=help_text + ": reuses its ONNX files and int8 "
                       "calibration ranges, runs the accuracy gate, re-profiles latency and memory here")
    p.add_argument("bundle")
    p.add_argument("--out", required=True, help="the new bundle's folder (new, empty, or a bundle)")
    p.add_argument("--backend", choices=sorted(BACKENDS), default="onnxruntime",
                   help="engine backend of this device (default onnxruntime)")
    p.add_argument("--data", metavar="FILE.npz", help="evaluation data (arrays x and y): gate and accuracy drops are "
                   "measured here; without it they are kept from the source bundle, marked measured elsewhere")
    p.add_argument("--threads", type=int, help="CPU threads per engine when profiling (default: the source's)")
    p.add_argument("--frame-gap-ms", type=float, help=FRAME_GAP_HELP + " (default: the source's)")
    p.add_argument("--precision", help="comma-separated subset of the source's precisions (default: all)")
    p.add_argument("--work-dir", help="cache folder (default: legocompile-work beside --out); rerun to resume")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    _add_common(p)
    p.set_defaults(func=cmd_retarget)

    p = sub.add_parser("inspect", help="summarise a bundle")
    p.add_argument("bundle")
    p.add_argument("--no-verify", action="store_true", help="skip checksum verification")
    _add_common(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("verify", help="check every file of a bundle against its manifest (exit 1 on a problem)",
                       description="check every file of a bundle against its manifest: prints 'ok' or one line per "
                                   "problem (missing file, checksum mismatch, unsafe path, bad manifest)")
    p.add_argument("bundle")
    _add_common(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("pareto", help="the accuracy-latency-memory frontier of a bundle, as JSON and a PNG plot")
    p.add_argument("bundle")
    p.add_argument("--out", help="output stem: writes STEM.json and STEM.png (default: ./NAME-pareto in the current "
                                 "folder, NAME being the bundle folder's name; never inside the bundle)")
    p.add_argument("--points", type=int, default=60, help="budgets swept per axis (default 60)")
    _add_common(p)
    p.set_defaults(func=cmd_pareto)

    for name, func, help_text in (
        ("optimize", cmd_optimize, "choose one engine per block under a budget (from the profiles)"),
        ("run", cmd_run, "select under a budget, then measure latency (and accuracy, given --data or --config)"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("bundle")
        p.add_argument("--latency-ms", type=float, help="budget on the sum of block latencies (ms)")
        p.add_argument("--memory-mb", type=float, help="budget on the sum of engine memory (MB)")
        p.add_argument("--latency-quantile", choices=["median", "p90"], default="median",
                       help="which profiled latency of each engine the latency budget counts (default median)")
        if name == "run":
            p.add_argument("--data", metavar="FILE.npz",
                           help="evaluation data: an .npz with arrays x (inputs) and y (labels)")
            p.add_argument("--config", help="or a project file whose [data].provider gives the evaluation split "
                                            "(without --data or --config, only latency is measured)")
            p.add_argument("--runs", type=int, default=200, help="timed end-to-end runs (default 200)")
        _add_common(p)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s",
                        stream=sys.stderr)
    try:
        args.func(args)
    except LegoCompileError as e:
        print(f"legocompile: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("legocompile: interrupted (finished artefacts are cached; rerun to resume)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
