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
    for line in (r"epoch seconds dense: \d+\.\d{3} ", r"epoch seconds 89% sparse: \d+\.\d{3} ",
                 r"share of epoch dense: evaluation \d\.\d{3}, checkpointing \d\.\d{3}, reporting \d\.\d{3}",
                 r"peak memory 89% sparse: \d+\.\d\d GiB", r"compile speed-up \(eager / compiled\) = \d+\.\d{3}",
                 r"packing K=1: .* ratio to K=1 = 1\.000, peak memory per trial \d+\.\d\d GiB",
                 r"packing K=2: .* ratio to K=1 = \d+\.\d{3}"):
        assert re.search(line, out), f"no line matching {line!r} in:\n{out}"
