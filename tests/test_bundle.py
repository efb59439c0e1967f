"""Bundle writing and reading: checksummed files, schema 2, safe replacement that never destroys a user's folder,
crash-safe swap, umask-respecting modes, and the verification API. Damaged bundles: test_bundle_damage.py."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import stat

import pytest
from bundle_factory import make_bundle, stage_sources

from legocompile.bundle import (
    SCHEMA_VERSION,
    Manifest,
    ManifestError,
    read_bundle,
    read_verified_bytes,
    verify_bundle,
    write_bundle,
)
from legocompile.bundle import writer as writer_mod
from legocompile.errors import LegoCompileError

DEAD_PID = 4_999_999  # above Linux's largest pid_max (2**22): no process has it


@pytest.fixture(params=["exchange", "two-renames"])
def swap_mode(request, monkeypatch):
    """Run a test with the atomic exchange (where the OS has it) and with the two-rename fallback."""
    if request.param == "two-renames":
        monkeypatch.setattr(writer_mod, "_exchange", lambda a, b: False)
    return request.param


def _exchange_supported(tmp_path) -> bool:
    a, b = tmp_path / "xa", tmp_path / "xb"
    a.mkdir()
    b.mkdir()
    try:
        return writer_mod._exchange(a, b)
    finally:
        a.rmdir()
        b.rmdir()


def _siblings(out):
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


# ------------------------------------------------------------------------------------------------------ writing
def test_write_lists_and_checksums_every_file(tmp_path):
    out = tmp_path / "bundle"
    m = make_bundle(out, tmp_path / "src")
    assert m.schema_version == SCHEMA_VERSION == 2
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == set(m.files) | {"manifest.json"}
    assert any(rel.startswith("onnx/") for rel in m.files) and any(rel.startswith("engines/") for rel in m.files)
    for rel, digest in m.files.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    for b in m.blocks:
        for o in b.options:
            assert m.files[o.engine] == o.sha256 and o.onnx in m.files
    assert verify_bundle(out) == []
    assert not _siblings(out)


def test_writer_sets_schema_and_files_whatever_the_caller_passed(tmp_path):
    manifest, files = stage_sources(tmp_path / "src")
    stale = dataclasses.replace(manifest, schema_version=1, files={"bogus": "0" * 64})
    write_bundle(tmp_path / "b", stale, files)
    m = read_bundle(tmp_path / "b")
    assert m.schema_version == SCHEMA_VERSION and "bogus" not in m.files and len(m.files) == len(files)


def test_new_fields_round_trip(tmp_path):
    m = make_bundle(tmp_path / "b", tmp_path / "src")
    o = m.blocks[0].option("s0", "int8")
    assert o.accuracy_gate == {"rel_l2": 0.001, "tolerance": 0.05} and o.excluded is None
    assert Manifest.from_json(json.loads(json.dumps(m.to_json()))) == m


def test_write_refuses_options_whose_files_are_not_given(tmp_path):
    manifest, files = stage_sources(tmp_path / "src")
    del files["onnx/b1/s0.onnx"]
    with pytest.raises(LegoCompileError, match="'onnx/b1/s0.onnx' is not among the bundle files"):
        write_bundle(tmp_path / "b", manifest, files)
    assert not (tmp_path / "b").exists()


def test_write_refuses_an_engine_changed_after_profiling(tmp_path):
    manifest, files = stage_sources(tmp_path / "src")
    files["engines/b0/s0-int8.onnx"].write_bytes(b"rebuilt differently")
    with pytest.raises(LegoCompileError, match="changed after it was profiled"):
        write_bundle(tmp_path / "b", manifest, files)
    assert not (tmp_path / "b").exists() and not _siblings(tmp_path / "b")


@pytest.mark.parametrize("rel", ["../x.onnx", "/abs.onnx", "a\\b.onnx", "C:/x.onnx", "a//b", "manifest.json"])
def test_write_refuses_unsafe_bundle_paths(tmp_path, rel):
    manifest, files = stage_sources(tmp_path / "src")
    files[rel] = next(iter(files.values()))
    with pytest.raises(LegoCompileError, match="cannot write"):
        write_bundle(tmp_path / "b", manifest, files)


# ------------------------------------------------------------------------------------------------------ replacing
@pytest.mark.parametrize("content", ["files", "non-bundle manifest", "bad json manifest", "nested"])
def test_a_users_folder_is_never_replaced(tmp_path, content):
    out = tmp_path / "mine"
    out.mkdir()
    if content == "files":
        (out / "thesis.tex").write_text("years of work")
    elif content == "non-bundle manifest":
        (out / "manifest.json").write_text('{"name": "my web app"}')
    elif content == "bad json manifest":
        (out / "manifest.json").write_text("{")
    else:
        (out / "sub").mkdir()
    before = sorted((p.relative_to(out).as_posix(), p.is_file() and p.read_bytes()) for p in out.rglob("*"))
    manifest, files = stage_sources(tmp_path / "src")
    with pytest.raises(LegoCompileError, match="is not empty and is not a legocompile bundle") as e:
        write_bundle(out, manifest, files)
    assert "\n" not in str(e.value)
    assert sorted((p.relative_to(out).as_posix(), p.is_file() and p.read_bytes()) for p in out.rglob("*")) == before
    assert not _siblings(out)


def test_a_file_in_the_way_is_refused(tmp_path):
    out = tmp_path / "report.pdf"
    out.write_bytes(b"%PDF")
    manifest, files = stage_sources(tmp_path / "src")
    with pytest.raises(LegoCompileError, match="exists and is not a folder"):
        write_bundle(out, manifest, files)
    assert out.read_bytes() == b"%PDF"


def test_an_empty_folder_becomes_the_bundle(tmp_path):
    out = tmp_path / "empty"
    out.mkdir()
    make_bundle(out, tmp_path / "src")
    assert verify_bundle(out) == [] and not _siblings(out)


def test_rewrite_replaces_the_whole_bundle(tmp_path, swap_mode):
    out = tmp_path / "bundle"
    make_bundle(out, tmp_path / "src1", tag="v1")
    (out / "stray.txt").write_text("from an older build")
    m2 = make_bundle(out, tmp_path / "src2", tag="v2")
    assert m2.model == "fake-v2" and verify_bundle(out) == []
    assert not (out / "stray.txt").exists()
    assert not _siblings(out)


def test_an_old_schema_bundle_can_be_replaced(tmp_path):
    out = tmp_path / "bundle"
    make_bundle(out, tmp_path / "src1", tag="v1")
    doc = json.loads((out / "manifest.json").read_text())
    doc["schema_version"] = 1
    (out / "manifest.json").write_text(json.dumps(doc))
    assert make_bundle(out, tmp_path / "src2", tag="v2").model == "fake-v2"


def test_failed_write_keeps_the_previous_bundle(tmp_path, swap_mode):
    """A write that dies while copying (a source vanished) leaves the old bundle whole and no leftovers."""
    out = tmp_path / "bundle"
    before = make_bundle(out, tmp_path / "src1", tag="v1")
    manifest, files = stage_sources(tmp_path / "src2", tag="v2")
    files["onnx/b1/s0.onnx"].unlink()
    with pytest.raises(FileNotFoundError):
        write_bundle(out, manifest, files)
    assert read_bundle(out) == before
    assert not _siblings(out)


def _fail_replace_onto(monkeypatch, out, times: int):
    """Make ``os.replace(..., out)`` raise ``times`` times (the rename that puts a bundle at ``out``)."""
    real = os.replace
    left = [times]

    def replace(src, dst, *a, **k):
        if os.fspath(dst) == os.fspath(out) and left[0] > 0:
            left[0] -= 1
            raise OSError("simulated crash")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


def test_crash_between_the_renames_rolls_back(tmp_path, monkeypatch):
    """The second rename fails once: the previous bundle is put back at ``out`` at once."""
    monkeypatch.setattr(writer_mod, "_exchange", lambda a, b: False)
    out = tmp_path / "bundle"
    before = make_bundle(out, tmp_path / "src1", tag="v1")
    manifest, files = stage_sources(tmp_path / "src2", tag="v2")
    _fail_replace_onto(monkeypatch, out, times=1)
    with pytest.raises(OSError, match="simulated crash"):
        write_bundle(out, manifest, files)
    assert read_bundle(out) == before and not _siblings(out)


def test_crash_between_the_renames_is_recovered_by_the_next_write(tmp_path, monkeypatch):
    """The process dies between the renames (the rollback fails too): ``out`` is missing, the old bundle sits in
    ``.bundle.<pid>.old``. The next write restores it first, so even a next write that fails leaves it in place."""
    monkeypatch.setattr(writer_mod, "_exchange", lambda a, b: False)
    out = tmp_path / "bundle"
    before = make_bundle(out, tmp_path / "src1", tag="v1")
    manifest, files = stage_sources(tmp_path / "src2", tag="v2")
    _fail_replace_onto(monkeypatch, out, times=2)
    with pytest.raises(OSError, match="simulated crash"):
        write_bundle(out, manifest, files)
    assert not out.exists()
    olds = [p for p in tmp_path.iterdir() if p.name.startswith(".bundle.") and p.name.endswith(".old")]
    assert len(olds) == 1
    os.rename(olds[0], tmp_path / f".bundle.{DEAD_PID}.old")  # as if left by a process that has since died
    with pytest.raises(LegoCompileError, match="bundle not found"):
        read_bundle(out)

    files["onnx/b0/s0.onnx"].unlink()  # the next write fails too...
    with pytest.raises(FileNotFoundError):
        write_bundle(out, manifest, files)
    assert read_bundle(out) == before and not _siblings(out)  # ...but the old bundle is back

    assert make_bundle(out, tmp_path / "src3", tag="v3").model == "fake-v3"
    assert not _siblings(out)


def test_exchange_keeps_a_bundle_at_out_at_every_moment(tmp_path, monkeypatch):
    """Where the OS swaps atomically, ``out`` is never renamed to or from: there is a bundle there throughout."""
    if not _exchange_supported(tmp_path):
        pytest.skip("no atomic rename exchange on this OS/file system")
    out = tmp_path / "bundle"
    make_bundle(out, tmp_path / "src1", tag="v1")
    real = os.replace

    def replace(src, dst, *a, **k):
        assert os.fspath(out) not in (os.fspath(src), os.fspath(dst)), f"{src} -> {dst}"
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)
    assert make_bundle(out, tmp_path / "src2", tag="v2").model == "fake-v2"
    assert not _siblings(out)


def test_only_provable_leftovers_are_deleted(tmp_path):
    out = tmp_path / "bundle"
    make_bundle(out, tmp_path / "src1", tag="v1")
    partial = tmp_path / f".bundle.{DEAD_PID}.tmp"  # a killed copy: carries the marker
    (partial / "engines").mkdir(parents=True)
    (partial / writer_mod.PARTIAL_MARKER).write_text("x")
    old = tmp_path / f".bundle.{DEAD_PID - 1}.old"  # an old bundle left aside
    shutil.copytree(out, old)
    users = tmp_path / f".bundle.{DEAD_PID - 2}.tmp"  # matches the name but is not ours
    users.mkdir()
    (users / "notes.txt").write_text("mine")
    running = tmp_path / f".bundle.{os.getppid()}.old"  # a bundle, but its writer may still be running
    shutil.copytree(out, running)
    make_bundle(out, tmp_path / "src2", tag="v2")
    assert not partial.exists() and not old.exists()
    assert (users / "notes.txt").read_text() == "mine"
    assert running.exists()


def test_a_missing_out_is_restored_from_the_newest_old_bundle(tmp_path):
    out = tmp_path / "bundle"
    make_bundle(out, tmp_path / "src1", tag="v1")
    shutil.copytree(out, tmp_path / f".bundle.{DEAD_PID - 1}.old")
    doc = json.loads((out / "manifest.json").read_text())
    doc["model"] = "older"
    (tmp_path / f".bundle.{DEAD_PID - 1}.old" / "manifest.json").write_text(json.dumps(doc))
    os.utime(tmp_path / f".bundle.{DEAD_PID - 1}.old" / "manifest.json", (1, 1))
    os.rename(out, tmp_path / f".bundle.{DEAD_PID}.old")
    manifest, files = stage_sources(tmp_path / "src2", tag="v2")
    files["onnx/b0/s0.onnx"].unlink()
    with pytest.raises(FileNotFoundError):
        write_bundle(out, manifest, files)
    assert read_bundle(out).model == "fake-v1" and not _siblings(out)


# ------------------------------------------------------------------------------------------------------ modes
@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_bundle_files_get_umask_modes(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "bundle"
        make_bundle(out, tmp_path / "src")
    finally:
        os.umask(old)
    for p in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o777 if p.is_dir() else 0o666) & ~umask, (p, oct(mode))


# ------------------------------------------------------------------------------------------------------ verification
def test_read_verified_bytes(tmp_path):
    out = tmp_path / "bundle"
    m = make_bundle(out, tmp_path / "src")
    o = m.blocks[1].options[1]
    assert read_verified_bytes(out, o.engine, o.sha256) == (out / o.engine).read_bytes()
    with pytest.raises(LegoCompileError, match=f"checksum mismatch for {o.engine}"):
        read_verified_bytes(out, o.engine, "0" * 64)
    with pytest.raises(LegoCompileError, match="unsafe path '../x' in manifest: contains '..'"):
        read_verified_bytes(out, "../x", o.sha256)
    with pytest.raises(LegoCompileError, match="file missing: engines/nope"):
        read_verified_bytes(out, "engines/nope", o.sha256)
    outside = tmp_path / "outside.bin"
    outside.write_bytes((out / o.engine).read_bytes())
    (out / "engines" / "link").symlink_to(outside)
    with pytest.raises(LegoCompileError, match="leads outside the bundle"):
        read_verified_bytes(out, "engines/link", o.sha256)


def test_symlinks_inside_the_bundle_are_fine(tmp_path):
    out = tmp_path / "bundle"
    m = make_bundle(out, tmp_path / "src")
    o = m.blocks[0].options[0]
    (out / "engines" / "alias").symlink_to(out / o.engine)
    assert read_verified_bytes(out, "engines/alias", o.sha256) == (out / o.engine).read_bytes()


def test_verify_reports_every_problem(tmp_path):
    out = tmp_path / "bundle"
    m = make_bundle(out, tmp_path / "src")
    (out / m.blocks[0].options[0].engine).write_bytes(b"changed")
    (out / m.blocks[1].options[1].onnx).unlink()
    (out / "README.txt").write_text("unlisted files are ignored")
    problems = verify_bundle(out)
    assert problems == [
        f"{out}: checksum mismatch for engines/b0/s0-fp32.onnx (file changed after the build); rebuild the bundle",
        f"{out}: file missing: onnx/b1/s0.onnx",
    ]
    with pytest.raises(LegoCompileError) as e:
        read_bundle(out)
    assert str(e.value) == problems[0]
    assert read_bundle(out, verify=False) == m


def test_from_json_never_raises_anything_but_manifest_errors(tmp_path):
    """Every key of a real manifest, deleted or replaced by a value of each JSON type: a ManifestError or a valid
    manifest, never a KeyError/TypeError/AttributeError."""
    doc = make_bundle(tmp_path / "b", tmp_path / "src").to_json()
    doc = json.loads(json.dumps(doc))

    def paths(node, prefix=()):
        if isinstance(node, dict):
            for k, v in node.items():
                yield prefix + (k,)
                yield from paths(v, prefix + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield prefix + (i,)
                yield from paths(v, prefix + (i,))

    checked = 0
    for path in list(paths(doc)):
        for replacement in (None, "x", 1.5, 7, True, [], {}, [1], {"a": 1}, "DELETE"):
            d = json.loads(json.dumps(doc))
            parent = d
            for k in path[:-1]:
                parent = parent[k]
            if replacement == "DELETE":
                del parent[path[-1]]
            else:
                parent[path[-1]] = replacement
            try:
                Manifest.from_json(d)
            except ManifestError as e:
                assert "\n" not in str(e)
            checked += 1
    assert checked > 500


# ------------------------------------------------------------------------------------------------------ real bundle
@pytest.fixture()
def copy(tiny_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle["path"], dst)
    return dst


def test_a_built_bundle_lists_every_file(copy):
    m = read_bundle(copy)
    on_disk = {p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()}
    assert on_disk == set(m.files) | {"manifest.json"}
    assert {o.onnx for b in m.blocks for o in b.options} <= set(m.files)
    assert "data_provider" not in m.extra
    assert verify_bundle(copy) == []


def test_tampered_engine_is_refused(copy):
    m = read_bundle(copy)
    engine = copy / m.blocks[1].options[0].engine
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(LegoCompileError, match="checksum mismatch"):
        read_bundle(copy)
    read_bundle(copy, verify=False)  # an explicit opt-out still reads the manifest
