"""``legocompile retarget``: engines and profiles for this device from a bundle's ONNX files and calibration ranges,
without PyTorch; outputs checked against the source bundle, accuracy against the Runtime run on the same data."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from legocompile import Runtime
from legocompile.backends import get_backend
from legocompile.bundle import calibration_files, read_bundle, write_bundle
from legocompile.cli import main
from legocompile.profile import top1


def cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def eval_data(tiny_bundle):
    x, y = tiny_bundle["eval"]
    return np.asarray(x, np.float32)[:120], np.asarray(y)[:120]


@pytest.fixture(scope="module")
def retargeted(tiny_bundle, tmp_path_factory, eval_data):
    """The tiny bundle retargeted twice on this host: without data at 1 thread, and with --data."""
    root = tmp_path_factory.mktemp("retarget")
    npz = root / "eval.npz"
    np.savez(npz, x=eval_data[0], y=eval_data[1])
    src = str(tiny_bundle["path"])
    for name, extra in (("nodata", ["--threads", "1"]), ("data", ["--data", str(npz)])):
        assert main(["retarget", src, "--out", str(root / name), "--work-dir", str(root / "work"), "-q", "--json",
                     *extra]) == 0
    return {"root": root, "npz": npz, "nodata": root / "nodata", "data": root / "data"}


def test_the_build_stores_calibration_ranges_and_trt_cache(tiny_bundle):
    from calibration.ranges import TensorRanges
    from calibration.trt_cache import read_trt_cache, trt_scales

    root = Path(tiny_bundle["path"])
    m = read_bundle(root)
    calib = calibration_files(m)
    assert sorted(calib) == sorted((b.name, o.variant) for b in m.blocks for o in b.options if o.precision == "int8")
    for entry in calib.values():
        assert set(entry) == {"ranges", "trt_cache"} and all(rel in m.files for rel in entry.values())
        ranges = TensorRanges.from_json(root / entry["ranges"])
        assert ranges.ranges and ranges.method == m.settings["calibration"]["method"]
        scales = trt_scales(ranges)
        assert read_trt_cache(root / entry["trt_cache"]) == scales


def _outputs(path, selection, x):
    rt = Runtime.load(path)
    rt.select(selection=selection)
    return rt.predict(x)


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_retargeted_runtime_matches_the_source(tiny_bundle, retargeted, eval_data, precision):
    x = eval_data[0][:40]
    n = len(read_bundle(tiny_bundle["path"]).blocks)
    selection = [("s0", precision)] * n
    ref = _outputs(tiny_bundle["path"], selection, x)
    scale = float(np.max(np.abs(ref)))
    for name in ("nodata", "data"):
        got = _outputs(retargeted[name], selection, x)
        # Same backend and host: the engines are rebuilt from the same ONNX and ranges, so they agree closely.
        assert float(np.max(np.abs(got - ref))) <= 1e-4 * scale, (name, precision)


def test_manifest_records_source_device_and_versions(tiny_bundle, retargeted):
    src_root = Path(tiny_bundle["path"])
    src = read_bundle(src_root)
    sha = hashlib.sha256((src_root / "manifest.json").read_bytes()).hexdigest()
    for name, threads in (("nodata", 1), ("data", src.settings["profile"]["threads"])):
        m = read_bundle(retargeted[name])
        r = m.settings["retarget"]
        assert r["source"]["manifest_sha256"] == sha and r["source"]["model"] == src.model == m.model
        assert r["source"]["device"] == src.device and r["backend"] == "onnxruntime"
        assert m.settings["profile"]["threads"] == threads
        assert {"legocompile", "onnx", "onnxruntime", "python"} <= set(m.tools)
        fingerprint = get_backend("onnxruntime").fingerprint()
        assert {k: m.device[k] for k in fingerprint} == fingerprint and "cpu_count" in m.device
        # ONNX files and calibration ranges are carried over byte for byte; engines are this host's.
        for rel, digest in src.files.items():
            if not rel.startswith("engines/"):
                assert m.files[rel] == digest, rel
        assert calibration_files(m) == calibration_files(src)
        for b, sb in zip(m.blocks, src.blocks):
            assert [o.key for o in b.options] == [o.key for o in sb.options]
            for o in b.options:
                assert o.latency_ms > 0 and o.memory_bytes > 0 and m.files[o.engine] == o.sha256


def test_without_data_drops_are_kept_and_marked_measured_elsewhere(tiny_bundle, retargeted, capsys):
    src = read_bundle(tiny_bundle["path"])
    m = read_bundle(retargeted["nodata"])
    assert m.settings["retarget"]["accuracy"] == "measured elsewhere"
    assert "accuracy_drop" in m.settings["retarget"]["measured_elsewhere"]
    assert m.teacher["accuracy"] == src.teacher["accuracy"] and m.additivity == src.additivity
    for b, sb in zip(m.blocks, src.blocks):
        for o, so in zip(b.options, sb.options):
            assert (o.accuracy_drop, o.accuracy_gate, o.excluded) == (so.accuracy_drop, so.accuracy_gate, so.excluded)
    code, out, err = cli(capsys, "inspect", str(retargeted["nodata"]), "--json")
    assert code == 0, err
    assert json.loads(out)["retarget"]["accuracy"] == "measured elsewhere"
    code, out, err = cli(capsys, "inspect", str(retargeted["nodata"]))
    assert code == 0 and "measured elsewhere" in out


def test_with_data_accuracy_is_measured_here(retargeted, eval_data):
    """Teacher accuracy and every drop equal what the retargeted Runtime itself measures on the same data."""
    x, y = eval_data
    m = read_bundle(retargeted["data"])
    assert m.settings["retarget"]["accuracy"] == f"measured here on {len(y)} samples"
    assert m.settings["retarget"]["measured_elsewhere"] == [] and m.teacher["num_eval"] == len(y)
    n = len(m.blocks)
    tol = 1.0 / len(y) + 1e-12  # batching may flip one near-tie
    teacher = top1(_outputs(retargeted["data"], [("s0", "fp32")] * n, x), y)
    assert abs(m.teacher["accuracy"] - teacher) <= tol
    for i, b in enumerate(m.blocks):
        for o in b.options:
            assert o.accuracy_gate["samples"] == len(y) and o.excluded is None
            selection = [("s0", "fp32")] * n
            selection[i] = o.key
            measured = teacher - top1(_outputs(retargeted["data"], selection, x), y)
            assert abs(o.accuracy_drop - measured) <= 2 * tol, (b.name, o.key)


def test_rerun_is_cached(tiny_bundle, retargeted, capsys):
    out = retargeted["root"] / "again"
    code, stdout, err = cli(capsys, "retarget", str(tiny_bundle["path"]), "--out", str(out), "--threads", "1",
                            "--work-dir", str(retargeted["root"] / "work"), "-q", "--json")
    assert code == 0, err
    doc = json.loads(stdout)
    assert "engine" not in doc["built"] and "profile" not in doc["built"] and doc["cached"]["engine"] > 0
    assert read_bundle(out).blocks == read_bundle(retargeted["nodata"]).blocks


def test_old_bundle_without_ranges_is_a_one_line_error(tiny_bundle, tmp_path, capsys):
    root = Path(tiny_bundle["path"])
    m = read_bundle(root)
    settings = dict(m.settings)
    settings["calibration"] = {k: v for k, v in m.settings["calibration"].items() if k != "files"}
    old = dataclasses.replace(m, settings=settings)
    files = {rel: root / rel for rel in m.files if not rel.startswith("calibration/")}
    write_bundle(tmp_path / "old", old, files)
    code, _, err = cli(capsys, "retarget", str(tmp_path / "old"), "--out", str(tmp_path / "new"),
                       "--work-dir", str(tmp_path / "work"))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "no int8 calibration ranges" in err and "rebuild it with legocompile >=" in err
    assert not (tmp_path / "new").exists()


def test_refuses_to_overwrite_its_source(tiny_bundle, capsys):
    code, _, err = cli(capsys, "retarget", str(tiny_bundle["path"]), "--out", str(tiny_bundle["path"]))
    assert code == 1 and "is the source bundle" in err


# A finder that makes ``import torch`` fail as if torch were not installed (the project venv has it, so a plain
# venv cannot show its absence; a fresh venv cannot install packages offline here).
NO_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _NoTorch())
"""


def test_retarget_load_and_run_without_torch(tiny_bundle, tmp_path, eval_data):
    npz = tmp_path / "eval.npz"
    np.savez(npz, x=eval_data[0][:60], y=eval_data[1][:60])
    script = NO_TORCH + textwrap.dedent("""
        import contextlib, io, json
        import numpy as np
        import legocompile
        from legocompile.cli import main

        src, out, npz = sys.argv[1:4]
        assert main(["retarget", src, "--out", out, "--data", npz, "-q", "--json"]) == 0
        for args in (["inspect", out, "--json"], ["verify", out], ["run", out, "--runs", "3", "--json"]):
            with contextlib.redirect_stdout(io.StringIO()):
                assert main(args) == 0, args
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                main(["--help"])
            except SystemExit as e:
                assert e.code == 0
        rt = legocompile.Runtime.load(out)
        y = rt(np.load(npz)["x"][:1])
        assert y.shape[0] == 1 and np.isfinite(y).all()
        buf = io.StringIO()
        with contextlib.redirect_stderr(buf):
            code = main(["build", "--precision", "int8", "--out", out + "-never"])
        print(json.dumps({"torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
                          "build_code": code, "build_err": buf.getvalue()}))
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(tiny_bundle["path"]), str(tmp_path / "out"), str(npz)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["torch"] == []
    assert doc["build_code"] == 1 and doc["build_err"].count("\n") == 1
    assert "torch is required for legocompile build" in doc["build_err"] and "legocompile[build]" in doc["build_err"]
    assert read_bundle(tmp_path / "out").settings["retarget"]["accuracy"] == "measured here on 60 samples"
