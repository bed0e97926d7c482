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
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure

from .activation_sparsity import ActivationSparsity


def _figure() -> tuple[Figure, Axes]:
    fig = Figure(figsize=(6, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
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


def shared_levels(surfaces: Sequence[np.ndarray], count: int = 15) -> tuple[np.ndarray, Normalize]:
    """Contour levels and a colour scale covering every surface: log-spaced (and a log scale)
    when all losses are positive, for the reason `plot_surface_2d` gives; else linear. Panels
    drawn with them read alike: the same colour and the same line are the same loss."""
    finite = np.concatenate([np.asarray(s, dtype=float).ravel() for s in surfaces])
    finite = finite[np.isfinite(finite)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if high <= low:
        high = low + 1e-6
    if low > 0:
        return np.geomspace(low, high, count), LogNorm(low, high)
    return np.linspace(low, high, count), Normalize(low, high)


PANELS_PER_ROW = 4


def plot_surfaces_side_by_side(alphas: Sequence[float], betas: Sequence[float], surfaces: dict[str, np.ndarray],
                               path: str | Path, title: str = "", xlabel: str = "direction 1",
                               ylabel: str = "direction 2") -> Path:
    """One contour panel per surface (label -> `losses[i, j]` at (alphas[i], betas[j])), side by
    side (`PANELS_PER_ROW` to a row) on the same axes, contour levels and colour scale, with one
    colour bar: the paper's Figures 5 and 11 compare vanilla LTH and each tweak this way."""
    levels, norm = shared_levels(list(surfaces.values()))
    ncols = min(len(surfaces), PANELS_PER_ROW)
    nrows = -(-len(surfaces) // ncols)
    fig = Figure(figsize=(3.2 * ncols + 1.2, 3.3 * nrows + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    panels = fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)
    axes = list(panels.flat)
    for ax in axes[len(surfaces):]:
        ax.set_visible(False)
    filled = None
    for ax, (label, losses) in zip(axes, surfaces.items()):
        values = np.asarray(losses, dtype=float).T
        filled = ax.contourf(np.asarray(alphas), np.asarray(betas), values, levels=levels, norm=norm,
                             cmap="viridis", extend="both")
        ax.contour(np.asarray(alphas), np.asarray(betas), values, levels=levels, colors="white", linewidths=0.4)
        ax.plot([0], [0], "w+")
        ax.set(title=label, xlabel=xlabel, aspect="equal")
        ax.title.set_fontsize(9)
    for ax in panels[:, 0]:
        ax.set_ylabel(ylabel)
    fig.colorbar(filled, ax=axes[:len(surfaces)], label="loss", shrink=0.9, ticks=levels[::2], format="%.3g")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_lines(steps: Sequence[float], curves: dict[str, dict[str, Sequence[float]]], path: str | Path,
               title: str = "", xlabel: str = "eps (step / image norm)") -> Path:
    """One panel per view (view -> label -> losses at `steps`), every label a line on it, the
    panels sharing their y axis: the input-space curves of vanilla LTH and each tweak."""
    views = list(curves)
    fig = Figure(figsize=(4.2 * len(views) + 1.5, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(views), sharey=True, squeeze=False)[0]
    for ax, view in zip(axes, views):
        for label, losses in curves[view].items():
            ax.plot(steps, losses, marker="o", markersize=3, label=label)
        ax.set(title=view, xlabel=xlabel)
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("mean loss")
    axes[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        fig.suptitle(title, fontsize=10)
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
