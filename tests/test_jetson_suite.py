"""The Jetson benchmark suite (benchmarks/jetson): pure parsers on sample texts, the device collector on fake hosts,
traces, and one end-to-end ``--quick`` run.

The sample texts mirror what the tools print on real devices (JetPack 4 to 6; AGX Orin, Orin Nano/NX, Xavier,
Nano): each one is the format, not a recording of a particular board.
"""

from __future__ import annotations

import json
import math
import runpy
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "jetson"
RUN = SUITE / "run.py"
if str(SUITE) not in sys.path:
    sys.path.insert(0, str(SUITE))

from jetsonbench import device, sampling, static, traces  # noqa: E402

# ----------------------------------------------------------------------------------------------- sample texts
NV_TEGRA_R36 = (
    "# R36 (release), REVISION: 4.4, GCID: 41062509, BOARD: generic, EABI: aarch64, DATE: Mon Jun 16 16:07:13 UTC 2025\n"
    "# KERNEL_VARIANT: oot\nTARGET_USERSPACE_LIB_DIR=nvidia\n"
    "TARGET_USERSPACE_LIB_DIR_PATH=usr/lib/aarch64-linux-gnu/nvidia\n"
)
NV_TEGRA_R32 = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022\n"

JC_ORIN_DEFAULT = """SOC family:tegra234  Machine:NVIDIA Jetson AGX Orin Developer Kit
Online CPUs: 0-11
cpu0: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=2201600 IdleStates: WFI=1 c7=1
cpu1: Online=1 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=1113600 IdleStates: WFI=1 c7=1
cpu2: Online=0 Governor=schedutil MinFreq=729600 MaxFreq=2201600 CurrentFreq=729600 IdleStates: WFI=1 c7=1
GPU MinFreq=306000000 MaxFreq=1300500000 CurrentFreq=306000000
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=0
FAN Dynamic Speed control=active hwmon2_pwm=0
NV Power Mode: MAXN
"""
# L4T 36.4+ prints no Online= field; after `sudo jetson_clocks` every min equals its max
JC_ORIN_NANO_ON = """SOC family:tegra234  Machine:NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super
Online CPUs: 0-5, Offline CPUs:
cpu0:  Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1728000 IdleStates: WFI=0 c7=0
cpu1:  Governor=schedutil MinFreq=1728000 MaxFreq=1728000 CurrentFreq=1497600 IdleStates: WFI=0 c7=0
GPU MinFreq=1020000000 MaxFreq=1020000000 CurrentFreq=1020000000
Active GPU TPCs: 8
EMC MinFreq=204000000 MaxFreq=3199000000 CurrentFreq=3199000000 FreqOverride=1
FAN Dynamic Speed Control=kernel hwmon0_pwm1=88
NV Power Mode: MAXN_SUPER
"""
JC_NOT_ROOT = "Error: Run this script(/usr/bin/jetson_clocks) as a root user\n"
JC_TX1 = "cpu0: Gonvernor=interactive MinFreq=102000 MaxFreq=1734000 CurrentFreq=510000\n"

TS_ORIN_NANO_JP6 = (
    "12-23-2024 22:54:11 RAM 3162/7620MB (lfb 4x2MB) SWAP 0/3810MB (cached 0MB) "
    "CPU [1%@729,0%@729,0%@729,0%@729,off,off] GR3D_FREQ 1% cpu@62.843C soc2@61.968C soc0@60.625C gpu@61.687C "
    "tj@62.843C soc1@61.687C VDD_IN 3913mW/3922mW VDD_CPU_GPU_CV 598mW/598mW VDD_SOC 1238mW/1237mW"
)
TS_AGX_ORIN_JP5 = (
    "RAM 2448/62780MB (lfb 14920x4MB) SWAP 0/31390MB (cached 0MB) CPU [0%@729,1%@729,3%@1420] "
    "EMC_FREQ 0%@2133 GR3D_FREQ 47%@[305,305] VIC_FREQ 729 APE 174 CV0@-256C CPU@46.5C GPU@43.5C "
    "VDD_GPU_SOC 3176mW/3176mW VDD_CPU_CV 793mW/793mW VIN_SYS_5V0 3025mW/3025mW VDDQ_VDD2_1V8AO 503mW/503mW"
)
TS_NANO_JP4 = (
    "RAM 1881/3964MB (lfb 1x2MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) CPU [2%@102,1%@102,off,0%@102] "
    "EMC_FREQ 0%@1600 GR3D_FREQ 99%@921 APE 25 PLL@22.5C CPU@24.5C PMIC@100C GPU@23.5C AO@30.5C thermal@23.75C "
    "POM_5V_IN 1156/1156 POM_5V_GPU 0/0 POM_5V_CPU 118/118"
)
TS_TX1_OLD = "RAM 1179/3983MB (lfb 499x4MB) CPU [2%,1%,0%,0%]@102 EMC 4%@1600 AVP 0%@80 GR3D 0%@76"

TRTEXEC_8 = """&&&& RUNNING TensorRT.trtexec [TensorRT v8602] # /usr/src/tensorrt/bin/trtexec --loadEngine=b0.plan
[08/11/2024-06:55:30] [I] === Performance summary ===
[08/11/2024-06:55:33] [I] Throughput: 2.54521e+03 qps
[08/11/2024-06:55:33] [I] Latency: min = 0.51123 ms, max = 1.53139 ms, mean = 0.54566 ms, median = 0.52756 ms, percentile(90%) = 0.56 ms, percentile(95%) = 0.58 ms, percentile(99%) = 0.71622 ms
[08/11/2024-06:55:33] [I] Enqueue Time: min = 0.0354 ms, max = 0.063 ms, mean = 0.041 ms, median = 0.0416 ms, percentile(90%) = 0.05 ms, percentile(95%) = 0.052 ms, percentile(99%) = 0.0523 ms
[08/11/2024-06:55:33] [I] GPU Compute Time: min = 0.423773 ms, max = 1.25439 ms, mean = 0.426986 ms, median = 0.425195 ms, percentile(90%) = 0.43 ms, percentile(95%) = 0.44 ms, percentile(99%) = 0.524138 ms
[08/11/2024-06:55:33] [I] Total GPU Compute Time: 3.00598 s
&&&& PASSED TensorRT.trtexec [TensorRT v8602] # /usr/src/tensorrt/bin/trtexec --loadEngine=b0.plan
"""
TRTEXEC_10 = """&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec --loadEngine=b1.plan
[I] TensorRT version: 10.3.0
[I] GPU Compute Time: min = 1.1 ms, max = 2 ms, mean = 1.2 ms, median = 1.15 ms, percentile(90%) = 1.3 ms, percentile(95%) = 1.4 ms, percentile(99%) = 1.9 ms
&&&& PASSED TensorRT.trtexec [TensorRT v100300] # trtexec --loadEngine=b1.plan
"""
TRTEXEC_7 = """[10/20/2020-19:56:29] [I] Host Latency
[10/20/2020-19:56:29] [I] min: 4.5 ms (end to end 4.9 ms)
[10/20/2020-19:56:29] [I] GPU Compute
[10/20/2020-19:56:29] [I] min: 4.2439 ms
[10/20/2020-19:56:29] [I] max: 7.02356 ms
[10/20/2020-19:56:29] [I] mean: 4.42492 ms
[10/20/2020-19:56:29] [I] median: 4.40088 ms
[10/20/2020-19:56:29] [I] percentile: 5.36792 ms at 99%
[10/20/2020-19:56:29] [I] total compute time: 2.93372 s
&&&& PASSED TensorRT.trtexec # trtexec --loadEngine=x.plan
"""
TRTEXEC_FAILED = """[E] Error[1]: [stdArchiveReader.cpp::StdArchiveReader::32] Error Code 1: Serialization assertion failed
[E] Engine deserialization failed
&&&& FAILED TensorRT.trtexec [TensorRT v8602] # trtexec --loadEngine=x.plan
"""

CPUINFO_EPYC = "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_1 sse4_2 avx avx2 fma\n"
CPUINFO_XEON = ("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                "flags\t\t: sse4_2 avx avx2 avx512f avx512_vnni amx_int8 amx_tile\n")
CPUINFO_ORIN = ("processor\t: 0\nBogoMIPS\t: 62.50\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
                "fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp uscat ilrcpc flagm\nCPU implementer\t: 0x41\n"
                "CPU architecture: 8\nCPU variant\t: 0x1\nCPU part\t: 0xd42\nCPU revision\t: 1\n")
CPUINFO_UNKNOWN_ARM = "processor\t: 0\nFeatures\t: fp asimd\nCPU implementer\t: 0x61\nCPU part\t: 0x022\n"


# ------------------------------------------------------------------------------------------------ device parsers
def test_nv_tegra_release():
    r = device.parse_nv_tegra_release(NV_TEGRA_R36)
    assert r["l4t"] == "36.4.4" and r["release"] == "R36" and r["revision"] == "4.4"
    assert r["board"] == "generic" and r["eabi"] == "aarch64" and r["gcid"] == "41062509"
    assert r["date"] == "Mon Jun 16 16:07:13 UTC 2025" and r["kernel_variant"] == "oot"
    old = device.parse_nv_tegra_release(NV_TEGRA_R32)
    assert old["l4t"] == "32.7.1" and old["board"] == "t210ref" and "kernel_variant" not in old
    assert device.parse_nv_tegra_release("") is None
    assert device.parse_nv_tegra_release("Ubuntu 22.04.4 LTS\n") is None


def test_device_tree_model():
    assert device.parse_device_tree_model(b"NVIDIA Jetson AGX Orin Developer Kit\x00") == \
        "NVIDIA Jetson AGX Orin Developer Kit"
    assert device.parse_device_tree_model(b"\x00") is None
    assert device.parse_device_tree_model("Raspberry Pi 4 Model B Rev 1.4\x00") == "Raspberry Pi 4 Model B Rev 1.4"


def test_dpkg_query_and_release():
    text = ("nvidia-jetpack\tinstall ok installed\t6.2.1+b38\n"
            "libnvinfer8\tdeinstall ok config-files\t8.5.2-1+cuda11.4\n"
            "tensorrt\tinstall ok installed\t10.3.0.30-1+cuda12.5\n")
    assert device.parse_dpkg_query(text) == {"nvidia-jetpack": "6.2.1+b38", "tensorrt": "10.3.0.30-1+cuda12.5"}
    assert device.release_of("6.2.1+b38") == "6.2.1"
    assert device.release_of("5.1.2-b104") == "5.1.2"
    assert device.release_of("10.3.0.30-1+cuda12.5") == "10.3.0.30"
    assert device.release_of("b38") is None


def test_nvpmodel_query():
    assert device.parse_nvpmodel_query("NV Power Mode: MAXN\n0\n") == {"name": "MAXN", "id": 0}
    assert device.parse_nvpmodel_query("NV Fan Mode:quiet\nNV Power Mode: MODE_15W_6CORE\n2\n") == \
        {"name": "MODE_15W_6CORE", "id": 2, "fan_mode": "quiet"}
    assert device.parse_nvpmodel_query("NV Power Mode: 25W\n") == {"name": "25W"}
    assert device.parse_nvpmodel_query("nvpmodel: error opening /etc/nvpmodel.conf\n") is None


def test_jetson_clocks_show():
    off = device.parse_jetson_clocks_show(JC_ORIN_DEFAULT)
    assert off["on"] is False
    assert off["soc_family"] == "tegra234" and off["machine"] == "NVIDIA Jetson AGX Orin Developer Kit"
    assert off["cpus"]["cpu2"]["online"] is False and off["cpus"]["cpu0"]["max_hz"] == 2201600
    assert off["gpu"] == {"min_hz": 306000000, "max_hz": 1300500000, "current_hz": 306000000}
    assert off["emc"]["freq_override"] == 0 and off["power_mode"] == "MAXN"
    on = device.parse_jetson_clocks_show(JC_ORIN_NANO_ON)
    assert on["on"] is True and on["active_gpu_tpcs"] == 8 and on["emc"]["freq_override"] == 1
    assert on["cpus"]["cpu0"]["online"] is True and on["power_mode"] == "MAXN_SUPER"
    assert on["throttled"] == 1  # cpu1 runs below its (pinned) maximum
    # pinned CPUs alone are not enough: a GPU left to scale means jetson_clocks is not on
    assert device.parse_jetson_clocks_show(JC_ORIN_NANO_ON.replace("GPU MinFreq=1020000000", "GPU MinFreq=306000000"))["on"] is False
    tx1 = device.parse_jetson_clocks_show(JC_TX1)
    assert tx1["cpus"]["cpu0"]["governor"] == "interactive" and tx1["on"] is False
    assert device.parse_jetson_clocks_show(JC_NOT_ROOT) is None


def test_cuda_and_cpu_parsers():
    assert device.parse_cuda_version_json('{"cuda": {"name": "CUDA SDK", "version": "11.4.19"}}') == "11.4.19"
    assert device.parse_cuda_version_json("{}") is None and device.parse_cuda_version_json("not json") is None
    assert device.parse_cuda_version_txt("CUDA Version 10.2.300\n") == "10.2.300"
    assert device.parse_nvcc_version("Cuda compilation tools, release 12.6, V12.6.68\nBuild cuda_12.6.r12.6") == "12.6.68"
    assert device.parse_nvcc_version("Cuda compilation tools, release 11.4") == "11.4"
    assert device.parse_cpuinfo(CPUINFO_EPYC) == {"model": "AMD EPYC", "flags_family": "avx2",
                                                  "features": ["avx2", "avx", "sse4.2"]}
    assert device.parse_cpuinfo(CPUINFO_XEON)["flags_family"] == "amx"
    orin = device.parse_cpuinfo(CPUINFO_ORIN)
    assert orin["model"] == "Cortex-A78AE" and orin["flags_family"] == "dotprod"
    assert orin["arm_ids"] == {"implementer": "0x41", "part": "0xd42"}
    unknown = device.parse_cpuinfo(CPUINFO_UNKNOWN_ARM)
    assert "model" not in unknown and unknown["arm_ids"]["part"] == "0x022" and unknown["flags_family"] == "neon"


# --------------------------------------------------------------------------------------------- device collector
class FakeHost:
    def __init__(self, files: dict[str, bytes], commands: dict[tuple, tuple[int, str]], programs: set[str]):
        self.files, self.commands, self.programs = files, commands, programs
        self.ran: list[tuple] = []

    def host(self) -> device.Host:
        return device.Host(read=self.files.get, run=self.run, which=lambda n: f"/usr/bin/{n}" if n in self.programs else None)

    def run(self, argv):
        self.ran.append(tuple(argv))
        if argv[0].split("/")[-1] not in self.programs and argv[0] != "sudo":
            return None
        return self.commands.get(tuple(argv), (1, "unexpected command"))


DPKG = f"-f={device.DPKG_FORMAT}"


def test_collect_on_a_jetson():
    fake = FakeHost(
        files={"/proc/device-tree/model": b"NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00",
               "/etc/nv_tegra_release": NV_TEGRA_R36.encode(), "/proc/cpuinfo": CPUINFO_ORIN.encode(),
               "/usr/local/cuda/version.json": b'{"cuda": {"version": "12.6.68"}}'},
        commands={("dpkg-query", "-W", DPKG, "nvidia-jetpack"): (0, "nvidia-jetpack\tinstall ok installed\t6.2.1+b38\n"),
                  ("dpkg-query", "-W", DPKG, "tensorrt", "libnvinfer10", "libnvinfer8"):
                      (1, "tensorrt\tinstall ok installed\t10.3.0.30-1+cuda12.5\n"),
                  ("nvpmodel", "-q"): (0, "NV Power Mode: MAXN_SUPER\n2\n"),
                  ("jetson_clocks", "--show"): (1, JC_NOT_ROOT),
                  ("sudo", "-n", "jetson_clocks", "--show"): (0, JC_ORIN_NANO_ON)},
        programs={"dpkg-query", "nvpmodel", "jetson_clocks", "sudo"})
    rec = device.collect(fake.host(), python_packages=False)
    assert rec["jetson"] is True
    assert rec["jetson_model"] == "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super"
    assert rec["l4t"]["l4t"] == "36.4.4" and rec["jetpack"] == "6.2.1" and rec["jetpack_package"] == "6.2.1+b38"
    assert rec["nvpmodel"] == {"name": "MAXN_SUPER", "id": 2}
    assert rec["jetson_clocks"]["on"] is True  # read through `sudo -n` after the root-only refusal
    assert ("sudo", "-n", "jetson_clocks", "--show") in fake.ran
    assert rec["cuda"] == {"version": "12.6.68", "source": "/usr/local/cuda/version.json"}
    assert rec["tensorrt"] == {"version": "10.3.0.30", "source": "dpkg tensorrt"}
    assert rec["cpu"]["model"] == "Cortex-A78AE"
    for field in ("jetpack", "nvpmodel", "jetson_clocks", "cuda", "tensorrt", "l4t"):
        assert field not in rec["unavailable"]


def test_collect_leaves_what_it_cannot_read_absent():
    fake = FakeHost(files={"/proc/cpuinfo": CPUINFO_EPYC.encode()},
                    commands={("jetson_clocks", "--show"): (1, JC_NOT_ROOT)},
                    programs={"jetson_clocks"})  # a tool present, but root-only and no sudo
    rec = device.collect(fake.host(), python_packages=False)
    assert rec["jetson"] is False
    for field in ("jetson_model", "device_tree_model", "l4t", "jetpack", "nvpmodel", "jetson_clocks", "cuda", "tensorrt"):
        assert field not in rec, field
    assert "root user" in rec["unavailable"]["jetson_clocks"]
    assert rec["unavailable"]["nvpmodel"] == "nvpmodel not found"
    assert rec["cpu"]["model"] == "AMD EPYC" and rec["cpu"]["flags_family"] == "avx2"


def test_collect_on_this_host_invents_nothing():
    rec = device.collect()
    json.dumps(rec)  # it goes into the report as is
    assert rec["versions"]["onnxruntime"] and "CPUExecutionProvider" in rec["onnxruntime_providers"]
    if not Path("/etc/nv_tegra_release").exists():
        assert "l4t" not in rec and "l4t" in rec["unavailable"]
    if not Path("/proc/device-tree/model").exists():
        assert rec["jetson"] is False and "jetson_model" not in rec


# ---------------------------------------------------------------------------------------------- sampling parsers
def test_tegrastats_jetpack6_orin_nano():
    s = sampling.parse_tegrastats_line(TS_ORIN_NANO_JP6)
    assert s["time"] == "12-23-2024 22:54:11"
    assert (s["ram_used_mb"], s["ram_total_mb"], s["swap_used_mb"], s["swap_total_mb"]) == (3162, 7620, 0, 3810)
    assert s["cpu_load_pct"] == [1, 0, 0, 0, None, None] and s["cpu_freq_mhz"] == [729] * 4
    assert s["gpu_load_pct"] == 1 and s["gpu_freq_mhz"] == []
    assert s["power_in_mw"] == 3913
    assert s["rails_mw"] == {"VDD_IN": {"now": 3913, "avg": 3922}, "VDD_CPU_GPU_CV": {"now": 598, "avg": 598},
                             "VDD_SOC": {"now": 1238, "avg": 1237}}
    assert s["temps_c"]["gpu"] == pytest.approx(61.687) and s["temps_c"]["tj"] == pytest.approx(62.843)


def test_tegrastats_agx_orin_has_no_input_rail():
    s = sampling.parse_tegrastats_line(TS_AGX_ORIN_JP5)
    assert "time" not in s and s["ram_used_mb"] == 2448
    assert s["gpu_load_pct"] == 47 and s["gpu_freq_mhz"] == [305, 305]
    assert s["emc_load_pct"] == 0 and s["emc_freq_mhz"] == 2133
    assert set(s["rails_mw"]) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"}
    assert "power_in_mw" not in s  # not invented from the per-domain rails
    assert s["temps_c"]["CV0"] == -256.0


def test_tegrastats_jetpack4_nano_and_old_format():
    s = sampling.parse_tegrastats_line(TS_NANO_JP4)
    assert s["gpu_load_pct"] == 99 and s["gpu_freq_mhz"] == [921]
    assert s["power_in_mw"] == 1156 and set(s["rails_mw"]) == {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}
    assert s["cpu_load_pct"] == [2, 1, None, 0]
    old = sampling.parse_tegrastats_line(TS_TX1_OLD)
    assert old["cpu_load_pct"] == [2, 1, 0, 0] and old["cpu_freq_mhz"] == [102] * 4
    assert "gpu_load_pct" not in old and "rails_mw" not in old  # "GR3D 0%@76" is not GR3D_FREQ
    assert sampling.parse_tegrastats_line("tegrastats: failed to open /sys/...") is None


def test_proc_parsers():
    status = "Name:\tpython\nVmHWM:\t  204800 kB\nVmRSS:\t  102400 kB\n"
    assert sampling.parse_proc_status(status) == {"rss_bytes": 102400 * 1024, "hwm_bytes": 204800 * 1024}
    stat = "1234 (we (ird) name) S 1 1234 1234 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0 100 0 0"
    assert sampling.parse_proc_pid_stat(stat) == 300
    assert sampling.parse_proc_stat_cpu("cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n") == (150, 1000)
    assert sampling.current_rss_bytes() > 0


def test_sampler_samples_this_process():
    with sampling.Sampler(0.01, tegrastats=False) as s:
        blob = np.ones(20_000_000 // 8)  # 20 MB, touched
        deadline = 0.2
        import time
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < deadline:
            blob.sum()
    summary = s.summary()
    assert summary["samples"] >= 3 and summary["rss_max_bytes"] >= 20_000_000
    assert summary["cpu_pct_mean"] > 0 and summary["tegrastats_note"] == "no tegrastats (not a Jetson)"
    del blob


# ---------------------------------------------------------------------------------------------- trtexec parser
def test_trtexec_parser():
    p8 = static.parse_trtexec_output(TRTEXEC_8)
    assert p8["gpu_compute_ms"]["median"] == pytest.approx(0.425195)
    assert p8["gpu_compute_ms"]["p99"] == pytest.approx(0.524138) and p8["gpu_compute_ms"]["p90"] == 0.43
    assert p8["latency_ms"]["median"] == pytest.approx(0.52756) and p8["throughput_qps"] == pytest.approx(2545.21)
    assert p8["tensorrt_version"] == "8.6.2" and p8["passed"] is True
    p10 = static.parse_trtexec_output(TRTEXEC_10)
    assert p10["gpu_compute_ms"]["median"] == 1.15 and p10["tensorrt_version"] == "10.3.0"
    p7 = static.parse_trtexec_output(TRTEXEC_7)
    assert p7["gpu_compute_ms"] == {"min": 4.2439, "max": 7.02356, "mean": 4.42492, "median": 4.40088, "p99": 5.36792}
    bad = static.parse_trtexec_output(TRTEXEC_FAILED)
    assert "gpu_compute_ms" not in bad and bad["passed"] is False and bad["tensorrt_version"] == "8.6.2"
    v10 = static.parse_trtexec_output("&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec")
    assert v10["tensorrt_version"] == "10.3.0"


def test_pytorch_eager_only_for_the_bundles_model(tiny_bundle, tiny_model):
    from legocompile.bundle import read_bundle

    m = read_bundle(tiny_bundle["path"])
    model, why = static.load_torch_model(None, False, m)
    assert model is None and "--config" in why
    model, why = static.load_torch_model(None, True, m)  # the tiny bundle is not the built-in example
    assert model is None and "'tiny'" in why and static.EXAMPLE_MODEL in why
    x = np.zeros(m.input.shape, np.float32)
    r = static.pytorch_eager(tiny_model, x, threads=1, warmup=2, runs=5, chain_median_ms=0.5)
    assert r["status"] == "ok" and r["eager"]["runs"] == 5 == len(r["samples_ms"])
    assert r["eager_over_chain"] == pytest.approx(r["eager"]["median_ms"] / 0.5)


# ------------------------------------------------------------------------------------------------------ traces
def test_shipped_traces_are_valid():
    paths = traces.shipped_traces()
    assert {p.stem for p in paths} >= {"app_starts", "oscillating", "memory_squeeze"}
    for p in paths:
        t = traces.load_trace(p)
        assert t.name == p.stem and len(t.phases) >= 2 and t.description
        assert all(ph.latency is not None and ph.memory is not None for ph in t.phases)
        assert all(ph.latency.kind == "fraction" and ph.memory.kind == "fraction" for ph in t.phases)  # portable


BAD_TRACES = [
    ("{", "not valid JSON (line 1"),
    ('{"phases": []}', "'phases' must be a non-empty list"),
    ('{"phases": [{"latency": 0.5}]}', "phases[0]: missing key 'duration_s'"),
    ('{"phases": [{"duration_s": 1, "latancy": 0.5}]}', "phases[0]: unknown key 'latancy'"),
    ('{"phases": [{"duration_s": 1, "latency": 0.5, "latency_ms": 2}]}', "not both"),
    ('{"phases": [{"duration_s": 1, "memory": -0.1}]}', "phases[0].memory: must be a number from 0"),
    ('{"phases": [{"duration_s": 1, "memory_mb": 0}]}', "phases[0].memory_mb: must be a positive number"),
    ('{"phases": [{"duration_s": true}]}', "phases[0].duration_s: must be a positive number"),
    ('{"phases": [{"duration_s": 1}], "frame_rate_hz": 0}', "frame_rate_hz must be a positive number"),
    ('{"phases": [{"duration_s": 1}], "schema": 2}', "schema 2 is not supported"),
    ('{"phases": [{"duration_s": 1}], "name": "a/b"}', "name must be a non-empty string"),
    ('[1, 2]', "a trace is a JSON object"),
]


@pytest.mark.parametrize("text,message", BAD_TRACES)
def test_bad_trace_gets_one_line(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(traces.TraceError) as e:
        traces.load_trace(path)
    assert message in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value)


def test_missing_trace_file(tmp_path):
    with pytest.raises(traces.TraceError, match="trace file not found"):
        traces.load_trace(tmp_path / "nope.json")


def test_relative_and_absolute_budgets_resolve():
    t = traces.parse_trace({"frame_rate_hz": "max", "phases": [
        {"duration_s": 1, "latency": 0.5, "memory": 0.25},
        {"duration_s": 1, "latency_ms": 7.5, "memory_mb": 12},
        {"duration_s": 1, "latency": 0, "memory": 2.0},
        {"duration_s": 1},
    ]}, "t.json")
    assert t.frame_rate_hz is None and t.name == "t"
    r = traces.Ranges(latency_lo_ms=1.0, latency_hi_ms=3.0, memory_lo_bytes=1e6, memory_hi_bytes=5e6)
    got = traces.resolve(t, r)
    assert got[0]["latency_ms"] == pytest.approx(2.0) and got[0]["memory_mb"] == pytest.approx(2.0)
    assert got[0]["latency_fraction"] == 0.5 and got[0]["memory_fraction"] == 0.25
    assert got[1]["latency_ms"] == 7.5 and got[1]["memory_mb"] == 12 and got[1]["latency_fraction"] is None
    assert got[2]["latency_ms"] == 1.0 and got[2]["memory_mb"] == pytest.approx(9.0)  # 2 = twice the range past lo
    assert got[3]["latency_ms"] is None and got[3]["memory_mb"] is None


def test_bundle_ranges_from_a_manifest(tiny_bundle):
    from legocompile.bundle import read_bundle
    from legocompile.optimize.select import select_options

    m = read_bundle(tiny_bundle["path"])
    r = traces.bundle_ranges(m)
    overhead = m.teacher.get("chain_overhead_ms", 0.0)
    lo = math.fsum(min(o.latency_ms for o in b.options if not o.excluded) for b in m.blocks) + overhead
    hi = math.fsum(b.option("s0", "fp32").latency_ms for b in m.blocks) + overhead
    assert r.latency_lo_ms == pytest.approx(lo) and r.latency_hi_ms == pytest.approx(max(hi, lo))
    buffers = 4 * sum(math.prod(s.shape) for s in [m.blocks[0].input, *(b.output for b in m.blocks)])
    assert r.memory_lo_bytes == sum(min(o.memory_bytes for o in b.options if not o.excluded) for b in m.blocks) + buffers
    assert r.memory_hi_bytes >= r.memory_lo_bytes
    sel = select_options(m, latency_ms=r.latency_hi_ms * (1 + 1e-9), memory_mb=r.memory_hi_bytes / 1e6 * (1 + 1e-9))
    assert sel.latency_ms <= r.latency_hi_ms * (1 + 1e-9)  # the teacher's budget is always feasible


def test_frame_schedule():
    t = traces.load_trace(SUITE / "traces" / "app_starts.json")
    assert traces.frame_schedule(t) == [round(p.duration_s * t.frame_rate_hz) for p in t.phases]
    for total in (4, 7, 60, 1001):
        counts = traces.frame_schedule(t, total)
        assert sum(counts) == total and min(counts) >= 1
    counts = traces.frame_schedule(t, 80)
    assert counts[2] > counts[0] > counts[1]  # the 3 s phase gets most, the 1 s phase least
    with pytest.raises(traces.TraceError, match="fewer than the trace's 4 phases"):
        traces.frame_schedule(t, 3)


# ------------------------------------------------------------------------------------------------- end to end
PROFILE = {"fp32": (1.0, 1.0, 0.0), "fp16": (0.7, 0.6, 0.01), "int8": (0.45, 0.3, 0.03)}


@pytest.fixture(scope="module")
def traded_bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle's real engines with profiles reassigned so that precisions trade accuracy for latency and
    memory (fp16 and int8 faster, smaller and less accurate, as on a device with fast int8). On this CPU fp32 is
    the fastest and the smallest engine of every block, so the real profiles would give every budget the same
    selection, and the replay would never switch."""
    from legocompile.bundle import read_bundle, write_bundle

    src = Path(tiny_bundle["path"])
    m = read_bundle(src)
    blocks = []
    for b in m.blocks:
        ref = b.option("s0", "fp32")
        opts = []
        for o in b.options:
            lat, mem, drop = PROFILE[o.precision]
            opts.append(replace(o, latency_ms=ref.latency_ms * lat, latency_p90_ms=ref.latency_p90_ms * lat,
                                memory_bytes=int(ref.memory_bytes * mem), accuracy_drop=drop, excluded=None))
        blocks.append(replace(b, options=tuple(opts)))
    out = tmp_path_factory.mktemp("traded") / "bundle"
    write_bundle(out, replace(m, blocks=tuple(blocks)), {rel: src / rel for rel in m.files})
    ex, ey = tiny_bundle["eval"]
    data = out.parent / "eval.npz"
    np.savez(data, x=np.asarray(ex, np.float32), y=np.asarray(ey))
    return out, data


@pytest.fixture(scope="module")
def quick_run(traded_bundle, tmp_path_factory):
    bundle, data = traded_bundle
    out = tmp_path_factory.mktemp("jetson-results")
    proc = subprocess.run([sys.executable, str(RUN), str(bundle), "--quick", "--frames", "30", "--eval-samples", "64",
                           "--data", str(data), "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (json_path,) = out.glob("*.json")
    return json.loads(json_path.read_text()), out, proc, bundle


def test_quick_run_writes_json_and_readable_pngs(quick_run):
    report, out, proc, _ = quick_run
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 1 + len(report["traces"]) == len(report["plots"])
    for p in pngs:
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert "[jetson]" in proc.stderr and "miss rate" in proc.stdout
    for name in report["traces"]:
        assert name in proc.stdout
    assert set(report["traces"]) == {"app_starts", "oscillating", "memory_squeeze"}


def test_quick_run_frames_and_misses_add_up(quick_run):
    report, *_ = quick_run
    for name, tr in report["traces"].items():
        s, fr, phases = tr["summary"], tr["frames"], tr["phases"]
        assert s["frames_scheduled"] == 30 == len(fr["response_ms"]) == sum(p["frames_scheduled"] for p in phases)
        assert s["frames"] + s["dropped"] == 30
        # misses recomputed from every frame's response time and its phase's budget
        misses = sum(1 for r, ph in zip(fr["response_ms"], fr["phase"])
                     if r is not None and phases[ph]["budget"]["latency_ms"] is not None
                     and r > phases[ph]["budget"]["latency_ms"])
        assert s["misses"] == misses == sum(p["misses"] for p in phases)
        assert s["frames_with_deadline"] == s["frames"]  # every shipped phase has a latency budget
        assert 0.0 <= s["miss_rate"] <= 1.0 and s["miss_rate"] == pytest.approx(misses / s["frames_with_deadline"])
        assert s["switch_ms"]["count"] == len(phases) - 1 == len(s["switch_ms"]["values"])
        assert all(v > 0 for v in s["switch_ms"]["values"]) and s["initial_load_ms"] > 0
        resp = [r for r in fr["response_ms"] if r is not None]
        assert all(r > 0 for r in resp) and s["response"]["runs"] == len(resp)


def test_quick_run_selections_are_the_optimizers_and_fit(quick_run):
    from legocompile.bundle import read_bundle
    from legocompile.optimize.select import select_options

    report, _, _, bundle = quick_run
    m = read_bundle(bundle)
    r = traces.bundle_ranges(m)
    switched = 0
    for name, tr in report["traces"].items():
        spec = traces.load_trace(SUITE / "traces" / f"{name}.json")
        for phase, ph in zip(tr["phases"], spec.phases):
            b = phase["budget"]
            assert b["latency_ms"] == pytest.approx(r.latency_lo_ms + ph.latency.value * (r.latency_hi_ms - r.latency_lo_ms))
            assert b["memory_mb"] * 1e6 == pytest.approx(r.memory_lo_bytes + ph.memory.value * (r.memory_hi_bytes - r.memory_lo_bytes))
            assert phase["infeasible"] is None  # the shipped traces stay within what the bundle can do
            expected = select_options(m, latency_ms=b["latency_ms"], memory_mb=b["memory_mb"])
            assert phase["selection"] == [f"{o.variant}/{o.precision}" for o in expected.options]
            assert phase["fits_budget"] == {"latency": True, "memory": True}
            assert expected.latency_ms <= b["latency_ms"] + 1e-12
            assert expected.memory_bytes <= round(b["memory_mb"] * 1e6)
            assert phase["predicted"]["latency_ms"] == pytest.approx(expected.latency_ms)
            assert phase["predicted"]["memory_bytes"] == expected.memory_bytes
            assert phase["accuracy"]["predicted"] == pytest.approx(expected.accuracy)
        switched += tr["summary"]["distinct_selections"] > 1
        changed = [p["blocks_changed"] for p in tr["phases"][1:]]
        assert all(c == sum(a != b for a, b in zip(p0["selection"], p1["selection"]))
                   for c, p0, p1 in zip(changed, tr["phases"], tr["phases"][1:]))
    assert switched == 3  # every shipped trace makes the runtime switch on this bundle


def test_quick_run_memory_and_accuracy_are_recorded(quick_run):
    report, *_ = quick_run
    for tr in report["traces"].values():
        rss = tr["summary"]["rss"]
        assert rss["base_bytes"] > 10_000_000 and rss["hwm_bytes"] >= max(p["rss"]["hwm_bytes"] for p in tr["phases"])
        assert rss["hwm_over_base_bytes"] == rss["hwm_bytes"] - rss["base_bytes"]
        assert rss["max_memory_budget_bytes"] == max(p["rss"]["memory_budget_bytes"] for p in tr["phases"])
        for p in tr["phases"]:
            assert p["rss"]["hwm_bytes"] > 0 and p["rss"]["memory_budget_bytes"] > 0
            assert p["rss"]["over_budget_bytes"] == p["rss"]["hwm_over_base_bytes"] - p["rss"]["memory_budget_bytes"]
            acc = p["accuracy"]
            assert 0.0 <= acc["measured_eval"] <= 1.0 and acc["eval_samples"] == 64
            assert 0.0 <= acc["measured_stream"] <= 1.0 and acc["stream_samples"] == p["frames"]
        assert tr["summary"]["sampled"]["samples"] >= 1 and len(tr["series"]["proc"]["t"]) >= 1


def test_quick_run_static_and_device(quick_run):
    report, *_ = quick_run
    st = report["static"]
    selectable = [e for e in st["engines"] if e["status"] != "skipped"]
    assert len(selectable) == report["bundle"]["selectable_options"]
    assert all(e["status"] == "ok" and e["measured"]["median_ms"] > 0 for e in selectable)
    whole = st["chain_vs_whole"]["whole_model"]
    assert whole["status"] == "ok" and whole["check_max_abs_diff"] < 1e-3  # composed model = teacher chain
    teacher = st["chain_vs_whole"]["selections"]["teacher (s0/fp32)"]
    assert teacher["chain_over_whole"] > 0 and len(teacher["chain_samples_ms"]) == teacher["chain"]["runs"]
    assert st["pytorch_eager"]["status"] == "skipped" and "--config" in st["pytorch_eager"]["reason"]
    assert st["trtexec"]["status"] == "skipped" and st["trtexec"]["reason"]
    dev = report["device"]
    assert dev["cpu"]["count"] >= 1 and "unavailable" in dev
    if not Path("/etc/nv_tegra_release").exists():
        assert "l4t" not in dev and "nvpmodel" not in dev and "jetpack" not in dev


# ---------------------------------------------------------------------------------------------------- CLI errors
@pytest.fixture(scope="module")
def run_main():
    return runpy.run_path(str(RUN))["main"]


def test_cli_bad_trace_is_one_line(run_main, tmp_path, capsys, tiny_bundle):
    bad = tmp_path / "typo.json"
    bad.write_text('{"phases": [{"duration_s": 1, "latancy": 0.5}]}')
    assert run_main([str(tiny_bundle["path"]), "--trace", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "typo.json" in err and "latancy" in err
    assert not (tmp_path / "o").exists()  # nothing ran


def test_cli_bad_bundle_and_data(run_main, tmp_path, capsys, tiny_bundle):
    assert run_main([str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    npz = tmp_path / "wrong.npz"
    np.savez(npz, x=np.zeros((4, 3, 32, 32), np.float32), y=np.zeros(4))
    assert run_main([str(tiny_bundle["path"]), "--data", str(npz), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "x has shape (4, 3, 32, 32)" in err


def test_replay_scores_frames_with_the_given_metric_on_labels_of_any_shape(traded_bundle):
    """Labels need not be class ids (masks here), and each frame is scored by the metric passed in, not by top-1:
    the streamed accuracy is the mean of the metric over the frames, and each selection's eval figure is the metric
    on the eval slice."""
    import legocompile
    from jetsonbench.replay import replay
    from jetsonbench.traces import bundle_ranges, resolve

    bundle, data = traded_bundle
    with np.load(data) as d:
        x = d["x"][:12]
    masks = np.random.default_rng(0).integers(0, 3, size=(len(x), 2, 2))

    def share_of_ones(outputs, labels):  # depends on the labels only: its value per frame is known
        assert len(outputs) == len(labels)
        return float(np.mean(labels == 1))

    tr = traces.load_trace(sorted(traces.shipped_traces())[0])
    m = legocompile.Runtime.load(bundle).manifest
    resolved = resolve(tr, bundle_ranges(m))
    frames = [3] * len(resolved)
    out = replay(lambda: legocompile.Runtime.load(bundle), tr, resolved, frames, rate_hz=None, inputs=x,
                 labels=masks, batch=1, sample_interval_s=0.05, eval_samples=6, progress=lambda msg: None,
                 tegrastats=False, metric=share_of_ones)
    per_frame = [float(np.mean(masks[k % len(x)] == 1)) for k in range(sum(frames))]
    assert out["summary"]["accuracy"]["measured_stream"] == pytest.approx(np.mean(per_frame))
    assert out["frames"]["score"] == pytest.approx(per_frame)
    for p in out["phases"]:
        assert p["accuracy"]["measured_eval"] == pytest.approx(float(np.mean(masks[:6] == 1)))
    with pytest.raises(ValueError, match="metric"):
        replay(lambda: legocompile.Runtime.load(bundle), tr, resolved, frames, rate_hz=None, inputs=x, labels=masks,
               batch=1, sample_interval_s=0.05, eval_samples=0, progress=lambda msg: None, tegrastats=False)


def test_cli_data_with_mask_labels_is_accepted(tmp_path, traded_bundle):
    """y may hold one label array per input (segmentation masks); x must still match the bundle's input."""
    from run import load_npz

    bundle, data = traded_bundle
    with np.load(data) as d:
        x = d["x"][:5]
    npz = tmp_path / "masks.npz"
    np.savez(npz, x=x, y=np.zeros((5, 4, 4), np.int64))
    xs, ys = load_npz(str(npz), (1, *x.shape[1:]))
    assert xs.shape == x.shape and ys.shape == (5, 4, 4)
