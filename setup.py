"""Build configuration beyond pyproject.toml: the optional native optimizer (legocompile/optimize/_native_solver).

The C++ port of the selection solver (legocompile/runtime/cpp/src/solver.cpp and the two files it needs, plus the C
ABI in solver_capi.cpp) is compiled into a small shared library that legocompile/optimize/solver.py loads with
ctypes. It is built as a setuptools extension only for the compiler and the install location (it has no Python.h
glue), and it is optional: without a C++ compiler the install still succeeds and the optimizer runs its pure-Python
search. The flags are the C++ runtime's (CMakeLists.txt): C++17, -O2, no FMA contraction, no fast-math, so that
every rounding is Python's.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

_SRC = "legocompile/runtime/cpp/src/"
# The files the library is compiled from; legocompile/optimize/native_solver.py hashes the same list (SOURCES) and
# refuses a library built from other versions of them (an editable install after a `git pull`).
_SOURCES = ("solver.cpp", "problem.cpp", "pyfmt.cpp", "solver_capi.cpp",
            "solver.hpp", "problem.hpp", "pyfmt.hpp", "error.hpp")


def _source_hash() -> str:
    h = hashlib.sha256()
    for name in _SOURCES:
        h.update(name.encode() + b"\0" + (Path(__file__).resolve().parent / _SRC / name).read_bytes() + b"\0")
    return h.hexdigest()


setup(
    ext_modules=[
        Extension(
            "legocompile.optimize._native_solver",
            sources=[_SRC + name for name in ("solver.cpp", "problem.cpp", "pyfmt.cpp", "solver_capi.cpp")],
            language="c++",
            extra_compile_args=["-std=c++17", "-O2", "-g0", "-ffp-contract=off", "-fno-fast-math",
                                "-fvisibility=hidden"],
            define_macros=[("LC_SOLVER_SOURCE_HASH", f'"{_source_hash()}"')],
            optional=True,
        )
    ]
)
