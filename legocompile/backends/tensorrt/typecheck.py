"""Type-check this backend with mypy against the TensorRT type stubs (``tensorrt-stubs``), without TensorRT.

``python -m legocompile.backends.tensorrt.typecheck`` runs ``python -m mypy`` over this folder with the folder's
``mypy.ini`` and exits with mypy's status. CI installs the stubs with ``pip install --no-deps
tensorrt-stubs==10.13.0.35.1``: the package declares ``tensorrt==10.13.0.35`` and ``tensorrt-cu12-bindings`` as
dependencies, which pull NVIDIA's wheels (or fail where pypi.nvidia.com cannot be reached).

Three defects of ``tensorrt-stubs`` 10.13.0.35.1 stop mypy from using it as installed, and this module works
around them without touching site-packages:

* Its ``tensorrt/`` and ``tensorrt_bindings/`` folders have no ``py.typed`` marker, so mypy skips them
  ("module is installed, but missing library stubs or py.typed marker") and every TensorRT name becomes ``Any``:
  the check would pass vacuously.
* ``tensorrt_bindings/tensorrt.pyi`` is not valid Python in five places, all in plugin and layer APIs this backend
  never calls: parameters named ``in`` (a keyword) and a parameter without a default after one with a default
  (``INetworkDefinition.add_scale_nd``). mypy stops at syntax errors even in ignored modules.
* Each stub module defines ``bool: DataType`` (TensorRT's ``trt.bool`` data-type alias), which shadows the builtin
  in every annotation of that module: every ``-> bool`` and ``: bool`` would be an invalid type, i.e. ``Any``.

:func:`prepare_stubs` copies the stub files into a folder of our own, repairing only the lines that do not parse
(a keyword parameter name gets a trailing ``_``; parameters after a defaulted one get ``= ...``) and spelling the
builtin ``builtins.bool`` wherever the module shadows it (:func:`unshadow_builtin_bool`; ``trt.bool`` itself stays),
and :func:`run_mypy` puts that folder on ``MYPYPATH``. Everything else is copied unchanged; a fixed stub release is
copied verbatim.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import keyword
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

STUBS_DISTRIBUTION = "tensorrt-stubs"
STUB_PACKAGES = ("tensorrt", "tensorrt_bindings")
CONFIG = Path(__file__).with_name("mypy.ini")
BACKEND_DIR = Path(__file__).parent
REPO_ROOT = BACKEND_DIR.parents[2]

_KEYWORD_PARAM = re.compile(r"([(,]\s*)(" + "|".join(sorted(keyword.kwlist, key=len, reverse=True)) + r")(\s*:)")


def stubs_installed() -> str | None:
    """The installed ``tensorrt-stubs`` version, or None."""
    try:
        return importlib.metadata.version(STUBS_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def mypy_installed() -> bool:
    return importlib.util.find_spec("mypy") is not None


def _stub_files() -> list[tuple[str, Path]]:
    """(path relative to site-packages, absolute path) of every ``.pyi`` the stubs distribution installed."""
    dist = importlib.metadata.distribution(STUBS_DISTRIBUTION)
    out = []
    for entry in dist.files or ():
        rel = str(entry)
        if rel.endswith(".pyi") and rel.split("/", 1)[0] in STUB_PACKAGES:
            out.append((rel, Path(str(entry.locate()))))
    return out


def _split_params(params: str) -> list[str]:
    """Splits a parameter list at top-level commas (brackets nest; stub defaults hold no strings with commas)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(params):
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(params[start:i])
            start = i + 1
    parts.append(params[start:])
    return parts


def _default_after_default(line: str) -> str:
    """Gives ``= ...`` to every parameter that follows a defaulted one on a one-line ``def``."""
    head, sep, rest = line.partition("(")
    depth, close = 1, -1
    for i, ch in enumerate(rest):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            close = i
            break
    if not sep or close < 0:
        return line
    params, tail = rest[:close], rest[close:]
    fixed, seen_default = [], False
    for param in _split_params(params):
        bare = param.strip()
        if bare.startswith("*"):
            seen_default = False
        elif "=" in bare:
            seen_default = True
        elif seen_default and bare:
            param = param + " = ..."
        fixed.append(param)
    return head + sep + ",".join(fixed) + tail


def repair_stub_source(source: str, *, max_fixes: int = 200) -> tuple[str, list[int]]:
    """Returns ``source`` with the lines that stop it parsing repaired, and the (1-based) numbers of those lines.

    Raises:
        SyntaxError: If a syntax error is not one of the two known kinds.
    """
    lines = source.splitlines(keepends=True)
    fixed: list[int] = []
    for _ in range(max_fixes):
        try:
            ast.parse("".join(lines))
            return "".join(lines), fixed
        except SyntaxError as error:
            number = error.lineno or 0
            if not 1 <= number <= len(lines):
                raise
            old = lines[number - 1]
            new = _KEYWORD_PARAM.sub(lambda m: m.group(1) + m.group(2) + "_" + m.group(3), old)
            if new == old:
                new = _default_after_default(old)
            if new == old:
                raise
            lines[number - 1] = new
            fixed.append(number)
    raise SyntaxError(f"more than {max_fixes} lines needed repair")


_SHADOWING_BOOL = re.compile(r"^bool\s*:", re.MULTILINE)
_BOOL_WORD = re.compile(r"(?<![\w.'\"])bool(?![\w'\"])")  # not in names, attributes or strings


def unshadow_builtin_bool(source: str) -> tuple[str, int]:
    """If the module defines a top-level ``bool``, spells every other use ``builtins.bool``; returns the count."""
    if not _SHADOWING_BOOL.search(source):
        return source, 0
    lines: list[str] = []
    count = at = 0
    for line in source.splitlines(keepends=True):
        if line.startswith("from __future__ import"):
            at = len(lines) + 1  # ``import builtins`` goes after the __future__ imports
        elif not _SHADOWING_BOOL.match(line):
            line, n = _BOOL_WORD.subn("builtins.bool", line)
            count += n
        lines.append(line)
    lines.insert(at, "import builtins\n")
    return "".join(lines), count


def prepare_stubs(dest: Path) -> Path:
    """Writes a parseable copy of the installed TensorRT stubs under ``dest`` (to use as ``MYPYPATH``).

    Raises:
        RuntimeError: If ``tensorrt-stubs`` is not installed.
    """
    if stubs_installed() is None:
        raise RuntimeError(f"{STUBS_DISTRIBUTION} is not installed (pip install --no-deps {STUBS_DISTRIBUTION})")
    dest.mkdir(parents=True, exist_ok=True)
    for rel, path in _stub_files():
        text, _ = repair_stub_source(path.read_text(encoding="utf-8"))
        text, _ = unshadow_builtin_bool(text)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    return dest


def run_mypy(
    targets: list[str] | None = None, *, stubs_dir: Path | None = None, cache_dir: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m mypy`` with this folder's config over ``targets`` (default: this folder), from the repo root."""
    with tempfile.TemporaryDirectory(prefix="legocompile-trt-stubs-") as tmp:
        stubs = stubs_dir if stubs_dir is not None else prepare_stubs(Path(tmp) / "stubs")
        env = dict(os.environ, MYPYPATH=str(stubs))
        command = [sys.executable, "-m", "mypy", "--config-file", str(CONFIG)]
        command += ["--cache-dir", str(cache_dir if cache_dir is not None else Path(tmp) / "cache")]
        command += targets if targets is not None else [str(BACKEND_DIR.relative_to(REPO_ROOT))]
        return subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=False)


def main() -> int:
    if not mypy_installed() or stubs_installed() is None:
        print(f"needs mypy and {STUBS_DISTRIBUTION} (pip install mypy && pip install --no-deps {STUBS_DISTRIBUTION})")
        return 2
    result = run_mypy()
    sys.stdout.write(result.stdout)
    sys.stderr.write(result.stderr)
    return result.returncode


if __name__ == "__main__":
    raise SystemExit(main())
