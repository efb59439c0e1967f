"""legocompile.toml validation: every bad field gives one line naming it."""

from __future__ import annotations

import pytest

from legocompile.config import load_config
from legocompile.errors import LegoCompileError

GOOD = """
[model]
factory = "mymodels:make"
input_shape = [1, 1, 32, 32]

[data]
provider = "mymodels:data"
"""


def write(tmp_path, text):
    p = tmp_path / "legocompile.toml"
    p.write_text(text)
    return p


def test_defaults(tmp_path):
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.model.name == "make"
    assert cfg.build.precisions == ("fp32", "int8")
    assert cfg.blocks.cut == "auto" and cfg.blocks.max_blocks == 8
    assert cfg.build.out == (tmp_path / "legocompile-out").resolve()
    assert cfg.calibration.method == "minmax" and cfg.profile.runs >= 50


def test_fp32_is_always_built_first(tmp_path):
    cfg = load_config(write(tmp_path, GOOD + '[build]\nprecisions = ["int8", "fp16"]\n'))
    assert cfg.build.precisions == ("fp32", "fp16", "int8")


@pytest.mark.parametrize(
    "extra, field",
    [
        ('[build]\nprecisions = ["fp8"]\n', "precisions"),
        ('[build]\nbackend = "tvm"\n', "[build].backend"),
        ("[profile]\nruns = 10\n", "[profile].runs"),
        ("[profile]\nwarmup = -1\n", "[profile].warmup"),
        ("[profile]\nframe_gap_ms = -1\n", "[profile].frame_gap_ms"),
        ('[profile]\nframe_gap_ms = "33"\n', "[profile].frame_gap_ms"),
        ("[profile]\nframe_gap_ms = 5000\n", "[profile].frame_gap_ms"),
        ('[calibration]\nmethod = "kl"\n', "[calibration].method"),
        ("[calibration]\npercentile = 150\n", "[calibration].percentile"),
        ('[blocks]\ncut = "some"\n', "[blocks].cut"),
        ("[blocks]\ncut = []\n", "[blocks].cut"),
        ("[blocks]\nmax_blocks = 0\n", "[blocks].max_blocks"),
        ("[blocks]\nmaxblocks = 3\n", "[blocks].maxblocks"),
        ("[deploy]\nx = 1\n", "[deploy]"),
    ],
)
def test_bad_fields_are_named(tmp_path, extra, field):
    with pytest.raises(LegoCompileError) as e:
        load_config(write(tmp_path, GOOD + extra))
    assert field in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize(
    "text, field",
    [
        (GOOD.replace('factory = "mymodels:make"', 'factory = "mymodels.make"'), "[model].factory"),
        (GOOD.replace("input_shape = [1, 1, 32, 32]", 'input_shape = "1x1x32x32"'), "[model].input_shape"),
        (GOOD.replace("input_shape = [1, 1, 32, 32]", "input_shape = [1, 0, 32]"), "[model].input_shape"),
        (GOOD.replace('provider = "mymodels:data"', ""), "[data].provider"),
        (GOOD + '[model.extra]\n', "[model].extra"),
        (GOOD.replace("[model]", '[model]\nweights = "missing.safetensors"'), "[model].weights"),
        ("not = [valid", "not valid TOML"),
    ],
)
def test_bad_model_and_data(tmp_path, text, field):
    with pytest.raises(LegoCompileError) as e:
        load_config(write(tmp_path, text))
    assert field in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(LegoCompileError, match="project file not found"):
        load_config(tmp_path / "nope.toml")


def test_variants_section(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"")
    cfg = load_config(write(tmp_path, GOOD + """
[variants]
sparsities = [0.8, 0.4]
epochs = 3

[[variants.external]]
block = "layer2.1"
name = "legodnn-0.5"
factory = "theirs:make"
weights = "w.safetensors"
sparsity = 0.5
"""))
    assert cfg.variants.sparsities == (0.0, 0.4, 0.8)  # the original is always a variant
    assert cfg.variants.epochs == 3
    (ext,) = cfg.variants.external
    assert ext.block == "layer2.1" and ext.sparsity == 0.5 and ext.weights == (tmp_path / "w.safetensors").resolve()


@pytest.mark.parametrize(
    "extra, field",
    [
        ("[variants]\nsparsities = [1.0]\n", "[variants].sparsities"),
        ("[variants]\nsparsities = []\n", "[variants].sparsities"),
        ("[variants]\nlr = 0\n", "[variants].lr"),
        ("[variants]\nval_fraction = 1.5\n", "[variants].val_fraction"),
        ('[[variants.external]]\nblock = "b"\nname = "n"\nfactory = "x:y"\nweights = "nope.pt"\n',
         "[variants.external.0].weights"),
        ('[[variants.external]]\nname = "n"\nfactory = "x:y"\nweights = "legocompile.toml"\n',
         "[variants.external.0].block"),
    ],
)
def test_bad_variants(tmp_path, extra, field):
    with pytest.raises(LegoCompileError) as e:
        load_config(write(tmp_path, GOOD + extra))
    assert field in str(e.value)


def test_frame_gap_is_read_and_recorded_only_when_set(tmp_path):
    from legocompile.config import ProfileConfig

    cfg = load_config(write(tmp_path, GOOD + "[profile]\nframe_gap_ms = 33\n"))
    assert cfg.profile.frame_gap_ms == 33.0 and cfg.profile.to_json()["frame_gap_ms"] == 33.0
    assert "frame_gap_ms" not in ProfileConfig().to_json()  # bundles profiled back to back read as before
    with pytest.raises(LegoCompileError, match="frame_gap_ms") as e:
        ProfileConfig(frame_gap_ms=float("nan"))
    assert "\n" not in str(e.value)
