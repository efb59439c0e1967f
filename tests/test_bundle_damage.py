"""Damaged bundles give one stable, one-line error each.

``DAMAGES`` is the table of damages and the exact message each must produce (``{root}`` = the bundle folder).
It is meant to be reused to check that the C++ runtime reports the same errors: apply ``damage(root)`` to a fresh
synthetic bundle (``bundle_factory.make_bundle``), then compare the runtime's message with ``message``.
``prefix=True`` marks messages whose tail comes from a JSON parser and differs between implementations.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
from bundle_factory import make_bundle

from legocompile.bundle import read_bundle, verify_bundle
from legocompile.cli import main
from legocompile.errors import LegoCompileError

ENGINE = "engines/b0/s0-int8.onnx"  # the option blocks[0].options[1]
OTHER = "engines/b1/s0-fp32.onnx"  # the option blocks[1].options[0]
ONNX = "onnx/b1/s0.onnx"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _edit(root: Path, change: Callable[[dict], None]) -> None:
    doc = json.loads((root / "manifest.json").read_text())
    change(doc)
    (root / "manifest.json").write_text(json.dumps(doc, indent=2))


def _repath(root: Path, new: str) -> None:
    """Point ENGINE's option (and its files entry) at ``new``."""

    def change(doc):
        doc["files"][new] = doc["files"].pop(ENGINE)
        doc["blocks"][0]["options"][1]["engine"] = new

    _edit(root, change)


def _symlink_out(root: Path) -> None:
    """Replace ENGINE by a symlink to an identical file outside the bundle (the checksum would match)."""
    outside = root.parent / "outside.onnx"
    shutil.copyfile(root / ENGINE, outside)
    (root / ENGINE).unlink()
    (root / ENGINE).symlink_to(outside)


def _symlink_dir_out(root: Path) -> None:
    outside = root.parent / "outside-dir"
    shutil.copytree(root / "engines" / "b1", outside)
    shutil.rmtree(root / "engines" / "b1")
    (root / "engines" / "b1").symlink_to(outside, target_is_directory=True)


def _fifo(root: Path) -> None:
    (root / ENGINE).unlink()
    os.mkfifo(root / ENGINE)


def _set(path: tuple, value) -> Callable[[Path], None]:
    def change(doc):
        node = doc
        for k in path[:-1]:
            node = node[k]
        if value is _DELETE:
            del node[path[-1]]
        else:
            node[path[-1]] = value

    return lambda root: _edit(root, change)


_DELETE = object()
MANIFEST_ERR = "{root}/manifest.json: malformed manifest: "


@dataclass(frozen=True)
class Damage:
    name: str
    damage: Callable[[Path], None]
    message: str
    prefix: bool = False  # the message's tail is parser-specific


DAMAGES = [
    Damage("truncated manifest",
           lambda r: (r / "manifest.json").write_bytes((r / "manifest.json").read_bytes()[:300]),
           "{root}/manifest.json: not valid JSON (", prefix=True),
    Damage("empty manifest", lambda r: (r / "manifest.json").write_bytes(b""),
           "{root}/manifest.json: not valid JSON (", prefix=True),
    Damage("manifest not an object", lambda r: (r / "manifest.json").write_text("[]"),
           MANIFEST_ERR + "not a JSON object"),
    Damage("no manifest", lambda r: (r / "manifest.json").unlink(),
           "{root} is not a legocompile bundle (no manifest.json)"),
    Damage("flipped byte in an engine", lambda r: _flip(r / ENGINE),
           "{root}: checksum mismatch for " + ENGINE + " (file changed after the build); rebuild the bundle"),
    Damage("flipped byte in an onnx file", lambda r: _flip(r / ONNX),
           "{root}: checksum mismatch for " + ONNX + " (file changed after the build); rebuild the bundle"),
    Damage("missing engine", lambda r: (r / OTHER).unlink(), "{root}: file missing: " + OTHER),
    Damage("missing onnx file", lambda r: (r / ONNX).unlink(), "{root}: file missing: " + ONNX),
    Damage("engine is a fifo", _fifo, "{root}: not a regular file: " + ENGINE),
    Damage("'..' path", lambda r: _repath(r, "engines/../../evil.onnx"),
           "{root}: unsafe path 'engines/../../evil.onnx' in manifest: contains '..'"),
    Damage("absolute path", lambda r: _repath(r, "/etc/passwd"),
           "{root}: unsafe path '/etc/passwd' in manifest: absolute path"),
    Damage("backslash path", lambda r: _repath(r, "engines\\b0\\x.onnx"),
           "{root}: unsafe path 'engines\\b0\\x.onnx' in manifest: contains a backslash"),
    Damage("drive letter", lambda r: _repath(r, "C:/evil.onnx"),
           "{root}: unsafe path 'C:/evil.onnx' in manifest: starts with a drive letter"),
    Damage("empty path component", lambda r: _repath(r, "engines//b0.onnx"),
           "{root}: unsafe path 'engines//b0.onnx' in manifest: has an empty or '.' component"),
    Damage("unsafe onnx path", _set(("blocks", 1, "options", 0, "onnx"), "../../x.onnx"),
           "{root}: unsafe path '../../x.onnx' in manifest: contains '..'"),
    Damage("symlink out of the bundle", _symlink_out,
           "{root}: unsafe path '" + ENGINE + "' in manifest: leads outside the bundle (symlink)"),
    Damage("symlinked folder out of the bundle", _symlink_dir_out,
           "{root}: unsafe path 'engines/b1/s0-fp32.onnx' in manifest: leads outside the bundle (symlink)"),
    Damage("future schema", _set(("schema_version",), 3),
           "{root}: bundle schema version 3 is not supported (this legocompile reads 2); upgrade legocompile to "
           "read it"),
    Damage("schema 1", _set(("schema_version",), 1),
           "{root}: bundle schema version 1 is not supported (this legocompile reads 2); rebuild the bundle with "
           "this version"),
    Damage("no schema version", _set(("schema_version",), _DELETE),
           "{root}: bundle schema version None is not supported (this legocompile reads 2); rebuild the bundle "
           "with this version"),
    Damage("wrong type", _set(("blocks", 0, "options", 0, "latency_ms"), "fast"),
           MANIFEST_ERR + "manifest.blocks[0].options[0].latency_ms: expected a number, got 'fast'"),
    Damage("missing key", _set(("blocks", 1, "options", 1, "sha256"), _DELETE),
           MANIFEST_ERR + "manifest.blocks[1].options[1]: missing key 'sha256'"),
    Damage("unknown key", _set(("blocks", 0, "run_me"), "os:system"),
           MANIFEST_ERR + "manifest.blocks[0]: unknown key 'run_me'"),
    Damage("files not an object", _set(("files",), ["a"]),
           MANIFEST_ERR + "manifest.files: expected an object, got ['a']"),
    Damage("engine not listed in files", _set(("files", ENGINE), _DELETE),
           MANIFEST_ERR + "b0 s0/int8: engine '" + ENGINE + "' is not listed in files"),
    Damage("option sha256 differs from files", _set(("blocks", 0, "options", 1, "sha256"), "ab" * 32),
           MANIFEST_ERR + "b0 s0/int8: sha256 differs from files['" + ENGINE + "']"),
    Damage("several outputs on an interior block",
           _set(("blocks", 0, "extra_outputs"), [{"name": "y1", "shape": [1, 4], "dtype": "float32"}]),
           MANIFEST_ERR + "b0: only the last block may have several outputs (block boundaries are single tensors)"),
    Damage("extra outputs not a list", _set(("blocks", 1, "extra_outputs"), "y1"),
           MANIFEST_ERR + "manifest.blocks[1].extra_outputs: expected a list, got 'y1'"),
]


@pytest.fixture()
def bundle(tmp_path):
    root = tmp_path / "bundle"
    make_bundle(root, tmp_path / "src")
    return root


def _expect(d: Damage, root: Path, message: str) -> None:
    want = d.message.format(root=root)
    assert "\n" not in message
    if d.prefix:
        assert message.startswith(want), message
    else:
        assert message == want


@pytest.mark.parametrize("d", DAMAGES, ids=[d.name for d in DAMAGES])
def test_damage_is_one_stable_line(bundle, d, capsys):
    d.damage(bundle)
    with pytest.raises(LegoCompileError) as e:
        read_bundle(bundle)
    _expect(d, bundle, str(e.value))
    assert verify_bundle(bundle) == [str(e.value)]

    assert main(["verify", str(bundle)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(e.value)]
    assert err == f"legocompile: error: {bundle}: verification failed (1 problem)\n"

    assert main(["inspect", str(bundle)]) == 1
    out, err = capsys.readouterr()
    assert err == f"legocompile: error: {e.value}\n" and "Traceback" not in err


@pytest.mark.parametrize("d", [d for d in DAMAGES if "schema" in d.name or "path" in d.name or "symlink" in d.name
                               or "manifest" in d.name or "key" in d.name or "type" in d.name],
                         ids=lambda d: d.name)
def test_structural_damage_is_refused_even_without_verify(bundle, d):
    """Only checksums are skipped by ``verify=False``: schema, types and paths are always checked."""
    d.damage(bundle)
    with pytest.raises(LegoCompileError) as e:
        read_bundle(bundle, verify=False)
    _expect(d, bundle, str(e.value))


def test_a_whole_bundle_verifies(bundle, capsys):
    assert verify_bundle(bundle) == []
    assert main(["verify", str(bundle)]) == 0
    out, err = capsys.readouterr()
    assert out == f"ok: {bundle}\n" and err == ""
    assert main(["verify", str(bundle), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"bundle": str(bundle), "ok": True, "problems": []}


def test_verify_lists_each_problem_on_its_own_line(bundle, capsys):
    _flip(bundle / ENGINE)
    (bundle / ONNX).unlink()
    assert main(["verify", str(bundle)]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{bundle}: checksum mismatch for {ENGINE} (file changed after the build); rebuild the bundle",
        f"{bundle}: file missing: {ONNX}",
    ]
    assert err == f"legocompile: error: {bundle}: verification failed (2 problems)\n"


def test_verify_of_no_bundle(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "nope")]) == 1
    out, _ = capsys.readouterr()
    assert out == f"bundle not found: {tmp_path / 'nope'}\n"
