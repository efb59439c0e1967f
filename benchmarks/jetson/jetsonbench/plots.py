"""PNG plots of a run (matplotlib, Agg backend: no display needed).

* ``latency_cdf``: the frame response times of every trace, and the static chain / whole-model samples, as CDFs.
* ``trace_timeline``: one trace over time, three panels sharing the time axis: latency (budget, the selection's
  predicted latency, every frame's response time, misses in red), memory (budget, the selection's predicted
  memory, the process's RSS above its base: sampled, and each phase's exact peak), accuracy (predicted; measured
  on the streamed frames and on the eval slice when there is evaluation data).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _cdf(ax, samples, label, **kw) -> None:
    a = np.sort(np.asarray([s for s in samples if s is not None], dtype=float))
    if a.size:
        ax.plot(a, np.arange(1, a.size + 1) / a.size, label=label, **kw)


def latency_cdf(report: dict, path: Path) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 5))
    for name, tr in report.get("traces", {}).items():
        if tr.get("status") != "ok":
            continue
        s = tr["summary"]
        rate = "n/a" if s["miss_rate"] is None else f"{s['miss_rate'] * 100:.1f}%"
        _cdf(ax, tr["frames"]["response_ms"], f"trace {name} (frame response; misses {rate})", lw=1.8)
    chain = report.get("static", {}).get("chain_vs_whole", {}).get("selections", {})
    teacher = next((v for k, v in chain.items() if k.startswith("teacher") and v.get("status") == "ok"), None)
    if teacher:
        _cdf(ax, teacher["chain_samples_ms"], "static: teacher chain (s0/fp32)", ls="--", color="black")
        if "whole_samples_ms" in teacher:
            _cdf(ax, teacher["whole_samples_ms"], "static: whole model, one session", ls=":", color="gray")
    ax.set_xscale("log")
    ax.set_xlabel("latency per frame (ms, log scale)")
    ax.set_ylabel("fraction of frames ≤ x")
    ax.set_ylim(0, 1.02)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(f"{report.get('bundle', {}).get('model', '')} — latency CDF on {_device_label(report)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _device_label(report: dict) -> str:
    dev = report.get("device", {})
    if dev.get("jetson_model"):
        return dev["jetson_model"]
    return dev.get("cpu", {}).get("model", "this host")


def _steps(phases, values):
    xs = [p["start_s"] for p in phases] + [phases[-1]["end_s"]]
    ys = list(values) + [values[-1]]
    return xs, ys


def trace_timeline(trace: dict, path: Path, title_prefix: str = "") -> Path:
    plt = _plt()
    phases = trace["phases"]
    fr = trace["frames"]
    fig, (ax_l, ax_m, ax_a) = plt.subplots(3, 1, figsize=(12.5, 9), sharex=True,
                                           gridspec_kw={"height_ratios": [1.4, 1, 1]})
    # latency
    t = np.array([v if v is not None else np.nan for v in fr["t_s"]], dtype=float)
    resp = np.array([v if v is not None else np.nan for v in fr["response_ms"]], dtype=float)
    budget = np.array([phases[i]["budget"]["latency_ms"] if phases[i]["budget"]["latency_ms"] is not None else np.nan
                       for i in fr["phase"]], dtype=float)
    miss = resp > budget
    ok = ~np.isnan(resp) & ~miss
    ax_l.scatter(t[ok], resp[ok], s=6, color="tab:gray", alpha=0.6, label="frame response time")
    ax_l.scatter(t[miss], resp[miss], s=10, color="tab:red", marker="x", label="deadline miss")
    lat_b = [p["budget"]["latency_ms"] for p in phases]
    if any(v is not None for v in lat_b):
        xs, ys = _steps(phases, [np.nan if v is None else v for v in lat_b])
        ax_l.step(xs, ys, where="post", color="black", ls="--", lw=1.5, label="latency budget")
    xs, ys = _steps(phases, [p["predicted"]["latency_ms"] for p in phases])
    ax_l.step(xs, ys, where="post", color="tab:blue", lw=1.5, label="selection, predicted")
    ax_l.set_yscale("log")
    ax_l.set_ylabel("latency (ms, log)")
    ax_l.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for p in phases[1:]:
        for ax in (ax_l, ax_m, ax_a):
            ax.axvline(p["start_s"], color="tab:purple", alpha=0.25, lw=1)
        if len(phases) <= 24:  # beyond that the labels would pile up; the JSON has every switch
            ax_l.annotate(f"switch {p['switch_ms']:.1f} ms", (p["start_s"], 0.02), xycoords=("data", "axes fraction"),
                          fontsize=6, rotation=90, va="bottom", ha="right", color="tab:purple")
    # memory
    mem_b = [p["budget"]["memory_mb"] for p in phases]
    if any(v is not None for v in mem_b):
        xs, ys = _steps(phases, [np.nan if v is None else v for v in mem_b])
        ax_m.step(xs, ys, where="post", color="black", ls="--", lw=1.5, label="memory budget")
    xs, ys = _steps(phases, [p["predicted"]["memory_bytes"] / 1e6 for p in phases])
    ax_m.step(xs, ys, where="post", color="tab:blue", lw=1.5, label="selection, predicted (profiled)")
    base = trace["summary"]["rss"]["base_bytes"]
    proc = trace.get("series", {}).get("proc", {})
    if base is not None and proc.get("t"):
        rss = np.array([np.nan if v is None else (v - base) / 1e6 for v in proc["rss_bytes"]], dtype=float)
        ax_m.plot(proc["t"], rss, color="tab:orange", lw=1, alpha=0.8, label="process RSS − base (sampled)")
    hwm = [p["rss"]["hwm_over_base_bytes"] for p in phases]
    if all(v is not None for v in hwm):
        xs, ys = _steps(phases, [v / 1e6 for v in hwm])
        ax_m.step(xs, ys, where="post", color="tab:orange", ls=":", lw=2, label="phase peak RSS − base (VmHWM)")
    ax_m.set_ylabel("memory (MB)")
    ax_m.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    # accuracy
    xs, ys = _steps(phases, [p["accuracy"]["predicted"] * 100 for p in phases])
    ax_a.step(xs, ys, where="post", color="tab:blue", lw=1.5, label="predicted (accuracy model)")
    if all("measured_eval" in p["accuracy"] for p in phases):
        xs, ys = _steps(phases, [p["accuracy"]["measured_eval"] * 100 for p in phases])
        ax_a.step(xs, ys, where="post", color="tab:green", lw=1.5, ls="--",
                  label=f"measured, eval slice ({phases[0]['accuracy']['eval_samples']} samples)")
    stream = [(0.5 * (p["start_s"] + p["end_s"]), p["accuracy"]["measured_stream"] * 100)
              for p in phases if "measured_stream" in p["accuracy"]]
    if stream:
        ax_a.scatter(*zip(*stream), color="tab:green", marker="o", s=18, label="measured, streamed frames of the phase")
    ax_a.set_ylabel("top-1 (%)")
    ax_a.set_xlabel("time since the trace started (s)")
    ax_a.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for ax in (ax_l, ax_m, ax_a):
        ax.grid(True, alpha=0.3)
    s = trace["summary"]
    rate = "n/a" if s["miss_rate"] is None else f"{s['miss_rate'] * 100:.1f}%"
    sw = s["switch_ms"]
    sw_txt = f"switch median {sw['median']:.2f} ms" if sw.get("count") else "no switch"
    fig.suptitle(f"{title_prefix}trace {trace['trace']['name']} ({trace['trace']['mode']}"
                 f"{', %g Hz' % trace['trace']['frame_rate_hz'] if trace['trace']['frame_rate_hz'] else ''}): "
                 f"deadline misses {rate}, {s['dropped']} dropped, {sw_txt}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
