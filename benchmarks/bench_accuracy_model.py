"""How well the accuracy model predicts real selections, on a model whose variants do lose accuracy.

The built-in example is saturated: no variant changes a single test prediction, so every accuracy model is exact
there. This script builds a deliberately weak teacher (a width-4 ResNet-18 trained for 2 epochs on digits, variants
at 0.5 and 0.8 retrained for 1 epoch), measures 40 random full selections, and compares the multiplicative model
the optimizer uses with LegoDNN's additive one.

    python benchmarks/bench_accuracy_model.py --out benchmarks/results/accuracy_model.json
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import machine_info, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/accuracy_model.json")
    ap.add_argument("--selections", type=int, default=40)
    args = ap.parse_args()

    import legocompile
    from legocompile.bundle import read_bundle
    from legocompile.config import ProfileConfig
    from legocompile.examples.digits import load_splits
    from legocompile.examples.train import quick_fit
    from legocompile.variants.retrain import RetrainSettings

    model = quick_fit(width=4, epochs=2)
    s = load_splits()
    tmp = Path(tempfile.mkdtemp(prefix="lc-accmodel-"))
    try:
        t0 = time.perf_counter()
        path = legocompile.compile(
            model, np.zeros((1, 1, 32, 32), np.float32), calibration_data=s.x_train[:256],
            eval_data=(s.x_test, s.y_test), train_data=s.x_train, out=tmp / "bundle", work_dir=tmp / "work",
            precisions=("fp32", "int8"), profile=ProfileConfig(warmup=5, runs=50), sparsities=(0.0, 0.5, 0.8),
            retrain=RetrainSettings(epochs=1), additivity_samples=args.selections, model_name="weak-resnet18",
        )
        m = read_bundle(path)
        a = m.additivity
        doc = {
            "benchmark": "accuracy_model",
            "machine": machine_info(),
            "settings": {"teacher_epochs": 2, "width": 4, "sparsities": [0.0, 0.5, 0.8], "retrain_epochs": 1,
                         "selections": a["num_selections"], "build_seconds": round(time.perf_counter() - t0, 1)},
            "teacher_accuracy": m.teacher["accuracy"],
            "multiplicative": {"mean_abs_error": a["mean_abs_error"], "max_abs_error": a["max_abs_error"]},
            "additive": {"mean_abs_error": a["additive_mean_abs_error"], "max_abs_error": a["additive_max_abs_error"]},
            "samples": a["samples"],
        }
        write_json(args.out, doc)
        print(f"teacher {m.teacher['accuracy'] * 100:.2f}%; over {a['num_selections']} random selections, mean |error|: "
              f"multiplicative {a['mean_abs_error'] * 100:.2f} pt, additive {a['additive_mean_abs_error'] * 100:.2f} pt")
        print(f"wrote {args.out}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
