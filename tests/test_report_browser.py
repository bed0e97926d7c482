"""The report page in headless Chromium: it renders (not blank), every image decodes (the
cross-family panel and the side-by-side landscapes among them), and the console stays clean.
Chromium comes from tests/chromium.py; when it cannot be found or installed the test fails with
the reason instead of skipping."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest

from chromium import run_chromium
from dashboards import collect, report

AT_TRT = "swish+skip-conv1x1+ls0.1+gradinit"
ACC = {"vanilla": [0.90, 0.87, 0.80], "swish": [0.91, 0.90, 0.86], "swish+rewind20": [0.90, 0.905, 0.88],
       AT_TRT: [0.92, 0.91, 0.89]}
SPARSITY = [0.2, 0.36, 0.488]
ARCHS = {"resnet18": 0.0, "vgg16": -0.05}  # two ticket families: the cross-family panel has two cells
STEPS = np.linspace(-1, 1, 5)


def bowl(depth: float) -> np.ndarray:
    """A loss surface on STEPS x STEPS, steeper with `depth`."""
    return 0.5 + depth * np.add.outer(STEPS ** 2, 0.5 * STEPS ** 2)


def synthetic_sweep() -> collect.Sweep:
    """A two-seed sweep over two architectures shaped like collect.trials_frame's output, with the
    landscapes an --analyze --analyze-epochs 1 sweep logs (for one architecture), without MLflow."""
    rows, landscapes, start = [], [], pd.Timestamp("2026-01-01", tz="UTC")
    for arch, shift in ARCHS.items():
        for seed in (0, 1):
            ticket = f"tk-{arch}-{seed}"
            rows.append({"run_id": f"draw-{arch}-{seed}", "stage": "draw", "status": "FINISHED", "final": True,
                         "ticket_key": ticket, "seed": seed, "arch": arch, "dense_test_acc": 0.91 + 0.01 * seed})
            for t, (tweak, accs) in enumerate(ACC.items()):
                for level, (acc, sparsity) in enumerate(zip(accs, SPARSITY), start=1):
                    run_id = f"{arch}-{tweak}-{level}-{seed}"
                    rows.append({"run_id": run_id, "stage": "spend", "status": "FINISHED", "arch": arch,
                                 "final": True, "tweak": tweak, "ticket_key": ticket, "spend_key": run_id,
                                 "seed": seed, "level": level, "sparsity": sparsity,
                                 "rewind_epoch": 20 if "rewind" in tweak else 0,
                                 "test_acc": acc + shift + 0.004 * seed, "best_val_acc": acc,
                                 "device_seconds": 30.0 * level})
                    if level == 3 and arch == "resnet18":
                        landscapes += [{"run_id": run_id, "weights": weights, "epoch": epoch, "steps": STEPS,
                                        "surface_2d": bowl(depth * (1 + t)), "input_steps": STEPS / 2,
                                        "input_random_1d": 0.4 + depth * STEPS ** 2,
                                        "input_gradient_sign_1d": 0.4 + depth * (1 + t) * (STEPS + 1),
                                        "input_surface_2d": bowl(depth / (1 + t))}
                                       for weights, epoch, depth in (("epoch_1", 1, 4.0), ("final", None, 1.0))]
    trials = pd.DataFrame(rows).assign(dataset="digits", width=0.125, prune_method="imp", start_time=start)
    draw_levels = pd.DataFrame(columns=["run_id", "ticket_key", "level", *collect.DRAW_LEVEL_METRICS])
    frame = pd.DataFrame(landscapes, columns=collect.LANDSCAPE_COLUMNS).astype({"epoch": "Int64"})
    return collect.Sweep(experiment="browser", tracking_uri="sqlite:///none.db", trials=trials,
                         draw_levels=draw_levels, optuna_note="This is a grid sweep.", landscapes=frame)


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


# The figures of the cross-family panel and the landscapes (of the epoch-1 and the final weights,
# each with weight-space contours, input-space lines and input-space contours).
NEW_FIGURES = {"accuracy vs sparsity per architecture and data set": 1, "weight-space loss contours": 2,
               "input-space loss along directions": 2, "input-space loss contours": 2}


def test_every_image_decodes(page, tmp_path):
    proc = run_chromium(page.resolve().as_uri(), tmp_path / "profile", "--dump-dom")
    images, decoded, mark = image_states(proc.stdout)
    assert images == len(list(page.parent.glob("*.png"))) >= 5
    assert decoded == images and mark == f"{images}/{images}"
    for alt, count in NEW_FIGURES.items():
        shown = re.findall(rf'<img\b[^>]*alt="{re.escape(alt)}"[^>]*>', proc.stdout)
        assert len(shown) == count and all('data-ok="1"' in tag for tag in shown), alt
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
