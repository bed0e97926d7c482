"""Find a headless Chromium for the report's browser test, installing Debian's `chromium`
package when running as root with apt (so `make test` works on a fresh machine).

`python tests/chromium.py` installs it if needed and prints the path.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
HEADLESS_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--enable-logging=stderr", "--v=0"]


class ChromiumUnavailable(RuntimeError):
    pass


def _found() -> str | None:
    for name in NAMES:
        if path := shutil.which(name):
            return path
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def find_chromium(install: bool = True) -> str:
    """The Chromium binary's path; installs it with apt-get when allowed, else says why not."""
    if path := _found():
        return path
    if not install:
        raise ChromiumUnavailable("Chromium is not installed (apt-get install -y chromium)")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise ChromiumUnavailable("Chromium is not installed and cannot be installed here "
                                  "(needs root and apt-get): run `apt-get install -y chromium`")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
        if proc.returncode != 0:
            raise ChromiumUnavailable(f"`{' '.join(command)}` failed ({proc.returncode}): {proc.stderr[-2000:]}")
    if path := _found():
        return path
    raise ChromiumUnavailable("apt-get installed chromium, but no chromium binary is on PATH")


def run_chromium(url: str, profile: Path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """One headless Chromium invocation (a fresh profile folder, no network side traffic)."""
    command = [find_chromium(), *HEADLESS_FLAGS, f"--user-data-dir={profile}", *args, url]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


if __name__ == "__main__":
    try:
        print(find_chromium())
    except ChromiumUnavailable as exc:
        sys.exit(f"error: {exc}")
