"""The report page in headless Chromium: it renders (not blank), every image decodes, and the
console stays clean. Chromium comes from tests/chromium.py; when it cannot be found or
installed the test fails with the reason instead of skipping."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from chromium import run_chromium
from dashboards import collect, report

ACC = {"vanilla": [0.90, 0.87, 0.80], "swish": [0.91, 0.90, 0.86], "swish+rewind20": [0.90, 0.905, 0.88]}
SPARSITY = [0.2, 0.36, 0.488]


def synthetic_sweep() -> collect.Sweep:
    """A two-seed sweep shaped like collect.trials_frame's output, without MLflow."""
    rows, start = [], pd.Timestamp("2026-01-01", tz="UTC")
    for seed in (0, 1):
        rows.append({"run_id": f"draw{seed}", "stage": "draw", "status": "FINISHED", "final": True,
                     "ticket_key": f"tk{seed}", "seed": seed, "dense_test_acc": 0.91 + 0.01 * seed})
        for tweak, accs in ACC.items():
            for level, (acc, sparsity) in enumerate(zip(accs, SPARSITY), start=1):
                rows.append({"run_id": f"{tweak}-{level}-{seed}", "stage": "spend", "status": "FINISHED",
                             "final": True, "tweak": tweak, "ticket_key": f"tk{seed}",
                             "spend_key": f"{tweak}-{level}-{seed}", "seed": seed, "level": level,
                             "sparsity": sparsity, "rewind_epoch": 20 if "rewind" in tweak else 0,
                             "test_acc": acc + 0.004 * seed, "best_val_acc": acc, "device_seconds": 30.0 * level})
    trials = pd.DataFrame(rows).assign(dataset="digits", arch="resnet18", width=0.125, prune_method="imp",
                                       start_time=start)
    draw_levels = pd.DataFrame(columns=["run_id", "ticket_key", "level", *collect.DRAW_LEVEL_METRICS])
    return collect.Sweep(experiment="browser", tracking_uri="sqlite:///none.db", trials=trials,
                         draw_levels=draw_levels, optuna_note="This is a grid sweep.")


def console_lines(stderr: str) -> list[str]:
    """Messages the page wrote to the console (errors included) or uncaught exceptions."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def image_states(dom: str) -> tuple[int, int, str | None]:
    """(images, images that decoded, the body's 'ok/total' mark) from a --dump-dom."""
    images = re.findall(r"<img\b[^>]*>", dom)
    decoded = [i for i in images if 'data-ok="1"' in i]
    mark = re.search(r'<body[^>]*data-images="([^"]*)"', dom)
    return len(images), len(decoded), mark.group(1) if mark else None


@pytest.fixture(scope="module")
def page(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("browser")
    return report.build_report(synthetic_sweep(), out).html


def test_report_renders_in_chromium(page, tmp_path):
    shot = tmp_path / "shot.png"
    proc = run_chromium(page.resolve().as_uri(), tmp_path / "profile", f"--screenshot={shot}",
                        "--window-size=1200,4000")
    assert shot.exists(), f"no screenshot (exit {proc.returncode}): {proc.stderr[-2000:]}"
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (4000, 1200)
    assert pixels.std() > 0.05, "the screenshot is blank"
    assert (pixels.min(axis=-1) < 0.5).mean() > 0.01, "almost nothing dark was drawn"
    assert console_lines(proc.stderr) == []


def test_every_image_decodes(page, tmp_path):
    proc = run_chromium(page.resolve().as_uri(), tmp_path / "profile", "--dump-dom")
    images, decoded, mark = image_states(proc.stdout)
    assert images == len(list(page.parent.glob("*.png"))) >= 5
    assert decoded == images and mark == f"{images}/{images}"
    assert console_lines(proc.stderr) == []


def test_checks_catch_a_broken_page(page, tmp_path):
    """A broken image and a script error must trip the same checks."""
    text = page.read_text().replace('base64,', 'base64,AAAA', 1)
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace("</body>", "<script>notDefined();</script></body>"))
    proc = run_chromium(broken.as_uri(), tmp_path / "profile", "--dump-dom")
    images, decoded, mark = image_states(proc.stdout)
    assert decoded == images - 1 and mark == f"{images - 1}/{images}"
    assert any("notDefined" in line for line in console_lines(proc.stderr))
