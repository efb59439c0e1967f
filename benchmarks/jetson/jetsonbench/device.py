"""The device record: what a result was measured on.

Every field comes from the device itself; on a host that lacks a source the field is **absent** (never guessed),
and ``unavailable[field]`` says why. The parsers are pure functions of the text a tool prints or a file holds, so
they are tested on sample texts; :func:`collect` does the reading and the running, through a :class:`Host` that
tests replace.

Sources:

* Jetson model: ``/proc/device-tree/model`` (NUL-terminated, e.g. ``NVIDIA Jetson AGX Orin Developer Kit``).
* L4T: ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.4, GCID: ..., BOARD: ..., EABI: ..., DATE: ...``).
* JetPack: the ``nvidia-jetpack`` meta package (``dpkg-query``), only when installed. JetPack is *not* derived from
  the L4T release.
* Power mode: ``nvpmodel -q`` (``NV Power Mode: MAXN`` then the mode number).
* Clocks: ``jetson_clocks --show`` (needs root: tried as is, then with ``sudo -n``, which never prompts). On when
  every listed CPU and the GPU have MinFreq == MaxFreq, which is what ``jetson_clocks`` sets (jetson_stats reads
  it the same way).
* CUDA: ``/usr/local/cuda/version.json`` (11+), ``/usr/local/cuda/version.txt`` (10.x), or ``nvcc --version``.
* TensorRT: the ``tensorrt`` Python package when a real one imports (not the type stubs), else ``dpkg-query``.
* ORT and its execution providers, numpy, torch (package metadata only; torch is not imported).
* CPU: ``/proc/cpuinfo`` (x86 ``model name`` and ``flags``; on Arm the implementer/part ids, named only when
  known, and ``Features``).
"""

from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Callable

# ----------------------------------------------------------------------------------------------------- parsers
_NV_TEGRA_RE = re.compile(r"^#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9][0-9.]*)\s*(.*)$")


def parse_nv_tegra_release(text: str) -> dict | None:
    """``/etc/nv_tegra_release`` -> ``{"l4t": "36.4.4", "release": "R36", "revision": "4.4", "gcid": ..., ...}``.

    None when the first line is not an L4T release line.
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    m = _NV_TEGRA_RE.match(lines[0])
    if not m:
        return None
    major, revision, rest = m.group(1), m.group(2).rstrip("."), m.group(3)
    out: dict[str, Any] = {"l4t": f"{major}.{revision}", "release": f"R{major}", "revision": revision}
    for part in rest.split(","):
        key, sep, value = part.partition(":")
        if sep and key.strip():
            out[key.strip().lower()] = value.strip()
    for line in lines[1:]:
        m2 = re.match(r"^#\s*KERNEL_VARIANT:\s*(\S+)", line)
        if m2:
            out["kernel_variant"] = m2.group(1)
    return out


def parse_device_tree_model(data: bytes | str) -> str | None:
    """``/proc/device-tree/model`` (NUL-terminated) -> the model string, or None when empty."""
    text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else data
    text = text.replace("\x00", " ").strip()
    return text or None


DPKG_FORMAT = "${Package}\\t${Status}\\t${Version}\\n"


def parse_dpkg_query(text: str) -> dict[str, str]:
    """Output of ``dpkg-query -W -f='${Package}\\t${Status}\\t${Version}\\n' PKG...`` -> {package: version} of the
    packages that are installed (status ``install ok installed``)."""
    out = {}
    for line in text.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1].strip().endswith(" installed") and parts[2].strip():
            out[parts[0].strip()] = parts[2].strip()
    return out


def release_of(package_version: str) -> str | None:
    """``6.2.1+b38`` / ``5.1.2-b104`` / ``10.3.0.30-1+cuda12.5`` -> the leading dotted release (``6.2.1``)."""
    m = re.match(r"\s*(?:\d+:)?(\d+(?:\.\d+)*)", package_version)
    return m.group(1) if m else None


def parse_nvpmodel_query(text: str) -> dict | None:
    """``nvpmodel -q`` -> ``{"name": "MAXN", "id": 0}`` (id absent when not printed); None without a mode line."""
    lines = [ln.strip() for ln in text.splitlines()]
    out: dict[str, Any] = {}
    for i, line in enumerate(lines):
        m = re.match(r"^NV Power Mode:\s*(.+)$", line)
        if m:
            out["name"] = m.group(1).strip()
            for nxt in lines[i + 1:]:
                if re.fullmatch(r"\d+", nxt):
                    out["id"] = int(nxt)
                    break
                if nxt:
                    break
            break
    fan = re.search(r"^NV Fan Mode:\s*(\S+)", text, re.M)
    if fan and out:
        out["fan_mode"] = fan.group(1)
    return out or None


_KV = re.compile(r"([A-Za-z_]+)=(\S*)")


def _freqs(kv: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for src, dst in (("MinFreq", "min_hz"), ("MaxFreq", "max_hz"), ("CurrentFreq", "current_hz")):
        if kv.get(src, "").isdigit():
            out[dst] = int(kv[src])
    return out


def parse_jetson_clocks_show(text: str) -> dict | None:
    """``jetson_clocks --show`` -> CPUs, GPU, EMC, power mode and ``on``; None when it printed no clock lines (e.g.
    ``Error: Run this script(...) as a root user``).

    ``on`` is True when every online CPU listed and the GPU (when listed) have MinFreq == MaxFreq, False when one
    has not, None when no CPU or GPU line carries both frequencies. ``throttled`` counts the clocks whose current
    frequency is below their maximum (a hint of thermal or power capping while ``on``).
    """
    cpus: dict[str, dict] = {}
    out: dict[str, Any] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = re.match(r"^cpu(\d+):\s*(.*)$", line)
        if m:
            kv = dict(_KV.findall(m.group(2)))
            entry = _freqs(kv)
            if "Governor" in kv or "Gonvernor" in kv:  # L4T 28 (TX1) spells it "Gonvernor"
                entry["governor"] = kv.get("Governor", kv.get("Gonvernor"))
            entry["online"] = kv.get("Online", "1") == "1"  # newer releases list online CPUs without the field
            cpus[f"cpu{m.group(1)}"] = entry
            continue
        if line.startswith("GPU MinFreq="):
            out["gpu"] = _freqs(dict(_KV.findall(line)))
            continue
        if line.startswith("EMC MinFreq="):
            kv = dict(_KV.findall(line))
            out["emc"] = _freqs(kv)
            if kv.get("FreqOverride", "").isdigit():
                out["emc"]["freq_override"] = int(kv["FreqOverride"])
            continue
        m = re.match(r"^NV Power Mode:\s*(.+)$", line)
        if m:
            out["power_mode"] = m.group(1).strip()
            continue
        m = re.match(r"^SOC family:\s*(\S+)\s+Machine:\s*(.+)$", line)
        if m:
            out["soc_family"], out["machine"] = m.group(1), m.group(2).strip()
            continue
        m = re.match(r"^Active GPU TPCs:\s*(\d+)", line)
        if m:
            out["active_gpu_tpcs"] = int(m.group(1))
    if cpus:
        out["cpus"] = cpus
    if not cpus and "gpu" not in out and "emc" not in out:
        return None
    clocks = [c for c in cpus.values() if c.get("online", True)]
    if "gpu" in out:
        clocks.append(out["gpu"])
    judged = [c for c in clocks if "min_hz" in c and "max_hz" in c]
    out["on"] = all(c["min_hz"] == c["max_hz"] for c in judged) if judged else None
    out["throttled"] = sum(1 for c in judged if "current_hz" in c and c["current_hz"] < c["max_hz"])
    return out


def parse_cuda_version_json(text: str) -> str | None:
    """``/usr/local/cuda/version.json`` (CUDA 11+) -> ``"11.4.19"``."""
    try:
        doc = json.loads(text)
        version = doc["cuda"]["version"]
    except (ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, str) and re.match(r"\d+\.\d+", version) else None


def parse_cuda_version_txt(text: str) -> str | None:
    """``/usr/local/cuda/version.txt`` (CUDA 10.x) -> ``"10.2.300"``."""
    m = re.search(r"CUDA Version\s+(\d+\.\d+(?:\.\d+)*)", text)
    return m.group(1) if m else None


def parse_nvcc_version(text: str) -> str | None:
    """``nvcc --version`` -> ``"12.6.68"`` (from ``V12.6.68``), else the ``release 12.6`` number."""
    m = re.search(r"\bV(\d+\.\d+\.\d+)", text) or re.search(r"release (\d+\.\d+)", text)
    return m.group(1) if m else None


_ARM_PARTS = {  # (implementer, part) -> core; only cores whose ids are well documented
    (0x41, 0xD03): "Cortex-A53",
    (0x41, 0xD07): "Cortex-A57",
    (0x41, 0xD08): "Cortex-A72",
    (0x41, 0xD0B): "Cortex-A76",
    (0x41, 0xD0C): "Neoverse-N1",
    (0x41, 0xD40): "Neoverse-V1",
    (0x41, 0xD42): "Cortex-A78AE",
    (0x41, 0xD4F): "Neoverse-V2",
    (0x4E, 0x003): "NVIDIA Denver 2",
    (0x4E, 0x004): "NVIDIA Carmel",
}

# the most capable feature first: the "family" is the first one present
_X86_FAMILIES = (("amx_int8", "amx"), ("avx512_vnni", "avx512-vnni"), ("avx_vnni", "avx-vnni"),
                 ("avx512f", "avx512"), ("avx2", "avx2"), ("avx", "avx"), ("sse4_2", "sse4.2"))
_ARM_FAMILIES = (("sve2", "sve2"), ("sve", "sve"), ("i8mm", "i8mm"), ("asimddp", "dotprod"),
                 ("asimdhp", "fp16"), ("asimd", "neon"))


def parse_cpuinfo(text: str) -> dict:
    """``/proc/cpuinfo`` -> ``{"model", "flags_family", "features"}`` (each only when the text holds it).

    x86: ``model name`` and ``flags``. Arm: ``Features`` and ``CPU implementer``/``CPU part`` (the core's name only
    when the pair is a known one; the raw ids otherwise).
    """
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if sep and key and key not in fields:
            fields[key] = value.strip()
    out: dict[str, Any] = {}
    if "flags" in fields:
        flags = set(fields["flags"].split())
        families = _X86_FAMILIES
    elif "features" in fields:
        flags = set(fields["features"].split())
        families = _ARM_FAMILIES
    else:
        flags, families = set(), ()
    present = [name for flag, name in families if flag in flags]
    if present:
        out["flags_family"] = present[0]
        out["features"] = present
    if fields.get("model name"):
        out["model"] = fields["model name"]
    elif "cpu implementer" in fields and "cpu part" in fields:
        try:
            ids = (int(fields["cpu implementer"], 0), int(fields["cpu part"], 0))
        except ValueError:
            ids = None
        if ids is not None:
            out["arm_ids"] = {"implementer": f"0x{ids[0]:02x}", "part": f"0x{ids[1]:03x}"}
            if ids in _ARM_PARTS:
                out["model"] = _ARM_PARTS[ids]
    return out


# ----------------------------------------------------------------------------------------------------- collector
def _read_file(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def _run(argv: list[str], timeout: float = 10.0) -> tuple[int, str] | None:
    """``(returncode, stdout + stderr)``, or None when the program does not exist."""
    try:
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, timeout=timeout)
    except (FileNotFoundError, PermissionError, NotADirectoryError):
        return None
    except subprocess.TimeoutExpired:
        return (124, f"timed out after {timeout:g} s")
    return proc.returncode, proc.stdout


@dataclass
class Host:
    """Where :func:`collect` reads files and runs programs (tests pass a fake one)."""

    read: Callable[[str], bytes | None] = _read_file
    run: Callable[[list[str]], tuple[int, str] | None] = _run
    which: Callable[[str], str | None] = shutil.which


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:200]
    return "no output"


def _text(data: bytes | None) -> str | None:
    return None if data is None else data.decode("utf-8", "replace")


def _run_maybe_sudo(host: Host, argv: list[str], parse: Callable[[str], Any]) -> tuple[Any, str]:
    """Run ``argv``; if it fails or prints nothing parseable, try ``sudo -n`` (never prompts). -> (parsed, why not)."""
    result = host.run(argv)
    if result is None:
        return None, f"{argv[0]} not found"
    rc, text = result
    parsed = parse(text) if rc == 0 else None
    if parsed is not None:
        return parsed, ""
    why = f"`{' '.join(argv)}` exited {rc}: {_first_line(text)}" if rc else f"`{' '.join(argv)}`: {_first_line(text)}"
    if host.which("sudo"):
        result = host.run(["sudo", "-n", *argv])
        if result is not None and result[0] == 0:
            parsed = parse(result[1])
            if parsed is not None:
                return parsed, ""
    return None, why


def _tensorrt_python() -> str | None:
    """The version of a real TensorRT Python package (not ``tensorrt-stubs``' empty namespace); never raises."""
    import importlib.util

    try:
        if importlib.util.find_spec("tensorrt") is None:
            return None
        import tensorrt  # noqa: PLC0415

        if hasattr(tensorrt, "Builder") and isinstance(getattr(tensorrt, "__version__", None), str):
            return tensorrt.__version__
    except Exception:  # absent, its libraries do not load, or only stubs
        return None
    return None


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def collect(host: Host | None = None, *, python_packages: bool = True) -> dict:
    """The device record. Absent fields are listed in ``unavailable`` with the reason."""
    host = host or Host()
    rec: dict[str, Any] = {}
    why: dict[str, str] = {}

    model_bytes = host.read("/proc/device-tree/model")
    model = parse_device_tree_model(model_bytes) if model_bytes is not None else None
    if model:
        rec["device_tree_model"] = model
    else:
        why["device_tree_model"] = "no /proc/device-tree/model"

    release_text = _text(host.read("/etc/nv_tegra_release"))
    l4t = parse_nv_tegra_release(release_text) if release_text is not None else None
    if l4t:
        rec["l4t"] = l4t
    else:
        why["l4t"] = "no /etc/nv_tegra_release" if release_text is None else "unrecognised /etc/nv_tegra_release"
    rec["jetson"] = bool(l4t) or bool(model and "jetson" in model.lower())
    if rec["jetson"] and model:
        rec["jetson_model"] = model

    if host.which("dpkg-query"):
        result = host.run(["dpkg-query", "-W", f"-f={DPKG_FORMAT}", "nvidia-jetpack"])
        installed = parse_dpkg_query(result[1]) if result else {}
        if "nvidia-jetpack" in installed:
            rec["jetpack"] = release_of(installed["nvidia-jetpack"]) or installed["nvidia-jetpack"]
            rec["jetpack_package"] = installed["nvidia-jetpack"]
        else:
            why["jetpack"] = "package nvidia-jetpack is not installed (JetPack is not guessed from L4T)"
    else:
        why["jetpack"] = "no dpkg-query"

    if host.which("nvpmodel"):
        mode, reason = _run_maybe_sudo(host, ["nvpmodel", "-q"], parse_nvpmodel_query)
        if mode:
            rec["nvpmodel"] = mode
        else:
            why["nvpmodel"] = reason
    else:
        why["nvpmodel"] = "nvpmodel not found"

    if host.which("jetson_clocks"):
        clocks, reason = _run_maybe_sudo(host, ["jetson_clocks", "--show"], parse_jetson_clocks_show)
        if clocks:
            rec["jetson_clocks"] = clocks
        else:
            why["jetson_clocks"] = reason + " (run the suite with sudo, or allow `sudo -n jetson_clocks --show`)"
    else:
        why["jetson_clocks"] = "jetson_clocks not found"

    cuda = None
    for path, parse in (("/usr/local/cuda/version.json", parse_cuda_version_json),
                        ("/usr/local/cuda/version.txt", parse_cuda_version_txt)):
        text = _text(host.read(path))
        if text is not None and parse(text):
            cuda, source = parse(text), path
            break
    if cuda is None:
        for nvcc in (host.which("nvcc"), "/usr/local/cuda/bin/nvcc"):  # Jetsons rarely have nvcc on PATH
            result = host.run([nvcc, "--version"]) if nvcc else None
            if result and result[0] == 0 and parse_nvcc_version(result[1]):
                cuda, source = parse_nvcc_version(result[1]), f"{nvcc} --version"
                break
    if cuda:
        rec["cuda"] = {"version": cuda, "source": source}
    else:
        why["cuda"] = "no CUDA toolkit found (/usr/local/cuda/version.json, version.txt, nvcc)"

    trt = _tensorrt_python() if python_packages else None
    if trt:
        rec["tensorrt"] = {"version": trt, "source": "tensorrt Python package"}
    elif host.which("dpkg-query"):
        result = host.run(["dpkg-query", "-W", f"-f={DPKG_FORMAT}", "tensorrt", "libnvinfer10", "libnvinfer8"])
        installed = parse_dpkg_query(result[1]) if result else {}
        for pkg in ("tensorrt", "libnvinfer10", "libnvinfer8"):
            if pkg in installed:
                rec["tensorrt"] = {"version": release_of(installed[pkg]) or installed[pkg], "source": f"dpkg {pkg}"}
                break
    if "tensorrt" not in rec:
        why["tensorrt"] = "no TensorRT (no real tensorrt Python package, no tensorrt/libnvinfer dpkg package)"

    cpuinfo = _text(host.read("/proc/cpuinfo"))
    cpu: dict[str, Any] = {"machine": platform.machine()}
    cpu.update(parse_cpuinfo(cpuinfo) if cpuinfo else {})
    cpu["count"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if "model" not in cpu:
        why["cpu.model"] = "no CPU model name in /proc/cpuinfo" + (
            f" (Arm ids {cpu['arm_ids']['implementer']}/{cpu['arm_ids']['part']} not in the known list)"
            if "arm_ids" in cpu else "")
    rec["cpu"] = cpu

    rec["platform"] = platform.platform()
    rec["python"] = platform.python_version()
    if hasattr(os, "getloadavg"):
        rec["load_average_1m"] = round(os.getloadavg()[0], 2)
    if python_packages:
        versions: dict[str, Any] = {}
        for pkg in ("legocompile", "onnxruntime", "onnx", "numpy", "torch", "matplotlib"):
            v = _package_version(pkg)
            if v:
                versions[pkg] = v
            else:
                why[f"versions.{pkg}"] = "not installed"
        rec["versions"] = versions
        if "onnxruntime" in sys.modules or versions.get("onnxruntime"):
            try:
                import onnxruntime

                rec["onnxruntime_providers"] = list(onnxruntime.get_available_providers())
            except Exception as e:  # a broken install is a fact worth recording, not a crash
                why["onnxruntime_providers"] = f"onnxruntime does not import: {_first_line(str(e))}"
    rec["unavailable"] = why
    return rec
