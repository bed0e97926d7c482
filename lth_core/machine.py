"""The platform a result was computed on, recorded with every draw and spend.

Training at CPU scale is sensitive to the order of float operations: the thread count and the
SIMD kernels torch dispatches to (AVX2 or AVX-512) change which sums are formed, and a few
hundred SGD steps turn that into points of accuracy. So a result carries its CPU model and SIMD
flags, the kernels torch chose, the torch, BLAS and oneDNN versions, the thread count, and on
CUDA the GPU's name.
"""

from __future__ import annotations

import functools
import platform
import re
from pathlib import Path

import torch

# The /proc/cpuinfo flags that decide which vector kernels run (the rest is not about numerics).
SIMD_FLAG = re.compile(r"^(sse4_\d|avx\w*|fma\w*|f16c|amx\w*)$")


def platform_info(device: torch.device | str = "cpu") -> dict[str, str]:
    """This process's platform as strings (MLflow params): cpu, cpu_flags, cpu_capability, torch,
    blas, threads, and gpu when `device` is a CUDA device."""
    device = torch.device(device)
    info = {**_process_platform(), "threads": str(torch.get_num_threads())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


@functools.cache
def _process_platform() -> dict[str, str]:
    """What cannot change within a process, read once: every draw and spend records it."""
    return {"cpu": _cpu_model(), "cpu_flags": " ".join(_simd_flags()),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__, "blas": _blas()}


def _cpuinfo_field(name: str) -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    found = re.search(rf"^{name}\s*:\s*(.*)$", text, re.MULTILINE)
    return found.group(1).strip() if found else None


def _cpu_model() -> str:
    return _cpuinfo_field("model name") or platform.processor() or platform.machine() or "unknown"


def _simd_flags() -> list[str]:
    return sorted(f for f in (_cpuinfo_field("flags") or "").split() if SIMD_FLAG.match(f))


def _blas() -> str:
    """e.g. 'mkl 2024.2, onednn 3.12.0': the BLAS torch was built with and the library versions."""
    config = torch.__config__.show()
    parts = []
    blas = re.search(r"BLAS_INFO=(\w+)", config)
    if blas:
        mkl = re.search(r"Math Kernel Library Version ([\w.]+)", config)
        parts.append(f"{blas.group(1)} {mkl.group(1)}" if blas.group(1) == "mkl" and mkl else blas.group(1))
    onednn = re.search(r"MKL-DNN v([\d.]+)", config)
    if onednn:
        parts.append(f"onednn {onednn.group(1)}")
    return ", ".join(parts) or "unknown"
