"""matplotlib (Agg) figures for the report, each written as a PNG; every function returns the
path it wrote, or None when there is nothing to draw."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import Normalize, TwoSlopeNorm  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .analysis import VANILLA  # noqa: E402

DPI = 100
BASE_COLOR, DENSE_COLOR = "black", "tab:gray"
# The x-axis label of each sparsity axis (`analysis.SPARSITY_AXES`).
SPARSITY_LABELS = {"nominal": "sparsity (%)", "live": "sparsity among live weights (%)"}
SPARSITY_LABEL = SPARSITY_LABELS["nominal"]


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def _to_density(x):
    return -np.log10(np.clip(1 - np.asarray(x, dtype=float) / 100, 1e-6, None))


def _from_density(y):
    return 100 * (1 - 10 ** (-np.asarray(y, dtype=float)))


def sparsity_axis(ax, sparsities_pct, label: str = SPARSITY_LABEL) -> None:
    """Log of the remaining weights, as LTH plots do, so 90% .. 97% do not bunch up."""
    ax.set_xscale("function", functions=(_to_density, _from_density))
    ticks = sorted({round(float(s), 1) for s in sparsities_pct if pd.notna(s)})
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks], rotation=45 if len(ticks) > 6 else 0)
    ax.set_xlabel(label)


def _curve(ax, frame: pd.DataFrame, label: str, color, marker="o", linestyle="-", band: bool = True) -> None:
    frame = frame.sort_values("sparsity")
    x = 100 * frame["sparsity"]
    ax.plot(x, 100 * frame["mean"], marker=marker, linestyle=linestyle, color=color, label=label, ms=4)
    if band and frame["n"].max() >= 2:
        ax.fill_between(x, 100 * frame["ci_low"], 100 * frame["ci_high"], color=color, alpha=0.15, lw=0)


def _dense_line(ax, dense: pd.Series | None) -> None:
    if dense is None:
        return
    mean = 100 * dense["dense_mean"]
    ax.axhline(mean, color=DENSE_COLOR, linestyle="--", lw=1, label="dense")
    if dense["n_tickets"] >= 2 and pd.notna(dense["dense_std"]):
        ax.axhspan(mean - 100 * dense["dense_std"], mean + 100 * dense["dense_std"], color=DENSE_COLOR, alpha=0.1, lw=0)


def wrapped(label: str, width: int = 40) -> str:
    """A combination's label broken before a `+` wherever a line would pass `width`, so that a
    panel title stays over its own panel."""
    lines = [""]
    for i, part in enumerate(label.split("+")):
        piece = part if i == 0 else f"+{part}"
        if lines[-1] and len(lines[-1]) + len(piece) > width:
            lines.append(piece)
        else:
            lines[-1] += piece
    return "\n".join(lines)


def accuracy_panels(summary: pd.DataFrame, baseline: pd.DataFrame, dense: pd.Series | None,
                    path: Path, title: str, sparsity_label: str = SPARSITY_LABEL) -> Path | None:
    """One panel per tweak combination against vanilla LTH and the dense net (Figures 1, 4, 8)."""
    if summary.empty:
        return None
    combos = sorted(t for t in summary["tweak"].unique() if t != VANILLA) or [VANILLA]
    ncols = min(3, len(combos))
    nrows = math.ceil(len(combos) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.3 * nrows), sharey=True, squeeze=False)
    for ax, combo in zip(axes.flat, combos):
        _dense_line(ax, dense)
        if not baseline.empty:
            _curve(ax, baseline, "vanilla LTH", BASE_COLOR, marker="s", linestyle=":")
        if combo != VANILLA:
            _curve(ax, summary[summary["tweak"] == combo], "this combination", "tab:red")
        sparsity_axis(ax, 100 * summary["sparsity"], sparsity_label)
        ax.set_title(wrapped(combo), fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    for ax in axes.flat[len(combos):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("test accuracy (%)")
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_overview(summary: pd.DataFrame, baseline: pd.DataFrame, dense: pd.Series | None,
                      path: Path, title: str, sparsity_label: str = SPARSITY_LABEL) -> Path | None:
    """Every combination on one axis, vanilla LTH in black; no bands, the panels have them."""
    if summary.empty:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    _dense_line(ax, dense)
    if not baseline.empty:
        _curve(ax, baseline, "vanilla LTH", BASE_COLOR, marker="s", linestyle=":", band=False)
    combos = sorted(t for t in summary["tweak"].unique() if t != VANILLA)
    palette = plt.get_cmap("tab10" if len(combos) <= 10 else "tab20")
    for i, combo in enumerate(combos):
        _curve(ax, summary[summary["tweak"] == combo], combo, palette(i % palette.N), band=False)
    sparsity_axis(ax, 100 * summary["sparsity"], sparsity_label)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def heatmap(table: pd.DataFrame, path: Path, title: str, colorbar: str, fmt: str = "{:+.2f}",
            diverging: bool = True, sparsity_label: str = SPARSITY_LABEL) -> Path | None:
    """Annotated tweak x sparsity grid; blank cells where a value is missing."""
    if table.empty or table.isna().all().all():
        return None
    values = table.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.0 + 0.9 * table.shape[1] + 0.07 * max(len(str(i)) for i in table.index),
                                    1.2 + 0.45 * table.shape[0]))
    if diverging:
        span = np.nanmax(np.abs(values)) or 1.0
        norm, cmap = TwoSlopeNorm(vmin=-span, vcenter=0, vmax=span), "RdBu"
    else:
        norm, cmap = Normalize(np.nanmin(values), np.nanmax(values)), "viridis"
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        # Dark text on light cells: the ends of RdBu are dark, the low end of viridis is.
        dark_cell = not np.isnan(v) and (abs(norm(v) - 0.5) > 0.3 if diverging else norm(v) < 0.6)
        ax.text(j, i, "–" if np.isnan(v) else fmt.format(v), ha="center", va="center", fontsize=8,
                color="white" if dark_cell else "black")
    ax.set_xticks(range(table.shape[1]), [f"{c:g}" for c in table.columns])
    ax.set_yticks(range(table.shape[0]), list(table.index))
    ax.set_xlabel(sparsity_label)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar)
    return _save(fig, path)


def frontier_plot(frontier: pd.DataFrame, path: Path, title: str, sparsity_label: str = SPARSITY_LABEL
                  ) -> Path | None:
    """Highest sparsity matching the dense accuracy, per combination; vanilla LTH in black."""
    if frontier.empty or frontier["dense_mean"].isna().all():
        return None
    frame = frontier.sort_values("frontier_sparsity", na_position="first")
    values = (100 * frame["frontier_sparsity"]).fillna(0).to_numpy()
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.4 * len(frame)))
    colors = [BASE_COLOR if t == VANILLA else "tab:green" for t in frame["tweak"]]
    ax.barh(range(len(frame)), values, color=colors)
    for i, (v, s) in enumerate(zip(values, frame["frontier_sparsity"])):
        ax.text(v + 0.5, i, "none" if pd.isna(s) else f"{v:.1f}%", va="center", fontsize=8)
    ax.set_yticks(range(len(frame)), list(frame["tweak"]))
    ax.set_xlim(0, 105)
    ax.set_xlabel(f"highest {sparsity_label.replace(' (%)', '')} matching the dense accuracy (%)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def critical_plot(summary: pd.DataFrame, critical: pd.DataFrame, path: Path, title: str,
                  sparsity_label: str = SPARSITY_LABEL) -> Path | None:
    """From init against weight rewinding, with the critical sparsity marked (Figure 4b)."""
    if critical.empty:
        return None
    ncols = min(3, len(critical))
    nrows = math.ceil(len(critical) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.3 * ncols, 3.3 * nrows), squeeze=False)
    for ax, (_, pair) in zip(axes.flat, critical.iterrows()):
        _curve(ax, summary[summary["tweak"] == pair["from_init"]], f"{pair['from_init']} (init)", "tab:purple")
        _curve(ax, summary[summary["tweak"] == pair["rewound"]], pair["rewound"], "tab:green")
        if pd.notna(pair["critical_sparsity"]):
            ax.axvline(100 * pair["critical_sparsity"], color="tab:orange", linestyle="--",
                       label=f"critical {100 * pair['critical_sparsity']:.1f}%")
        else:
            ax.text(0.02, 0.04, pair["note"], transform=ax.transAxes, fontsize=7, wrap=True)
        sparsity_axis(ax, 100 * summary["sparsity"], sparsity_label)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    for ax in axes.flat[len(critical):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def importance_plot(levels: list, path: Path) -> Path | None:
    """Optuna parameter importances, one panel per level that has them."""
    levels = [lv for lv in levels if lv.importances]
    if not levels:
        return None
    fig, axes = plt.subplots(1, len(levels), figsize=(4 * len(levels), 0.8 + 0.4 * max(len(lv.importances) for lv in levels)),
                             squeeze=False)
    for ax, lv in zip(axes.flat, levels):
        names = list(lv.importances)[::-1]
        ax.barh(names, [lv.importances[n] for n in names], color="tab:blue")
        ax.set_xlim(0, 1)
        ax.set_title(f"level {lv.level}", fontsize=10)
        ax.set_xlabel("importance")
    fig.tight_layout()
    return _save(fig, path)


def _palette(n: int):
    return plt.get_cmap("tab10" if n <= 10 else "tab20")


def _tweak_colors(tweaks) -> dict:
    """Vanilla in black, the others from one palette, so a tweak keeps its color across figures."""
    others = sorted(t for t in set(tweaks) if t != VANILLA)  # by name: the same in every figure
    palette = _palette(len(others))
    return {t: BASE_COLOR if t == VANILLA else palette(others.index(t) % palette.N) for t in tweaks}


def act_sparsity_bars(table: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Table A1 as grouped bars: one group per stage (and overall), one bar per combination."""
    if table.empty or table.isna().all().all():
        return None
    stages, tweaks = list(table.index), list(table.columns)
    colors = _tweak_colors(tweaks)
    width = 0.8 / len(tweaks)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(stages) * max(2, len(tweaks)) + 2), 4))
    x = np.arange(len(stages))
    for i, tweak in enumerate(tweaks):
        ax.bar(x - 0.4 + width * (i + 0.5), table[tweak].to_numpy(dtype=float), width, label=tweak,
               color=colors[tweak])
    ax.set_xticks(x, stages, rotation=30 if len(stages) > 6 else 0)
    ax.set_ylabel("activations with |a| <= 1e-3 (%)")
    ax.set_ylim(0, max(5.0, float(np.nanmax(table.to_numpy(dtype=float))) * 1.15))
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def _eigen_scale(ax, values) -> None:
    """Log y when the eigenvalues are positive and span more than a factor of 20."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) and values.min() > 0 and values.max() / values.min() > 20:
        ax.set_yscale("log")


def _eigen_line(ax, frame: pd.DataFrame, x: str, label: str, color, scale: float = 1.0) -> None:
    frame = frame.sort_values(x)
    xs = scale * frame[x]
    ax.plot(xs, frame["mean"], marker="o", ms=4, color=color, label=label,
            linestyle=":" if label == VANILLA else "-")
    if frame["n"].max() >= 2:
        ax.fill_between(xs, frame["ci_low"], frame["ci_high"], color=color, alpha=0.12, lw=0)


def _eigen_figure(frame: pd.DataFrame, x: str, scale: float, figsize: tuple[float, float]):
    """One line (mean, 95% band over seeds) per combination of the top Hessian eigenvalue against `x`."""
    tweaks = sorted(frame["tweak"].unique(), key=lambda t: (t != VANILLA, t))
    colors = _tweak_colors(tweaks)
    fig, ax = plt.subplots(figsize=figsize)
    for tweak in tweaks:
        _eigen_line(ax, frame[frame["tweak"] == tweak], x, tweak, colors[tweak], scale=scale)
    _eigen_scale(ax, frame["mean"])
    ax.set_ylabel("top Hessian eigenvalue")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return fig, ax


def hessian_vs_sparsity(summary: pd.DataFrame, path: Path, title: str, sparsity_label: str = SPARSITY_LABEL
                        ) -> Path | None:
    """Final top Hessian eigenvalue per combination against sparsity, mean ±95% CI over seeds."""
    if summary.empty:
        return None
    fig, ax = _eigen_figure(summary, "sparsity", 100, (9, 5))
    sparsity_axis(ax, 100 * summary["sparsity"], sparsity_label)
    ax.set_title(title)
    return _save(fig, path)


def hessian_vs_epoch(curves: pd.DataFrame, path: Path, title: str) -> Path | None:
    """Top Hessian eigenvalue over training per combination at one level (Figure A12)."""
    if curves.empty:
        return None
    fig, ax = _eigen_figure(curves, "epoch", 1.0, (8, 4.5))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_title(title)
    return _save(fig, path)


def claim_plot(rows: pd.DataFrame, per_pair: pd.DataFrame, path: Path, title: str) -> Path | None:
    """One claim (dashboards.claims) as a forest plot: a line per finding with each pair's
    difference (dots), the mean and its 95% interval (bar); the claim is that it lies right of 0."""
    rows = rows[rows["ci_low"].notna()]
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(rows)))
    for y, (index, row) in enumerate(rows.iterrows()):
        values = per_pair.loc[per_pair["row"] == index, "value"].to_numpy(dtype=float)
        color = {"holds": "tab:green", "contradicted": "tab:red"}.get(row["verdict"], "tab:gray")
        ax.scatter(values, np.full(len(values), y) + np.linspace(-0.12, 0.12, len(values)), s=12,
                   color=color, alpha=0.5, lw=0)
        ax.errorbar(row["diff_mean"], y, xerr=[[row["diff_mean"] - row["ci_low"]], [row["ci_high"] - row["diff_mean"]]],
                    fmt="D", color=color, ms=5, capsize=3)
    ax.axvline(0, color=BASE_COLOR, lw=0.8)
    labels = [f"{c} [{s.split(' ')[-1]}]" if rows["setting"].nunique() > 1 else c
              for c, s in zip(rows["compares"], rows["setting"])]
    ax.set_yticks(range(len(rows)), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(f"paired difference ({rows['unit'].iloc[0]}); dots: pairs, bar: mean and 95% CI")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def family_panel(summary: pd.DataFrame, baseline: pd.DataFrame, dense: pd.DataFrame, families: pd.DataFrame,
                 combos: list[str], path: Path, title: str) -> Path | None:
    """Figures 6 and 7: one cell per ticket family (a row per data set; architecture, width and,
    with several, mask source across), vanilla LTH in black and each chosen combination against
    sparsity, mean and 95% CI over seeds, dense as a dashed line. A combination keeps its color
    in every cell."""
    cells = families[families["setting"].isin(summary["setting"])]
    if cells.empty or not combos:
        return None
    rows = list(dict.fromkeys(cells["dataset"].astype(str)))
    ncols = max(int((cells["dataset"].astype(str) == d).sum()) for d in rows)
    several_sources = cells["prune_method"].nunique() > 1
    colors = _tweak_colors([VANILLA, *combos])
    fig, axes = plt.subplots(len(rows), ncols, figsize=(4.0 * ncols, 3.3 * len(rows)), squeeze=False)
    for r, dataset in enumerate(rows):
        mine = cells[cells["dataset"].astype(str) == dataset]
        for c in range(ncols):
            ax = axes[r, c]
            if c >= len(mine):
                ax.set_visible(False)
                continue
            family = mine.iloc[c]
            setting = family["setting"]
            pick = lambda frame: frame[frame["setting"] == setting]  # noqa: E731
            ref = pick(dense)
            _dense_line(ax, ref.iloc[0] if len(ref) else None)
            if len(pick(baseline)):
                _curve(ax, pick(baseline), "vanilla LTH", BASE_COLOR, marker="s", linestyle=":")
            for combo in combos:
                points = pick(summary)[pick(summary)["tweak"] == combo]
                if len(points):
                    _curve(ax, points, combo, colors[combo])
            sparsity_axis(ax, 100 * pick(summary)["sparsity"])
            try:
                name = f"{family['arch']} x{float(family['width']):g}"
            except (TypeError, ValueError):  # no width logged
                name = str(family["arch"])
            ax.set_title(f"{dataset}: {name}" + (f" ({family['prune_method']})" if several_sources else ""),
                         fontsize=10)
            ax.grid(alpha=0.3)
            if c == 0:
                ax.set_ylabel("test accuracy (%)")
    handles, labels = {}, []
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = list(handles)
    fig.legend([handles[k] for k in labels], labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8,
               bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, path)
