"""Benchmark: derive and retrain every descendant of the built-in example, then measure size and accuracy.

Teacher: the shipped ``resnet18_digits(32)`` (``load_example_model()``), cut with ``partition(..., "auto",
max_blocks=8)``. For every block and every sparsity > 0 a variant is pruned (structured L1) and retrained on the
teacher's features over the digits training split (one teacher pass, cached). Measured:

* seconds for derive + retrain (target <= 600 s on a 2-core machine);
* parameters of every block and of each of its variants, and the ratio (target: the 0.8 variant of every prunable
  block has >= 3x fewer parameters);
* top-1 accuracy on the digits test split of the PyTorch chain with every block replaced by its variant of one
  sparsity (target: all-0.4 within 3 points of the teacher), before and after retraining, and of the teacher.

Usage::

    python benchmarks/bench_variants.py [--out benchmarks/results/variants.json] [--epochs N] [--sparsities 0,0.4,0.8]
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from legocompile.blocks import partition  # noqa: E402
from legocompile.examples import load_example_model  # noqa: E402
from legocompile.examples.digits import load_splits  # noqa: E402
from legocompile.variants import count_parameters, prune_block  # noqa: E402
from legocompile.variants.retrain import RetrainSettings, retrain_variants  # noqa: E402
from legocompile.workspace import atomic_write_json  # noqa: E402

DEFAULT_EPOCHS = 10  # ~9 s per epoch on 2 idle cores (~90 s in all); all-0.4 meets its target from epoch 1
ACCURACY_TARGET_POINTS = 3.0
REDUCTION_TARGET = 3.0
TIME_TARGET_S = 600.0


def chain_accuracy(modules: list[nn.Module], x: np.ndarray, y: np.ndarray, batch_size: int = 128) -> float:
    """Top-1 accuracy of the chain of ``modules`` (eval mode, no grad) on ``(x, y)``."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            a = torch.tensor(x[start : start + batch_size])
            for m in modules:
                a = m.eval()(a)
            correct += int((a.argmax(1).numpy() == y[start : start + batch_size]).sum())
    return correct / len(x)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/variants.json"))
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS)
    parser.add_argument("--sparsities", default="0,0.4,0.8", help="comma-separated; 0 is the teacher block itself")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    sparsities = sorted({float(s) for s in args.sparsities.split(",") if s.strip()})
    pruned_levels = [s for s in sparsities if s > 0]

    teacher = load_example_model()
    splits = load_splits()
    blocks = partition(teacher, torch.tensor(splits.x_train[:1]), "auto", max_blocks=8)
    modules = [b.module for b in blocks]
    examples, a = [], torch.tensor(splits.x_train[:2])
    with torch.no_grad():
        for m in modules:
            examples.append(a)
            a = m(a)

    started = time.perf_counter()
    variants, reports = {}, {}
    for i, block in enumerate(blocks):
        for s in pruned_levels:
            pruned = prune_block(block.module, examples[i], s)
            variants[(i, f"s{s:g}")], reports[(i, s)] = pruned.module, pruned.report
    derive_s = time.perf_counter() - started
    untrained = {key: copy.deepcopy(m) for key, m in variants.items()}
    settings = RetrainSettings(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size)
    started = time.perf_counter()
    results = retrain_variants(modules, variants, splits.x_train, settings)
    retrain_s = time.perf_counter() - started

    def chain(level: float, pool: dict) -> list[nn.Module]:
        return [m if level == 0 else pool[(i, f"s{level:g}")] for i, m in enumerate(modules)]

    teacher_acc = chain_accuracy(modules, splits.x_test, splits.y_test)
    accuracy = {"teacher": teacher_acc}
    for s in pruned_levels:
        accuracy[f"all_{s:g}"] = chain_accuracy(chain(s, variants), splits.x_test, splits.y_test)
        accuracy[f"all_{s:g}_before_retrain"] = chain_accuracy(chain(s, untrained), splits.x_test, splits.y_test)

    per_block = []
    for i, block in enumerate(blocks):
        original = count_parameters(block.module)
        row = {"block": block.name, "params": original, "prunable": any(reports[(i, s)].groups for s in pruned_levels),
               "variants": {}}
        for s in pruned_levels:
            r = results[(i, f"s{s:g}")]
            n = count_parameters(variants[(i, f"s{s:g}")])
            row["variants"][f"{s:g}"] = {
                "params": n, "reduction": original / n, "initial_val_mse": r.initial_val_mse,
                "best_val_mse": r.best_val_mse, "epochs_run": r.epochs_run, "best_epoch": r.best_epoch,
            }
        per_block.append(row)

    total_s = derive_s + retrain_s
    top = f"{max(pruned_levels):g}" if pruned_levels else None
    targets = {
        "time_s_le_600": total_s <= TIME_TARGET_S,
        "reduction_top_ge_3x": top is not None and all(
            row["variants"][top]["reduction"] >= REDUCTION_TARGET for row in per_block if row["prunable"]
        ),
    }
    if 0.4 in pruned_levels:
        targets["all_0.4_within_3_points"] = 100 * (teacher_acc - accuracy["all_0.4"]) <= ACCURACY_TARGET_POINTS
    report = {
        "benchmark": "variants",
        "platform": {"system": platform.platform(), "machine": platform.machine(), "processor": platform.processor(),
                     "python": platform.python_version(), "cpu_count": os.cpu_count()},
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "settings": {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                     "sparsities": sparsities, "train_samples": int(len(splits.x_train)),
                     "test_samples": int(len(splits.x_test))},
        "seconds": {"derive": derive_s, "retrain": retrain_s, "total": total_s},
        "accuracy": accuracy, "blocks": per_block, "targets": targets,
    }
    atomic_write_json(args.out, report)

    print(f"derive {derive_s:.1f} s + retrain {retrain_s:.1f} s = {total_s:.1f} s ({args.epochs} epochs, "
          f"{torch.get_num_threads()} threads)")
    for row in per_block:
        sizes = ", ".join(f"{s}: {v['params']} ({v['reduction']:.1f}x, mse {v['initial_val_mse']:.3g}->"
                          f"{v['best_val_mse']:.3g}, {v['epochs_run']} ep)" for s, v in row["variants"].items())
        print(f"  {row['block']:<16} {row['params']:>8} params | {sizes}")
    print("accuracy: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in accuracy.items()))
    print("targets: " + ", ".join(f"{k}={'ok' if v else 'MISSED'}" for k, v in targets.items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
