"""PNG figures of the analyses.

Figures are built on the Agg canvas directly (no pyplot), so nothing needs a display and
the process-wide matplotlib backend is left alone for whoever else imports matplotlib.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .activation_sparsity import ActivationSparsity


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120)
    return path


def plot_surface_1d(alphas: Sequence[float], losses: Sequence[float], path: str | Path, title: str = "") -> Path:
    fig, ax = _figure()
    ax.plot(alphas, losses, marker="o", markersize=3)
    ax.set(xlabel="step along direction", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_surface_2d(alphas: Sequence[float], betas: Sequence[float], losses: np.ndarray, path: str | Path,
                    title: str = "") -> Path:
    """Contours of `losses[i, j]` at (alphas[i], betas[j]), as `loss_surface_2d` returns it.
    Levels are log-spaced when the losses are positive: far from the minimum the loss grows by
    orders of magnitude, and linear levels would leave the basin as one blank contour."""
    losses = np.asarray(losses)
    low, high = losses.min(), losses.max()
    levels = np.geomspace(low, high, 15) if 0 < low < high else 15
    fig, ax = _figure()
    contours = ax.contour(np.asarray(alphas), np.asarray(betas), losses.T, levels=levels, cmap="viridis")
    ax.clabel(contours, fontsize=7, fmt="%.2f")
    ax.plot([0], [0], "k+")
    ax.set(xlabel="direction 1", ylabel="direction 2", title=title, aspect="equal")
    return _save(fig, path)


def plot_eigenvalue_history(epochs: Sequence[int], values: Sequence[float], path: str | Path,
                            title: str = "top Hessian eigenvalue") -> Path:
    fig, ax = _figure()
    ax.plot(epochs, values, marker="o", markersize=3)
    ax.set(xlabel="epoch", ylabel="top eigenvalue", title=title)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_activation_sparsity(results: dict[str, ActivationSparsity], path: str | Path,
                             title: str = "near-zero activations per stage") -> Path:
    """Grouped bars: one group per stage, one bar per result, in percent."""
    stages = list(dict.fromkeys(s for r in results.values() for s in r.stages))
    fig, ax = _figure()
    width = 0.8 / max(1, len(results))
    x = np.arange(len(stages))
    for i, (label, r) in enumerate(results.items()):
        heights = [100 * r.stages[s].fraction if s in r.stages else 0.0 for s in stages]
        ax.bar(x + (i - (len(results) - 1) / 2) * width, heights, width, label=label)
    ax.set_xticks(x, stages)
    ax.set(ylabel="% of activations near zero", title=title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)
