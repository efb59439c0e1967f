"""int8 formats on this CPU: error and latency of every recipe, per block variant of a bundle.

For each block variant's fp32 ONNX in BUNDLE, the block's calibration inputs are computed by running the fp32
original chain (no torch), ranges are computed once, and one QDQ engine is written per recipe (u8s8, u8u8,
u8s8-reduce-range). Each engine is compared with its fp32 ONNX on held-out inputs (relative L2), and all engines of a
variant (fp32 included) are timed in interleaved rounds, single-threaded, so drift hits every recipe alike. This is
the measurement behind ``calibration.recipe.DEFAULT_WITHOUT_VNNI``.

Usage: python benchmarks/bench_int8.py [BUNDLE]   (default: ./legocompile-out, the built-in example)
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _common import interleaved, machine_info, write_json  # noqa: E402


def main() -> None:
    import onnxruntime as ort

    from calibration.qdq import quantize_qdq
    from calibration.ranges import CalibrationSettings, compute_ranges
    from calibration.recipe import RECIPES, host_cpu_flags, host_recipe
    from legocompile.bundle import read_bundle
    from legocompile.project import example_dataset

    bundle = Path(sys.argv[1] if len(sys.argv) > 1 else "legocompile-out")
    manifest = read_bundle(bundle)
    data = example_dataset()
    calib = np.asarray(data["calibration"], np.float32)[:256]
    held_out = np.asarray(data["eval"][0], np.float32)

    def session(path: Path):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = so.inter_op_num_threads = 1
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    calib_in, eval_in = [calib], [held_out]
    for block in manifest.blocks[:-1]:
        s = session(bundle / block.option("s0", "fp32").onnx)
        calib_in.append(s.run(None, {"x": calib_in[-1]})[0])
        eval_in.append(s.run(None, {"x": eval_in[-1]})[0])

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, block in enumerate(manifest.blocks):
            for variant in dict.fromkeys(o.variant for o in block.options):
                onnx_path = bundle / block.option(variant, "fp32").onnx
                ranges = compute_ranges(onnx_path, calib_in[i], CalibrationSettings())
                sessions = {"fp32": session(onnx_path)}
                for name, recipe in RECIPES.items():
                    out = Path(tmp) / f"{i}-{variant}-{name}.onnx"
                    quantize_qdq(onnx_path, out, ranges, recipe)
                    sessions[name] = session(out)
                ref = sessions["fp32"].run(None, {"x": eval_in[i]})[0]
                row = {"block": block.name, "variant": variant, "rel_l2": {}, "latency_ms": {}}
                for name in RECIPES:
                    y = sessions[name].run(None, {"x": eval_in[i]})[0]
                    row["rel_l2"][name] = float(np.linalg.norm(y - ref) / np.linalg.norm(ref))
                x1 = eval_in[i][:1]
                timed = interleaved({n: (lambda s=s: s.run(None, {"x": x1})) for n, s in sessions.items()},
                                    warmup=10, runs=200, rounds=10)
                row["latency_ms"] = {n: t["median_ms"] for n, t in timed.items()}
                rows.append(row)
                print(f"{block.name:18s} {variant:6s} " + "  ".join(
                    f"{n} {row['rel_l2'][n]:6.2%} {row['latency_ms'][n]:.3f} ms" for n in RECIPES)
                    + f"  fp32 {row['latency_ms']['fp32']:.3f} ms", flush=True)

    names = ["fp32", *RECIPES]
    summary = {
        "max_rel_l2": {n: max(r["rel_l2"][n] for r in rows) for n in RECIPES},
        "total_latency_ms": {n: sum(r["latency_ms"][n] for r in rows) for n in names},
        "host_recipe": host_recipe()[0].name,
        "vnni": sorted({"avx512_vnni", "avx_vnni", "amx_int8"} & host_cpu_flags()),
    }
    print(json.dumps(summary, indent=2))
    write_json(Path(__file__).parent / "results" / "int8.json",
               {"machine": machine_info(), "bundle": str(bundle), "threads": 1, "rows": rows, "summary": summary})


if __name__ == "__main__":
    main()
