"""The benchmark scripts keep working (their numbers are for people, not for asserts)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_throughput_benchmark_prints_its_ratio():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "throughput.py"), "--device", "cpu",
                          "--width", "0.125", "--batch-size", "16", "--image-size", "8", "--steps", "2",
                          "--repeats", "1"], capture_output=True, text=True, check=True).stdout
    assert re.fullmatch(r"masked / plain = \d+\.\d{3}", out.strip().splitlines()[-1])


def test_gpu_benchmark_runs_every_part_in_its_tiny_cpu_version():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--device", "cpu", "--tiny"],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "FAILED" not in out, out
    for line in (r"eager dense: epoch \d+\.\d{3} s", r"graphs 89% sparse: epoch \d+\.\d{3} s .* peak memory \d+\.\d\d GiB",
                 r"eager: masked/plain step ratio = \d+\.\d{3}", r"graphs: masked/plain step ratio = \d+\.\d{3}",
                 r"agreement \|eager - graphs\|: max 0\.0000",  # the CPU runs the graph path without capture
                 r"fused K=2: .* ratio to one graphed trial = \d+\.\d{3}",
                 r"packing eager K=1: .* ratio to K=1 = 1\.000, peak memory per trial \d+\.\d\d GiB",
                 r"packing graphs K=2: .* ratio to K=1 = \d+\.\d{3}",
                 r"\| 2 trials fused, graphs \| 2 \| [\d,]+ \| \d+\.\d\d \|"):
        assert re.search(line, out), f"no line matching {line!r} in:\n{out}"
