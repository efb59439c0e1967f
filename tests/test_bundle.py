"""Bundle integrity: checksums, schema version, atomic replacement."""

from __future__ import annotations

import json
import shutil

import pytest

from legocompile.bundle import read_bundle, write_bundle
from legocompile.errors import LegoCompileError


@pytest.fixture()
def copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle["path"], dst)
    return dst


def test_tampered_engine_is_refused(copy):
    m = read_bundle(copy)
    engine = copy / m.blocks[1].options[0].engine
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(LegoCompileError, match="checksum mismatch"):
        read_bundle(copy)
    read_bundle(copy, verify=False)  # an explicit opt-out still reads the manifest


def test_missing_engine_is_refused(copy):
    m = read_bundle(copy)
    (copy / m.blocks[0].options[-1].engine).unlink()
    with pytest.raises(LegoCompileError, match="engine file missing"):
        read_bundle(copy)


def test_schema_version_is_checked(copy):
    doc = json.loads((copy / "manifest.json").read_text())
    doc["schema_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(LegoCompileError, match="schema version 99 is not supported"):
        read_bundle(copy)


@pytest.mark.parametrize("content", ["{not json", "[]", json.dumps({"schema_version": 1})])
def test_broken_manifest(copy, content):
    (copy / "manifest.json").write_text(content)
    with pytest.raises(LegoCompileError):
        read_bundle(copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(LegoCompileError, match="bundle not found"):
        read_bundle(tmp_path / "nope")
    with pytest.raises(LegoCompileError, match="no manifest.json"):
        read_bundle(tmp_path)


def test_failed_write_keeps_the_previous_bundle(copy, tmp_path):
    """A write that dies half-way (here: a source file vanishes) leaves the old bundle whole and no leftovers."""
    before = read_bundle(copy)
    files = {o.engine: copy / o.engine for b in before.blocks for o in b.options}
    files["engines/extra/missing.onnx"] = tmp_path / "does-not-exist.onnx"
    with pytest.raises(FileNotFoundError):
        write_bundle(copy, before, files)
    assert read_bundle(copy) == before
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".bundle.")]


def test_rewrite_replaces_whole_bundle(copy, tmp_path):
    m = read_bundle(copy)
    staged = tmp_path / "staged"
    shutil.copytree(copy, staged)
    files = {o.engine: staged / o.engine for b in m.blocks for o in b.options}
    (copy / "stray.txt").write_text("from an older build")
    write_bundle(copy, m, files)
    assert read_bundle(copy) == m
    assert not (copy / "stray.txt").exists()
