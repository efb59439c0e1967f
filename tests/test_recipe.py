"""The int8 recipe is a pure function of the CPU: u8s8 only where it cannot saturate."""

from __future__ import annotations

from pathlib import Path

import pytest

from calibration.recipe import DEFAULT_WITHOUT_VNNI, FORMATS, RECIPES, choose_recipe, host_cpu_flags, host_recipe
from legocompile.errors import LegoCompileError

AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512_NO_VNNI = AVX2 | {"avx512f", "avx512bw"}


@pytest.mark.parametrize("flags", [AVX2 | {"avx512_vnni"}, AVX2 | {"avx_vnni"}, AVX2 | {"amx_int8"}])
def test_vnni_keeps_u8s8(flags):
    recipe, reason = choose_recipe("auto", machine="x86_64", cpu_flags=frozenset(flags))
    assert recipe.name == "u8s8" and "no saturation" in reason


@pytest.mark.parametrize("flags", [AVX2, AVX512_NO_VNNI, frozenset()])
def test_x86_without_vnni_avoids_u8s8(flags):
    recipe, reason = choose_recipe("auto", machine="x86_64", cpu_flags=flags)
    assert recipe.name == DEFAULT_WITHOUT_VNNI != "u8s8" and "saturates" in reason
    assert choose_recipe("auto", machine="AMD64", cpu_flags=flags)[0].name == DEFAULT_WITHOUT_VNNI


def test_arm_keeps_u8s8():
    assert choose_recipe("auto", machine="aarch64", cpu_flags=frozenset({"asimd", "asimddp"}))[0].name == "u8s8"


@pytest.mark.parametrize("name", [f for f in FORMATS if f != "auto"])
def test_a_forced_recipe_wins_on_any_cpu(name):
    for machine, flags in (("x86_64", AVX2), ("x86_64", AVX2 | {"avx512_vnni"}), ("aarch64", frozenset())):
        recipe, reason = choose_recipe(name, machine=machine, cpu_flags=flags)
        assert recipe == RECIPES[name] and "requested" in reason


def test_unknown_recipe_is_a_one_line_error():
    with pytest.raises(LegoCompileError, match="unknown int8 format 's4s4'; choose from auto, u8s8"):
        choose_recipe("s4s4", machine="x86_64", cpu_flags=AVX2)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path: Path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_vnni\n\nprocessor\t: 1\n")
    assert host_cpu_flags(info) == frozenset({"fpu", "avx2", "avx512_vnni"})
    assert host_cpu_flags(tmp_path / "missing") == frozenset()


def test_this_host_gets_a_recipe_that_matches_its_flags():
    recipe, _ = host_recipe()
    flags = host_cpu_flags()
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & flags:
        assert recipe.name == "u8s8"
    elif "avx2" in flags:
        assert recipe.name == DEFAULT_WITHOUT_VNNI
