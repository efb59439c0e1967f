"""The CLI on a user project: build, inspect, optimize, run (JSON interfaces), and one-line errors."""

from __future__ import annotations

import json
import shutil
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


# ----------------------------------------------------------------------------------------------------- a bundle is data
@pytest.fixture()
def eval_npz(tmp_path):
    """The project's evaluation split (the provider's x_test[:100], y_test[:100]) as an .npz."""
    import numpy as np

    from legocompile.examples.digits import load_splits

    s = load_splits()
    path = tmp_path / "eval.npz"
    np.savez(path, x=s.x_test[:100], y=s.y_test[:100])
    return path


def test_run_with_data_file_measures_the_same_accuracy_as_config(built, capsys, eval_npz):
    project, _ = built
    out_dir = str(project / "out")
    code, out, err = cli(capsys, "run", out_dir, "--data", str(eval_npz), "--runs", "5", "--json")
    assert code == 0, err
    by_file = json.loads(out)["measured"]
    code, out, err = cli(capsys, "run", out_dir, "--config", str(project / "legocompile.toml"), "--runs", "5",
                         "--json")
    assert code == 0, err
    assert by_file["accuracy"] == json.loads(out)["measured"]["accuracy"] > 0
    assert by_file["num_eval"] == 100


def test_run_without_data_measures_latency_only(built, capsys):
    project, _ = built
    code, out, err = cli(capsys, "run", str(project / "out"), "--runs", "5", "--json")
    assert code == 0, err
    m = json.loads(out)["measured"]
    assert m["accuracy"] is None and "not measured" in m["accuracy_note"] and m["latency_ms"] > 0
    code, out, err = cli(capsys, "run", str(project / "out"), "--runs", "5")
    assert code == 0, err
    assert "accuracy not measured (no evaluation data: pass --data FILE.npz or --config)" in " ".join(out.split())


def test_run_never_imports_what_a_bundle_names(built, capsys, tmp_path, monkeypatch):
    """A downloaded bundle naming a data provider (as old manifests did) must not get it imported or called."""
    project, _ = built
    bundle = tmp_path / "downloaded"
    shutil.copytree(project / "out", bundle)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["extra"] = {"data_provider": "evilmod:data"}
    (bundle / "manifest.json").write_text(json.dumps(doc))
    sentinel = tmp_path / "PWNED"
    (tmp_path / "evilmod.py").write_text(f"open({str(sentinel)!r}, 'w').write('x')\ndef data():\n    return None\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    code, out, err = cli(capsys, "run", str(bundle), "--runs", "3", "--json")
    assert code == 0, err
    assert json.loads(out)["measured"]["accuracy"] is None
    assert not sentinel.exists() and "evilmod" not in sys.modules


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": "X"}, "no array 'y' (--data needs arrays x and y; it has x)"),
        ({"inputs": "X", "y": "Y"}, "no array 'x' (--data needs arrays x and y; it has inputs, y)"),
        ({"x": "X[:, :, :16]", "y": "Y"}, "x has shape (100, 1, 16, 32); the bundle's input is (N, 1, 32, 32)"),
        ({"x": "X", "y": "Y[:50]"}, "y has shape (50,); it must hold one label per row of x (100,)"),
        ({"x": "X", "y": "OBJ"}, "holds object arrays, which are not read (no pickles)"),
        ("not an npz", "not a readable .npz file"),
        (None, "data file not found"),
    ],
)
def test_run_bad_data_file_is_one_line(built, capsys, tmp_path, arrays, message):
    import numpy as np

    project, _ = built
    path = tmp_path / "bad.npz"
    if isinstance(arrays, dict):
        X, Y = np.zeros((100, 1, 32, 32), np.float32), np.zeros(100, np.int64)  # noqa: N806
        OBJ = np.array([object()] * 100, dtype=object)  # noqa: N806
        np.savez(path, **{k: eval(v, {"X": X, "Y": Y, "OBJ": OBJ}) for k, v in arrays.items()})
    elif isinstance(arrays, str):
        path.write_text(arrays)
    code, out, err = cli(capsys, "run", str(project / "out"), "--data", str(path), "--runs", "3")
    assert code == 1 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_run_refuses_data_and_config_together(built, capsys, eval_npz):
    project, _ = built
    code, _, err = cli(capsys, "run", str(project / "out"), "--data", str(eval_npz), "--config",
                       str(project / "legocompile.toml"))
    assert code == 1 and "not both" in err


def test_pareto_writes_outside_the_bundle(built, capsys, tmp_path, monkeypatch):
    project, _ = built
    bundle = tmp_path / "my.bundle"
    shutil.copytree(project / "out", bundle)
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(capsys, "pareto", str(bundle), "--points", "6", "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["json"] == str(tmp_path / "my.bundle-pareto.json")
    assert doc["png"] == str(tmp_path / "my.bundle-pareto.png")
    assert (tmp_path / "my.bundle-pareto.json").is_file() and (tmp_path / "my.bundle-pareto.png").is_file()
    assert sorted(p.name for p in bundle.iterdir()) == sorted(p.name for p in (project / "out").iterdir())
    code, _, err = cli(capsys, "pareto", str(bundle), "--points", "6", "--out", str(tmp_path / "plots" / "front"))
    assert code == 0, err
    assert (tmp_path / "plots" / "front.json").is_file() and (tmp_path / "plots" / "front.png").is_file()
    assert cli(capsys, "verify", str(bundle))[0] == 0


def test_verify_a_built_bundle(built, capsys):
    project, _ = built
    code, out, err = cli(capsys, "verify", str(project / "out"))
    assert code == 0 and out == f"ok: {project / 'out'}\n" and err == ""


def test_build_refuses_to_replace_a_users_folder(built, capsys, tmp_path):
    project, _ = built
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = cli(capsys, "build", "--config", str(project / "legocompile.toml"), "--out", str(mine), "-q")
    assert code == 1 and "is not empty and is not a legocompile bundle" in err, err
    assert err.count("\n") == 1
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
