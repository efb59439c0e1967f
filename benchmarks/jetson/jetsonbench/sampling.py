"""Resource sampling during a run, and the process's RSS high-water mark.

A :class:`Sampler` is started and stopped around each run. A background thread reads, every ``interval_s``,

* this process's resident memory and CPU time (``/proc/self/status``, ``/proc/self/stat``; psutil where there is
  no ``/proc`` and psutil happens to be installed), and the whole machine's CPU use (``/proc/stat``), which shows
  what *other* processes did to the run;
* on a Jetson, ``tegrastats --interval N`` runs beside it and each line is parsed: RAM, GPU load (``GR3D_FREQ``),
  EMC, CPU loads, temperatures and the power rails (``VDD_IN``, ``POM_5V_IN``, ...).

The sampler thread takes the GIL for a few microseconds per sample (reading two small files); at the default
50 ms interval that is far below the latencies measured.

The high-water mark does not depend on sampling: Linux keeps the peak RSS (``VmHWM``), and writing ``5`` to
``/proc/self/clear_refs`` resets it to the current RSS (Linux >= 4.0), so a phase's exact peak is read after it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from typing import Any

import numpy as np

# ------------------------------------------------------------------------------------------- tegrastats parser
_TS_TIME = re.compile(r"^(\d\d-\d\d-\d{4} \d\d:\d\d:\d\d)\s")
_TS_RAM = re.compile(r"\bRAM (\d+)/(\d+)MB")
_TS_SWAP = re.compile(r"\bSWAP (\d+)/(\d+)MB")
_TS_CPU = re.compile(r"\bCPU \[([^\]]*)\](?:@(\d+))?")
_TS_GR3D = re.compile(r"\bGR3D_FREQ (\d+)%(?:@\[?([\d,]+)\]?)?")
_TS_EMC = re.compile(r"\bEMC_FREQ (\d+)%(?:@(\d+))?")
# a rail: NAME now/avg, in mW (JetPack 5+: "VDD_IN 3913mW/3922mW"; JetPack 4: "POM_5V_IN 1156/1156"); the
# lookahead keeps "RAM 2448/62780MB" and "IRAM 0/252kB" out
_TS_RAIL = re.compile(r"\b([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?![\w/])")
_TS_TEMP = re.compile(r"\b([A-Za-z][\w]*)@(-?\d+(?:\.\d+)?)C\b")
INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # the board's input power, where the module reports it


def parse_tegrastats_line(line: str) -> dict | None:
    """One ``tegrastats`` line -> a dict; None for a line that is not one (no ``RAM`` and no ``GR3D_FREQ``).

    Keys (each only when the line has it): ``time`` (the leading timestamp of newer releases), ``ram_used_mb``,
    ``ram_total_mb``, ``swap_used_mb``, ``swap_total_mb``, ``cpu_load_pct`` (a list, None for an offline core),
    ``cpu_freq_mhz`` (a list), ``gpu_load_pct``, ``gpu_freq_mhz`` (a list: one per GPC on Orin, empty when the
    release prints none), ``emc_load_pct``, ``emc_freq_mhz``, ``temps_c``, ``rails_mw`` (name -> {now, avg}),
    ``power_in_mw`` (``VDD_IN`` or ``POM_5V_IN`` now: the board's input; absent where no input rail is reported,
    e.g. AGX Orin, whose rails are per domain).
    """
    out: dict[str, Any] = {}
    m = _TS_TIME.match(line)
    if m:
        out["time"] = m.group(1)
    ram = _TS_RAM.search(line)
    gr3d = _TS_GR3D.search(line)
    if not ram and not gr3d:
        return None
    if ram:
        out["ram_used_mb"], out["ram_total_mb"] = int(ram.group(1)), int(ram.group(2))
    swap = _TS_SWAP.search(line)
    if swap:
        out["swap_used_mb"], out["swap_total_mb"] = int(swap.group(1)), int(swap.group(2))
    cpu = _TS_CPU.search(line)
    if cpu:
        loads, freqs = [], []
        for item in cpu.group(1).split(","):
            item = item.strip()
            m = re.fullmatch(r"(\d+)%(?:@(\d+))?", item)
            if m:
                loads.append(int(m.group(1)))
                if m.group(2):
                    freqs.append(int(m.group(2)))
            elif item == "off":
                loads.append(None)
        out["cpu_load_pct"] = loads
        if cpu.group(2):  # old format: one frequency for all cores, "CPU [2%,1%]@102"
            freqs = [int(cpu.group(2))] * len(loads)
        if freqs:
            out["cpu_freq_mhz"] = freqs
    if gr3d:
        out["gpu_load_pct"] = int(gr3d.group(1))
        out["gpu_freq_mhz"] = [int(f) for f in gr3d.group(2).split(",") if f] if gr3d.group(2) else []
    emc = _TS_EMC.search(line)
    if emc:
        out["emc_load_pct"] = int(emc.group(1))
        if emc.group(2):
            out["emc_freq_mhz"] = int(emc.group(2))
    temps = {name: float(v) for name, v in _TS_TEMP.findall(line)}
    if temps:
        out["temps_c"] = temps
    rails = {name: {"now": int(now), "avg": int(avg)} for name, now, avg in _TS_RAIL.findall(line)
             if name not in ("RAM", "SWAP", "IRAM")}
    if rails:
        out["rails_mw"] = rails
        for name in INPUT_RAILS:
            if name in rails:
                out["power_in_mw"] = rails[name]["now"]
                break
    return out


# --------------------------------------------------------------------------------------------------- /proc
def parse_proc_status(text: str) -> dict:
    """``/proc/<pid>/status`` -> ``{"rss_bytes", "hwm_bytes"}`` (VmRSS, VmHWM; kB in the file)."""
    out = {}
    for key, name in (("VmRSS", "rss_bytes"), ("VmHWM", "hwm_bytes")):
        m = re.search(rf"^{key}:\s+(\d+)\s+kB", text, re.M)
        if m:
            out[name] = int(m.group(1)) * 1024
    return out


def parse_proc_pid_stat(text: str) -> int | None:
    """``/proc/<pid>/stat`` -> utime + stime in clock ticks (the fields after the last ``)``: comm may hold
    spaces and parentheses)."""
    rest = text[text.rfind(")") + 1:].split()
    try:
        return int(rest[11]) + int(rest[12])  # fields 14 and 15 of the whole line
    except (IndexError, ValueError):
        return None


def parse_proc_stat_cpu(text: str) -> tuple[int, int] | None:
    """``/proc/stat`` -> (busy, total) jiffies of all CPUs (idle = idle + iowait)."""
    for line in text.splitlines():
        if line.startswith("cpu "):
            vals = [int(v) for v in line.split()[1:]]
            total = sum(vals[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
            return total - idle, total
    return None


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _psutil():
    try:
        import psutil  # optional: used only where there is no /proc

        return psutil
    except ImportError:
        return None


def current_rss_bytes() -> int | None:
    text = _read("/proc/self/status")
    if text is not None:
        return parse_proc_status(text).get("rss_bytes")
    ps = _psutil()
    return int(ps.Process().memory_info().rss) if ps else None


def peak_rss_bytes() -> int | None:
    """Peak RSS since the process started or since the last :func:`reset_peak_rss` (VmHWM)."""
    text = _read("/proc/self/status")
    return parse_proc_status(text).get("hwm_bytes") if text is not None else None


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (``/proc/self/clear_refs``); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def trim_heap() -> None:
    """Give the C heap's free pages back to the OS (glibc), so that an RSS base is not inflated by garbage."""
    import ctypes

    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError):
        pass


# ----------------------------------------------------------------------------------------------------- sampler
def find_tegrastats() -> str | None:
    return shutil.which("tegrastats") or next(
        (p for p in ("/usr/bin/tegrastats",) if os.access(p, os.X_OK)), None)


class Sampler:
    """Background sampling between :meth:`start` and :meth:`stop` (or as a context manager).

    Args:
        interval_s: /proc sampling period.
        tegrastats: path of ``tegrastats`` to run beside (default: found on PATH; ``False`` to never run it).
        tegrastats_interval_ms: its ``--interval`` (default: ``interval_s`` rounded, at least 10 ms).
    """

    def __init__(self, interval_s: float = 0.05, *, tegrastats: str | bool | None = None,
                 tegrastats_interval_ms: int | None = None) -> None:
        self.interval_s = float(interval_s)
        self.samples: list[dict] = []
        self.tegra: list[dict] = []
        self.tegrastats_note: str | None = None
        self._tegrastats = find_tegrastats() if tegrastats is None else (tegrastats or None)
        self._ts_interval = tegrastats_interval_ms or max(10, int(round(self.interval_s * 1000)))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self.t0 = 0.0
        self.duration_s = 0.0
        self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.source = "/proc" if _read("/proc/self/status") is not None else ("psutil" if _psutil() else None)

    # ------------------------------------------------------------------------------------------------ control
    def start(self) -> "Sampler":
        self.t0 = time.perf_counter()
        if self._tegrastats:
            try:
                self._proc = subprocess.Popen([self._tegrastats, "--interval", str(self._ts_interval)],
                                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                              stderr=subprocess.DEVNULL, text=True, bufsize=1)
                self._reader = threading.Thread(target=self._read_tegrastats, name="tegrastats", daemon=True)
                self._reader.start()
            except OSError as e:
                self.tegrastats_note = f"tegrastats did not start: {e}"
                self._proc = None
        else:
            self.tegrastats_note = "no tegrastats (not a Jetson)"
        if self.source is not None:
            self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> dict:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=3)
            if self._reader is not None:
                self._reader.join(timeout=3)
            if not self.tegra:
                self.tegrastats_note = "tegrastats printed no line that parses"
        self.duration_s = time.perf_counter() - self.t0
        return self.summary()

    def __enter__(self) -> "Sampler":
        return self.start()

    def __exit__(self, *exc) -> None:
        if not self._stop.is_set():
            self.stop()

    # ------------------------------------------------------------------------------------------------ threads
    def _proc_sample(self) -> tuple[int | None, int | None, tuple[int, int] | None]:
        status = _read("/proc/self/status")
        if status is not None:
            rss = parse_proc_status(status).get("rss_bytes")
            stat = _read("/proc/self/stat")
            ticks = parse_proc_pid_stat(stat) if stat else None
            sysstat = _read("/proc/stat")
            return rss, ticks, (parse_proc_stat_cpu(sysstat) if sysstat else None)
        ps = _psutil()
        if ps is None:
            return None, None, None
        p = ps.Process()
        t = p.cpu_times()
        return int(p.memory_info().rss), int(round((t.user + t.system) * self._ticks)), None

    def _loop(self) -> None:
        prev_t, (_, prev_ticks, prev_sys) = time.perf_counter(), self._proc_sample()
        while not self._stop.wait(self.interval_s):
            now = time.perf_counter()
            rss, ticks, sysstat = self._proc_sample()
            sample: dict[str, Any] = {"t": now - self.t0, "rss_bytes": rss}
            dt = now - prev_t
            if ticks is not None and prev_ticks is not None and dt > 0:
                sample["cpu_pct"] = 100.0 * (ticks - prev_ticks) / self._ticks / dt  # of one core
            if sysstat and prev_sys and sysstat[1] > prev_sys[1]:
                sample["system_cpu_pct"] = 100.0 * (sysstat[0] - prev_sys[0]) / (sysstat[1] - prev_sys[1])
            self.samples.append(sample)
            prev_t, prev_ticks, prev_sys = now, ticks, sysstat

    def _read_tegrastats(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            parsed = parse_tegrastats_line(line)
            if parsed is not None:
                parsed["t"] = time.perf_counter() - self.t0
                self.tegra.append(parsed)

    # ------------------------------------------------------------------------------------------------ results
    def window(self, start_s: float, end_s: float) -> dict:
        """Summary of the samples taken between two times (seconds since :meth:`start`)."""
        return _summarise([s for s in self.samples if start_s <= s["t"] <= end_s],
                          [s for s in self.tegra if start_s <= s["t"] <= end_s])

    def summary(self) -> dict:
        out = {"source": self.source, "interval_s": self.interval_s, "duration_s": round(self.duration_s, 4)}
        out |= _summarise(self.samples, self.tegra)
        if self.tegrastats_note and not self.tegra:
            out["tegrastats_note"] = self.tegrastats_note
        return out

    def series(self, offset_s: float = 0.0) -> dict:
        """The raw samples, as columns (for the JSON and the plots); times minus ``offset_s``."""
        cols: dict[str, list] = {"t": [], "rss_bytes": [], "cpu_pct": [], "system_cpu_pct": []}
        for s in self.samples:
            for k in cols:
                v = s.get(k) if k != "t" else s["t"] - offset_s
                cols[k].append(round(v, 4) if isinstance(v, float) else v)
        out: dict[str, Any] = {"proc": cols}
        if self.tegra:
            out["tegrastats"] = {
                "t": [round(s["t"] - offset_s, 4) for s in self.tegra],
                "ram_used_mb": [s.get("ram_used_mb") for s in self.tegra],
                "gpu_load_pct": [s.get("gpu_load_pct") for s in self.tegra],
                "power_in_mw": [s.get("power_in_mw") for s in self.tegra],
            }
        return out


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _max(values):
    vals = [v for v in values if v is not None]
    return max(vals) if vals else None


def _summarise(samples: list[dict], tegra: list[dict]) -> dict:
    out: dict[str, Any] = {
        "samples": len(samples),
        "rss_max_bytes": _max(s.get("rss_bytes") for s in samples),
        "cpu_pct_mean": _mean(s.get("cpu_pct") for s in samples),
        "system_cpu_pct_mean": _mean(s.get("system_cpu_pct") for s in samples),
    }
    if tegra:
        rails: dict[str, list] = {}
        for s in tegra:
            for name, r in s.get("rails_mw", {}).items():
                rails.setdefault(name, []).append(r["now"])
        out["tegrastats"] = {
            "samples": len(tegra),
            "ram_used_mb_max": _max(s.get("ram_used_mb") for s in tegra),
            "gpu_load_pct_mean": _mean(s.get("gpu_load_pct") for s in tegra),
            "power_in_mw_mean": _mean(s.get("power_in_mw") for s in tegra),
            "rails_mw_mean": {k: float(np.mean(v)) for k, v in rails.items()},
        }
    return out
