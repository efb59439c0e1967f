"""The CLI on a user project: build, inspect, optimize, run (JSON interfaces), and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from safetensors.torch import save_file

from legocompile.cli import main

PROJECT = """
[model]
name = "tinynet"
factory = "tinymodels:make"
weights = "tiny.safetensors"
input_shape = [1, 1, 32, 32]

[data]
provider = "tinymodels:data"

[blocks]
cut = ["layer1", "layer3", "fc"]

[build]
precisions = ["fp32", "int8"]
out = "out"
work_dir = "work"

[variants]
sparsities = [0.0, 0.5]
epochs = 1

[calibration]
method = "percentile"
num_samples = 64

[profile]
warmup = 3
runs = 50
"""

MODULE = """
from legocompile.examples.resnet import resnet18_digits
from legocompile.examples.digits import load_splits

def make():
    return resnet18_digits(width=4)

def data():
    s = load_splits()
    return s.x_train[:64], (s.x_test[:100], s.y_test[:100])
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model):
    root = tmp_path_factory.mktemp("proj")
    (root / "legocompile.toml").write_text(PROJECT)
    (root / "tinymodels.py").write_text(MODULE)
    save_file({k: v.contiguous() for k, v in tiny_model.state_dict().items()}, str(root / "tiny.safetensors"))
    return root


def cli(capsys, *args) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def built(project):
    proc = subprocess.run(
        [sys.executable, "-m", "legocompile.cli", "build", "--json", "-q"], cwd=project, capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return project, json.loads(proc.stdout)


def test_build_json(built):
    project, doc = built
    assert doc["model"] == "tinynet"
    assert [b["name"] for b in doc["blocks"]] == ["conv1-layer1", "layer2-layer3", "layer4-fc"]
    for b in doc["blocks"]:
        assert [(o["variant"], o["precision"]) for o in b["options"]] == [
            ("s0", "fp32"), ("s0", "int8"), ("s0.5", "fp32"), ("s0.5", "int8")]
        for o in b["options"]:
            assert {"latency_ms", "latency_p90_ms", "memory_bytes", "accuracy_drop", "export_max_abs_err"} <= set(o)
    assert doc["built"]["engine"] == 12 and doc["built"]["retrain"] == 3
    # residual-tied convs are left whole and reported (each basic block's conv2 feeds its residual add)
    assert doc["unprunable"] and all("left whole" in n for n in doc["unprunable"])
    assert any("residual add" in n for n in doc["unprunable"])
    assert (project / "out" / "manifest.json").is_file()


def test_second_build_is_all_cached(built, capsys, monkeypatch):
    project, _ = built
    monkeypatch.chdir(project)
    code, out, _ = cli(capsys, "build", "--json", "-q")
    assert code == 0
    doc = json.loads(out)
    assert doc["built"] == {} and doc["cached"]["engine"] == 12


def test_inspect_optimize_run(built, capsys):
    project, _ = built
    out_dir = str(project / "out")
    code, out, _ = cli(capsys, "inspect", out_dir, "--json")
    doc = json.loads(out)
    assert code == 0 and set(doc) >= {"model", "teacher", "blocks"}
    assert set(doc["teacher"]) >= {"accuracy", "latency_ms"}

    budget = sum(max(o["latency_ms"] for o in b["options"]) for b in doc["blocks"]) * 2
    code, out, _ = cli(capsys, "optimize", out_dir, "--latency-ms", str(budget), "--json")
    opt = json.loads(out)
    assert code == 0 and len(opt["selection"]) == 3
    assert "additivity" in doc and doc["additivity"]["num_selections"] == 24
    assert set(opt["predicted"]) == {"accuracy", "latency_ms", "memory_bytes"}
    assert opt["predicted"]["latency_ms"] <= budget

    code, out, err = cli(capsys, "run", out_dir, "--latency-ms", str(budget), "--runs", "50", "--json",
                         "--config", str(project / "legocompile.toml"))
    assert code == 0, err
    ran = json.loads(out)
    assert ran["selection"] == opt["selection"]
    assert 0 < ran["measured"]["accuracy"] <= 1 and ran["measured"]["latency_ms"] > 0
    # the measured accuracy is the accuracy of the chosen chain on the same evaluation split the profiles used
    if all(s["precision"] == "fp32" for s in ran["selection"]):
        assert ran["measured"]["accuracy"] == pytest.approx(doc["teacher"]["accuracy"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["optimize", "{out}", "--latency-ms", "0.0001"], "no selection fits latency"),
        (["optimize", "{out}", "--latency-ms", "-3"], "latency"),
        (["inspect", "{proj}/nope"], "bundle not found"),
        (["build", "--config", "{proj}/nope.toml"], "project file not found"),
        (["build", "--config", "{proj}/legocompile.toml", "--precision", "int4"], "unknown precision 'int4'"),
    ],
)
def test_errors_are_one_line(built, capsys, args, message):
    project, _ = built
    args = [a.format(out=project / "out", proj=project) for a in args]
    code, out, err = cli(capsys, *args)
    assert code == 1
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_weights_are_one_line(project, tmp_path, capsys):
    bad = tmp_path / "legocompile.toml"
    bad.write_text(PROJECT.replace('weights = "tiny.safetensors"', f'weights = "{project}/tinymodels.py"')
                   .replace('"tinymodels:make"', '"tinymodels:make"'))
    import sys as _sys

    _sys.path.insert(0, str(project))
    try:
        code, _, err = cli(capsys, "build", "--config", str(bad), "-q")
    finally:
        _sys.path.remove(str(project))
    assert code == 1 and "weights_only=True" in err and err.count("\n") == 1


def test_help_works_without_heavy_imports():
    code = textwrap.dedent(
        """
        import sys, legocompile.cli as c
        try:
            c.main(["--help"])
        except SystemExit:
            pass
        heavy = [m for m in ("torch", "onnxruntime", "tensorrt") if m in sys.modules]
        print("HEAVY=" + ",".join(heavy))
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "usage: legocompile" in out
    assert out.strip().splitlines()[-1] == "HEAVY="
