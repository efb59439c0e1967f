"""Atomic writes: whole files only, no leftovers, and ordinary (umask-respecting) modes, not mkstemp's 0600."""

from __future__ import annotations

import os
import stat

import pytest

from legocompile.workspace import atomic_produce, atomic_write_bytes, atomic_write_json


def _mode(p) -> int:
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX modes")
@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_writes_get_the_umask_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"abc")
        atomic_write_json(tmp_path / "sub" / "b.json", {"k": 1})
        atomic_produce(tmp_path / "c.png", lambda tmp: tmp.write_bytes(b"png"))
    finally:
        os.umask(old)
    for name in ("a.bin", "sub/b.json", "c.png"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    assert _mode(tmp_path / "sub") == 0o777 & ~umask


def test_atomic_writes_replace_whole_and_leave_nothing(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"old")
    atomic_write_bytes(tmp_path / "a.bin", b"new")
    assert (tmp_path / "a.bin").read_bytes() == b"new"

    def fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("produce failed")

    with pytest.raises(RuntimeError):
        atomic_produce(tmp_path / "a.bin", fail)
    assert (tmp_path / "a.bin").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_atomic_produce_hands_an_existing_empty_file(tmp_path):
    seen = []
    atomic_produce(tmp_path / "x.onnx", lambda tmp: seen.append((tmp.exists(), tmp.stat().st_size, tmp.suffix)))
    assert seen == [(True, 0, ".onnx")]
