"""The benchmark script keeps working (its numbers are for people, not for asserts)."""

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
