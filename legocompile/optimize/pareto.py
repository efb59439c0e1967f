"""``legocompile pareto``: the accuracy-latency-memory frontier of a bundle, as JSON and a PNG plot.

Like LegoDNN's ``gen_series_legodnn_models``: sweep latency budgets and memory budgets across their useful range,
ask the optimizer for the best selection under each, and keep the selections no other one dominates.
"""

from __future__ import annotations

from pathlib import Path

from legocompile.bundle import Manifest
from legocompile.inspect import flat_accuracy_note
from legocompile.optimize.frontier import pareto_frontier
from legocompile.optimize.select import costs_of, make_selection, options_of
from legocompile.optimize.solver import prepare
from legocompile.profile.accuracy import metric_of
from legocompile.workspace import atomic_produce, atomic_write_json


def _entry(manifest: Manifest, choice) -> dict:
    sel = make_selection(manifest, options_of(manifest, choice))
    return sel.to_json()["predicted"] | {"selection": [[o.variant, o.precision] for o in sel.options]}


def write_pareto(manifest: Manifest, stem: Path, *, points: int = 60) -> dict:
    """Write ``<stem>.json`` and ``<stem>.png``; return the JSON document (with the file paths).

    The suffixes are appended to the stem's name (a stem ``out.v2-pareto`` gives ``out.v2-pareto.json``); a stem
    already ending in ``.json`` or ``.png`` has that suffix dropped first."""
    prepared = prepare(costs_of(manifest))
    frontier = pareto_frontier(prepared, num_points=points)
    entries = [_entry(manifest, s.choice) for s in frontier]
    lat = [e["latency_ms"] for e in entries]
    mem = [e["memory_bytes"] for e in entries]
    acc = [e["accuracy"] for e in entries]
    stem = Path(stem)
    if stem.suffix in (".json", ".png"):
        stem = stem.with_suffix("")
    json_path, png_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".png")
    doc = {
        "model": manifest.model,
        "metric": metric_of(manifest.teacher),
        "teacher": manifest.teacher,
        "num_selections": 2 * points,  # optimizer calls: `points` latency budgets + `points` memory budgets
        "frontier": entries,
        "range": {
            "latency_ms": [min(lat), max(lat)],
            "memory_bytes": [min(mem), max(mem)],
            "accuracy": [min(acc), max(acc)],
            "latency_ratio": max(lat) / min(lat),
            "memory_ratio": max(mem) / min(mem),
        },
        "additivity": {k: v for k, v in (manifest.additivity or {}).items() if k != "samples"} or None,
        "flat_accuracy": flat_accuracy_note(manifest),
        "json": str(json_path),
        "png": str(png_path),
    }
    atomic_produce(png_path, lambda tmp: _plot(entries, manifest, tmp))
    atomic_write_json(json_path, doc)
    return doc


def _plot(entries: list[dict], manifest: Manifest, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from legocompile.profile.accuracy import metric_label

    label = f"predicted {metric_label(metric_of(manifest.teacher))} (%)"
    lat = [e["latency_ms"] for e in entries]
    acc = [e["accuracy"] * 100 for e in entries]
    mem = [e["memory_bytes"] / 1e6 for e in entries]
    fig, ax = plt.subplots(1, 3, figsize=(15, 4.2), dpi=110)
    sc = ax[0].scatter(lat, acc, c=mem, cmap="viridis", s=28)
    fig.colorbar(sc, ax=ax[0], label="memory (MB)")
    ax[0].set_xlabel("predicted latency (ms)")
    ax[0].set_ylabel(label)
    ax[0].set_title("accuracy vs latency")
    sc = ax[1].scatter(mem, acc, c=lat, cmap="plasma", s=28)
    fig.colorbar(sc, ax=ax[1], label="latency (ms)")
    ax[1].set_xlabel("predicted memory (MB)")
    ax[1].set_title("accuracy vs memory")
    sc = ax[2].scatter(lat, mem, c=acc, cmap="cividis", s=28)
    fig.colorbar(sc, ax=ax[2], label=label)
    ax[2].set_xlabel("predicted latency (ms)")
    ax[2].set_ylabel("predicted memory (MB)")
    ax[2].set_title("latency vs memory")
    teacher = manifest.teacher["accuracy"] * 100
    for a in ax[:2]:
        a.axhline(teacher, color="grey", lw=0.8, ls="--", label="teacher")
        low = min(acc + [teacher])
        a.set_ylim(max(0.0, low - max(1.0, 0.1 * (100 - low))), min(100.5, max(acc + [teacher]) + 0.5))
    for a in ax:
        a.grid(alpha=0.3)
    fig.suptitle(f"{manifest.model}: {len(entries)} Pareto-optimal selections ({manifest.device.get('processor', '')})",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
