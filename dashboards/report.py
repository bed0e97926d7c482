"""`python -m dashboards.report --experiment NAME`: one sweep's MLflow runs -> report.html,
PNGs and trials.parquet, attached to the sweep's parent run under `report/`."""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from lth_core.inputs import Parser, writable_folder
from tracking import layout
from tracking.probe import redact

from . import analysis, claims, collect, html, plots
from .analysis import Analysis
from .collect import Sweep

TRIAL_COLUMNS = ["run_id", "stage", "status", "tweak", "level", "sparsity", "live_sparsity", "seed", "rewind_epoch",
                 "test_acc", "best_val_acc", "device_seconds", "act_sparsity", "hessian_top_eigenvalue"]
HOW_TO_ANALYZE = ("run the sweep with --analyze (activation sparsity per stage and the final top Hessian "
                  "eigenvalue of every spend) and/or --hessian-every N (the top Hessian eigenvalue every N "
                  "epochs of every spend)")
MAX_TRIAL_ROWS = 400
SPARSITY_AXIS_TEXT = {"nominal": "nominal sparsity (every prunable weight)",
                      "live": "sparsity among live weights (those an input of the data set's shape reaches)"}


@dataclass
class ReportFiles:
    html: Path
    parquet: Path
    pngs: list[Path] = field(default_factory=list)


def _pct(value, digits: int = 1) -> str:
    return "–" if pd.isna(value) else f"{100 * value:.{digits}f}"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def accuracy_table(summary: pd.DataFrame) -> pd.DataFrame:
    """tweak x sparsity cells 'mean ±CI half-width' in %, the way papers print them."""
    cells = summary.assign(
        cell=[_pct(m) + ("" if pd.isna(lo) else f" ±{100 * (m - lo):.1f}")
              for m, lo in zip(summary["mean"], summary["ci_low"])],
        sparsity_pct=(100 * summary["sparsity"]).round(1))
    table = cells.pivot_table(index="tweak", columns="sparsity_pct", values="cell", aggfunc="first")
    table.columns = [f"{c:g}%" for c in table.columns]
    return table.reset_index()


def _setting_sections(result: Analysis, out: Path, sections: dict[str, html.Section]) -> list[Path]:
    """Figures and tables for each ticket family (most sweeps have one)."""
    pngs: list[Path] = []
    several = len(result.settings) > 1
    label = plots.SPARSITY_LABELS[result.sparsity_axis]

    def png(name: str, setting: str) -> Path:
        return out / (f"{name}_{_slug(setting)}.png" if several else f"{name}.png")

    def keep(path: Path | None, section: str, alt: str) -> None:
        if path is not None:
            pngs.append(path)
            sections[section].add(html.image(path, alt))

    for setting in result.settings:
        pick = lambda frame: frame[frame["setting"] == setting]  # noqa: E731
        summary, baseline, dense = pick(result.summary), pick(result.baseline), pick(result.dense)
        dense_row = dense.iloc[0] if len(dense) else None
        heading = f"{setting}: " if several else ""
        if several:
            for key in ("accuracy", "gain", "frontier", "cost"):
                sections[key].add(html.heading(setting))

        acc = sections["accuracy"]
        if dense_row is not None:
            acc.add(html.paragraph(f"Dense accuracy {_pct(dense_row['dense_mean'], 2)}% over "
                                   f"{dense_row['n_tickets']} ticket(s) ({dense_row['source']})."))
        keep(plots.accuracy_overview(summary, baseline, dense_row, png("accuracy_overview", setting),
                                     f"{heading}test accuracy vs sparsity", label), "accuracy", "all combinations")
        keep(plots.accuracy_panels(summary, baseline, dense_row, png("accuracy_vs_sparsity", setting),
                                   f"{heading}each combination vs vanilla LTH", label), "accuracy", "per combination")
        sources = ", ".join(sorted(set(baseline["source"]))) or "none"
        acc.add(html.paragraph(f"Test accuracy (%), mean ±95% CI half-width over seeds. Vanilla LTH from: {sources}."))
        acc.add(html.table(accuracy_table(summary)))

        gains = pick(result.gains)
        gain_matrix = analysis.matrix(gains, "gain_pp")
        keep(plots.heatmap(gain_matrix, png("gain_heatmap", setting), f"{heading}gain over vanilla LTH",
                           "percentage points", sparsity_label=label), "gain", "gain heat map")
        if gain_matrix.empty:
            sections["gain"].note("No tweak other than vanilla has finished runs: no gains to show.")
        else:
            shown = gain_matrix.map(lambda v: "–" if pd.isna(v) else f"{v:+.2f}")
            shown.columns = [f"{c:g}%" for c in shown.columns]
            sections["gain"].add(html.table(shown.reset_index()))

        front, critical = pick(result.frontier), pick(result.critical)
        keep(plots.frontier_plot(front, png("frontier", setting), f"{heading}winning-ticket frontier", label),
             "frontier", "frontier")
        sections["frontier"].add(html.table(pd.DataFrame({
            "combination": front["tweak"], "frontier sparsity (%)": front["frontier_sparsity"].map(_pct),
            "level": front["frontier_level"], "levels matching dense": front["matched_levels"],
            "dense acc (%)": front["dense_mean"].map(lambda v: _pct(v, 2)),
            "tolerance": front["tolerance"], "note": front["note"]})))
        sections["frontier"].add(html.heading("Critical sparsity: from init vs weight rewinding"))
        if critical.empty:
            sections["frontier"].note("No combination was run both from init (rewind_epoch 0) and with "
                                      "weight rewinding (rewind_epoch > 0): no critical sparsity.")
        else:
            keep(plots.critical_plot(summary, critical, png("critical_sparsity", setting),
                                     f"{heading}from init vs rewinding", label), "frontier", "critical sparsity")
            sections["frontier"].add(html.table(pd.DataFrame({
                "from init": critical["from_init"], "rewound": critical["rewound"],
                "levels compared": critical["levels_compared"],
                "critical sparsity (%)": critical["critical_sparsity"].map(_pct), "note": critical["note"]})))

        if summary["device_seconds"].isna().all():
            sections["cost"].note("No device_seconds logged.")
        else:
            keep(plots.heatmap(analysis.matrix(summary, "device_seconds"), png("cost", setting),
                               f"{heading}device seconds per trial", "device seconds", fmt="{:.0f}", diverging=False,
                               sparsity_label=label),
                 "cost", "compute cost")
            cost = pick(result.cost).drop(columns="setting")
            sections["cost"].add(html.table(cost.round({"device_hours": 3, "hours_per_trial": 4})))
    return pngs


def _sources_section(result: analysis.Analysis, section: html.Section) -> None:
    """The any-mask view: each tweak's gain per mask source, and the ticket against its controls."""
    by_source = analysis.gains_by_source(result.gains)
    if len(result.settings) < 2 or by_source.empty:
        section.note("One mask source (setting) only: run several with --prune-methods imp,random,snip "
                     "to compare each tweak's gain across sources.")
    else:
        section.add(html.paragraph("Gain over vanilla (percentage points) per mask source (setting) and sparsity: "
                                   "a tweak whose row stays positive helps whatever drew the mask."))
        section.add(html.table(by_source.map(lambda v: "–" if pd.isna(v) else f"{v:+.2f}").reset_index()))
    controls = result.controls
    if controls.empty:
        section.note("No lottery-ticket control was run: add {init: reinit} and {init: shuffle} to the combos.")
        return
    section.add(html.heading("The ticket against its controls"))
    section.add(html.paragraph("Mean test accuracy (%) of the ticket (vanilla), a fresh initialisation of its "
                               "mask (reinit) and its mask shuffled per layer (shuffle); the lead is in points."))
    section.add(html.table(pd.DataFrame({
        "setting": controls["setting"], "level": controls["level"], "sparsity (%)": controls["sparsity"].map(_pct),
        **{name: controls[name].map(lambda v: _pct(v, 2)) for name in ("ticket", *analysis.CONTROLS)},
        **{f"ticket − {c} (pp)": controls[f"ticket_minus_{c}_pp"].map(lambda v: "–" if pd.isna(v) else f"{v:+.2f}")
           for c in analysis.CONTROLS}})))


def _num(value, digits: int = 2) -> str:
    return "–" if pd.isna(value) else f"{value:+.{digits}f}"


def claims_section(result: Analysis, out: Path, section: html.Section,
                   act_points: pd.DataFrame | None = None) -> list[Path]:
    """The paper's claims C1–C6 (dashboards/claims.py): the paired difference per claim, its 95%
    interval, n and a verdict, and a forest plot per judged claim."""
    found = claims.evaluate(result, act_points)
    section.add(html.paragraph(
        "Each row compares two combinations run with the same pairs (ticket seed and mask draw, spend seed: "
        "the same data order); the difference is taken per pair, then averaged. 95% interval: paired t "
        f"below {claims.BOOTSTRAP_FROM} pairs (few seeds, paired design), else a percentile bootstrap. "
        "holds: the interval is above 0; contradicted: below 0; not detected: it contains 0."))
    table = found.table
    table.to_csv(out / "claims.csv", index=False)  # the numbers, for a results page or a script
    section.add(html.table(pd.DataFrame({
        "claim": table["claim"], "setting": table["setting"], "compares": table["compares"],
        "unit": table["unit"], "measured difference": table["diff_mean"].map(_num),
        "95% interval": [("–" if pd.isna(lo) else f"[{lo:+.2f}, {hi:+.2f}]")
                         for lo, hi in zip(table["ci_low"], table["ci_high"])],
        "n": table["n"], "verdict": table["verdict"], "test": table["test"]})))
    section.add(html.paragraph("; ".join(f"{k}: {v}" for k, v in claims.CLAIMS.items()) + "."))
    pngs = []
    for claim in found.judged():
        rows = table[table["claim"] == claim]
        path = plots.claim_plot(rows, found.per_pair, out / f"claim_{claim}.png", f"{claim}: {claims.CLAIMS[claim]}")
        if path is not None:
            pngs.append(path)
            section.add(html.image(path, f"claim {claim}"))
    return pngs


def _sparsity_columns(table: pd.DataFrame) -> list[str]:
    return [f"{c:g}%" for c in table.columns]


def _in_tweak_order(table: pd.DataFrame, frame: pd.DataFrame) -> pd.DataFrame:
    """A tweak-indexed table with vanilla first, then grouped by activation."""
    return table.loc[[t for t in analysis.tweak_order(frame["tweak"], frame["activation"]) if t in table.index]]


def act_sparsity_display(summary: pd.DataFrame, level: int) -> pd.DataFrame:
    """Table A1 for one setting as printed: the activation of each combination, the stages and
    'overall' in %, and the number of runs averaged."""
    table = analysis.act_sparsity_table(summary, level)
    at = summary[summary["level"] == level]
    acts = at.groupby("tweak")["activation"].agg(analysis.first_present)
    runs = at.groupby("tweak")["n"].max()
    shown = table.map(lambda v: "–" if pd.isna(v) else f"{v:.1f}")
    head = pd.DataFrame([acts.reindex(table.columns).fillna("–")], index=["activation"])
    tail = pd.DataFrame([runs.reindex(table.columns).fillna(0).astype(int).astype(str)], index=["runs"])
    out = pd.concat([head, shown, tail])
    out.index.name, out.columns.name = "stage", None
    return out.reset_index()


def _analyses_section(result: Analysis, out: Path, section: html.Section) -> list[Path]:
    """The paper's analyses when the sweep logged them: activation sparsity per stage (Table A1)
    and the top Hessian eigenvalue, final against sparsity and over training (Figure A12)."""
    if result.act_sparsity.empty and result.hessian.empty and result.hessian_curves.empty:
        section.note(f"No activation-sparsity or Hessian metrics logged: {HOW_TO_ANALYZE}.")
        return []
    pngs: list[Path] = []
    several = len(result.settings) > 1

    def keep(path: Path | None, alt: str) -> None:
        if path is not None:
            pngs.append(path)
            section.add(html.image(path, alt))

    for setting in result.settings:
        pick = lambda frame: frame[frame["setting"] == setting]  # noqa: E731
        png = lambda name: out / (f"{name}_{_slug(setting)}.png" if several else f"{name}.png")  # noqa: E731
        prefix = f"{setting}: " if several else ""
        if several:
            section.add(html.heading(setting))

        act = pick(result.act_sparsity)
        section.add(html.heading("Activation sparsity (Table A1)"))
        if act.empty:
            section.note("No activation sparsity logged: run the sweep with --analyze.")
        else:
            level = analysis.pick_level(act)
            at = act[act["level"] == level]
            sparsity = at["sparsity"].mean()
            section.add(html.paragraph(
                f"Activations with |a| <= 1e-3 on test batches (%), mean over the finished spend runs (seeds) of "
                f"each combination, per stage and overall, at level {level} ({_pct(sparsity)}% sparsity): the "
                f"level most combinations have data at, the highest of those."))
            section.add(html.table(act_sparsity_display(act, level)))
            keep(plots.act_sparsity_bars(analysis.act_sparsity_table(act, level), png("act_sparsity"),
                                         f"{prefix}activation sparsity at {_pct(sparsity)}% weight sparsity"),
                 "activation sparsity per stage")
            overall = act[act["stage"] == analysis.OVERALL]
            if overall["level"].nunique() > 1:
                section.add(html.paragraph("Overall activation sparsity (%) at every level:"))
                shown = _in_tweak_order(100 * analysis.matrix(overall, "mean"), overall)
                shown = shown.map(lambda v: "–" if pd.isna(v) else f"{v:.1f}")
                shown.columns = _sparsity_columns(shown)
                section.add(html.table(shown.reset_index()))

        hessian, curves = pick(result.hessian), pick(result.hessian_curves)
        section.add(html.heading("Top Hessian eigenvalue"))
        if hessian.empty:
            section.note("No top Hessian eigenvalue logged: run the sweep with --analyze (final value) "
                         "or --hessian-every N (every N epochs).")
        else:
            keep(plots.hessian_vs_sparsity(hessian, png("hessian_vs_sparsity"),
                                           f"{prefix}final top Hessian eigenvalue vs sparsity",
                                           plots.SPARSITY_LABELS[result.sparsity_axis]),
                 "top Hessian eigenvalue vs sparsity")
            section.add(html.paragraph("Final top Hessian eigenvalue (the --analyze value, else the last epoch "
                                       "--hessian-every measured), mean over seeds:"))
            shown = _in_tweak_order(analysis.matrix(hessian, "mean"), hessian)
            shown = shown.map(lambda v: "–" if pd.isna(v) else f"{v:.4g}")
            shown.columns = _sparsity_columns(shown)
            section.add(html.table(shown.reset_index()))
        if curves.empty:
            if not hessian.empty:
                section.note("No per-epoch eigenvalues: run the sweep with --hessian-every N to see the "
                             "eigenvalue over training (Figure A12).")
        else:
            level = analysis.pick_level(curves)
            at = curves[curves["level"] == level]
            sparsity = at["sparsity"].mean()
            section.add(html.paragraph(f"Top Hessian eigenvalue over training at level {level} "
                                       f"({_pct(sparsity)}% sparsity), mean ±95% CI over seeds (Figure A12)."))
            keep(plots.hessian_vs_epoch(at, png("hessian_vs_epoch"),
                                        f"{prefix}top Hessian eigenvalue during training, {_pct(sparsity)}% sparsity"),
                 "top Hessian eigenvalue vs epoch")
    return pngs


def panel_combos(result: Analysis, chosen: list[str] | None) -> list[str]:
    """The combinations the cross-family panel draws beside vanilla LTH: those chosen (`--panel`),
    else every AT + TRT combination of the sweep (Figures 6 and 7)."""
    if chosen:
        return list(dict.fromkeys(chosen))
    return sorted(t for t in result.summary["tweak"].unique() if claims.is_at_trt(t))


def _families_section(result: Analysis, out: Path, section: html.Section, chosen: list[str] | None) -> list[Path]:
    """Vanilla LTH and the chosen combinations against sparsity, one cell per ticket family."""
    combos = panel_combos(result, chosen)
    if not combos:
        section.note("No AT + TRT combination (Swish, a skip, label smoothing and GradInit) in this sweep: pass "
                     "--panel COMBINATION to draw others against vanilla LTH (the preset generalization runs it).")
        return []
    shown = result.families[result.families["setting"].isin(result.summary["setting"])]
    section.add(html.paragraph(
        f"Test accuracy (%) against sparsity for each of the {len(shown)} ticket families of this sweep (a row per "
        f"data set), mean and 95% CI over seeds: vanilla LTH (black, dotted), {', '.join(combos)}, and the dense "
        "net (dashed), as in the paper's Figures 6 and 7."))
    path = plots.family_panel(result.summary, result.baseline, result.dense, result.families, combos,
                              out / "families.png", "vanilla LTH and " + ", ".join(combos) + " across families")
    if path is None:
        section.note(f"No finished run of {', '.join(combos)}.")
        return []
    section.add(html.image(path, "accuracy vs sparsity per architecture and data set"))
    return [path]


def _landscapes_section(result: Analysis, out: Path, section: html.Section) -> list[Path]:
    """Side-by-side loss contours in weight space and the loss in input space, of vanilla LTH and
    each tweak, per set of analysed weights (Figures 5 and 11)."""
    from lth_core.analysis.plots import plot_lines, plot_surfaces_side_by_side

    if not result.landscapes:
        section.note("No landscapes logged: run the sweep with --analyze (the final weights) and/or "
                     "--analyze-epochs K,... (the weights after epoch K, e.g. an early one as in Figure 5).")
        return []
    section.add(html.paragraph(
        "Per ticket family, at one level (the one most combinations have data at, the highest of those), for one "
        "ticket and re-training seed, so every panel is measured along the same seeded directions. Weight space: "
        "the train loss over two random filter-normalized directions, every panel on the same axes, contour "
        "levels and colour scale. Input space: the mean test loss as every image x moves to x + eps d, d scaled to "
        "x's own norm, along a random direction, along the loss gradient's sign, and over two random directions."))
    several = len({s.setting for s in result.landscapes}) > 1
    pngs = []
    for found in result.landscapes:
        what = "final weights" if found.weights == "final" else f"weights after {found.weights.replace('_', ' ')}"
        where = f"{found.setting}: " if several else ""
        name = (f"{_slug(found.setting)}_" if several else "") + f"L{found.level}_{found.weights}"
        title = f"{where}level {found.level} ({_pct(found.sparsity)}% sparse), {what}"
        section.add(html.heading(title))
        section.add(html.paragraph(f"Ticket {found.ticket}, re-training seed {found.seed}."))
        views, steps = found.views, found.steps
        figures = []
        if "surface_2d" in views:
            figures.append((plot_surfaces_side_by_side(
                steps["surface_2d"], steps["surface_2d"], views["surface_2d"], out / f"landscape_{name}.png",
                f"train loss in weight space, {title}"), "weight-space loss contours"))
        lines = {label: views[view] for label, view in (("random direction", "input_random_1d"),
                                                         ("gradient sign", "input_gradient_sign_1d")) if view in views}
        if lines:
            figures.append((plot_lines(steps["input_random_1d" if "input_random_1d" in views else
                                             "input_gradient_sign_1d"], lines, out / f"input_lines_{name}.png",
                                       f"test loss in input space, {title}"), "input-space loss along directions"))
        if "input_surface_2d" in views:
            figures.append((plot_surfaces_side_by_side(
                steps["input_surface_2d"], steps["input_surface_2d"], views["input_surface_2d"],
                out / f"input_landscape_{name}.png", f"test loss in input space, {title}",
                xlabel="eps, image direction 1", ylabel="eps, image direction 2"), "input-space loss contours"))
        for path, alt in figures:
            pngs.append(path)
            section.add(html.image(path, alt))
    return pngs


def _optuna_section(sweep: Sweep, out: Path, section: html.Section) -> list[Path]:
    if sweep.optuna is None:
        section.note(sweep.optuna_note or "No Optuna studies.")
        return []
    if not sweep.optuna:
        tags = sweep.parent["tags"]
        section.note(f"No study named {tags.get(layout.OPTUNA_STUDY_PREFIX)}-level<k> in "
                     f"{redact(tags.get(layout.OPTUNA_STORAGE, ''))}.")
        return []
    section.add(html.table(pd.DataFrame([{
        "level": lv.level, "study": lv.study, "trials": lv.n_trials, "completed": lv.n_complete,
        "best value": lv.best_value, "best combination": ", ".join(f"{k}={v}" for k, v in lv.best_params.items()),
        "note": lv.note or ""} for lv in sweep.optuna])))
    path = plots.importance_plot(sweep.optuna, out / "optuna_importances.png")
    if path is None:
        section.note("No level has parameter importances (they need at least 2 completed trials).")
        return []
    section.add(html.image(path, "Optuna parameter importances"))
    return [path]


def _overview(sweep: Sweep, result: Analysis, section: html.Section) -> None:
    parent = sweep.parent or {}
    tags = parent.get("tags", {})
    section.add(html.meta_list({
        "experiment": sweep.experiment, "tracking URI": sweep.tracking_uri,
        "parent run": parent.get("run_id", "none (no run tagged stage=sweep)"),
        "sweep kind": tags.get("kind", "–"), "preset": tags.get("preset", "–"),
        "sparsity axis": SPARSITY_AXIS_TEXT[result.sparsity_axis],
        "generated": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}))
    if sweep.n_parents > 1:
        section.note(f"{sweep.n_parents} sweep parent runs in this experiment: the report covers all their "
                     "trials (the latest run per spend_key) and is attached to the latest parent.")
    trials = sweep.trials
    if not trials.empty:
        counts = pd.crosstab(trials["stage"].fillna("?"), trials["status"])
        counts.columns.name = None
        section.add(html.table(counts.reset_index()))
    for text in result.notes:
        section.note(text)
    levels = analysis.level_sparsities(trials)
    if not levels.empty:
        section.add(html.paragraph("Sparsity (%) of each level, mean over its finished spends: nominal (every "
                                   "prunable weight) and among live weights (those an input of the data set's "
                                   "shape reaches; the rest only ever multiply padding)."))
        section.add(html.table(pd.DataFrame({"setting": levels["setting"], "level": levels["level"],
                                             "sparsity (%)": levels["sparsity"].map(lambda v: _pct(v, 2)),
                                             "live sparsity (%)": levels["live_sparsity"].map(lambda v: _pct(v, 2))})))
    machines = analysis.platforms(trials)
    if machines.empty:
        section.note("No run logged its platform (platform.* params): the runs predate them.")
    else:
        section.add(html.paragraph("Platforms the draw and spend runs were computed on (runs per stage). "
                                   "Results at this scale move with the thread count and the CPU's vector "
                                   "kernels, so compare runs from one platform."))
        section.add(html.table(machines))


def _trials_section(trials: pd.DataFrame, section: html.Section) -> None:
    shown = trials[[c for c in TRIAL_COLUMNS if c in trials.columns]].copy()
    shown["run_id"] = shown["run_id"].str[:8]
    section.add(html.table(shown, max_rows=MAX_TRIAL_ROWS))


def build_report(sweep: Sweep, out: Path, sparsity: str = "nominal", panel: list[str] | None = None) -> ReportFiles:
    """Write trials.parquet, the PNGs and report.html into `out`, plotting against the sparsity
    axis `sparsity` (`analysis.SPARSITY_AXES`; the table keeps both sparsities); `panel` names the
    combinations the cross-family panel draws (default: the AT + TRT ones)."""
    result = analysis.analyze(sweep.trials, sweep.draw_levels, sweep.hessian_history, sparsity, sweep.landscapes)
    out.mkdir(parents=True, exist_ok=True)
    parquet = out / "trials.parquet"
    sweep.trials.to_parquet(parquet, engine="pyarrow", index=False)

    sections = {key: html.Section(key, title) for key, title in [
        ("overview", "Overview"), ("claims", "Claims"), ("accuracy", "Accuracy vs sparsity"), ("gain", "Gain over vanilla LTH"),
        ("frontier", "Winning-ticket frontier"), ("families", "Across architectures and data sets"),
        ("sources", "Mask sources and lottery-ticket controls"),
        ("analyses", "Activation sparsity and Hessian"), ("landscapes", "Loss landscapes"),
        ("optuna", "Optuna search"), ("cost", "Compute cost"), ("trials", "Trials")]}
    _overview(sweep, result, sections["overview"])
    if result.summary.empty:
        for key in ("claims", "accuracy", "gain", "frontier", "families", "sources", "cost"):
            sections[key].note("No finished spend run yet.")
        sections["analyses"].note(f"No finished spend run yet. For these analyses, {HOW_TO_ANALYZE}.")
        sections["landscapes"].note("No finished spend run yet.")
        pngs = []
    else:
        pngs = claims_section(result, out, sections["claims"], claims.act_points(sweep.trials))
        pngs += _setting_sections(result, out, sections)
        pngs += _families_section(result, out, sections["families"], panel)
        _sources_section(result, sections["sources"])
        pngs += _analyses_section(result, out, sections["analyses"])
        pngs += _landscapes_section(result, out, sections["landscapes"])
    pngs += _optuna_section(sweep, out, sections["optuna"])
    _trials_section(sweep.trials, sections["trials"])

    page = out / "report.html"
    page.write_text(html.page(f"Sweep report: {sweep.experiment}", list(sections.values())), encoding="utf-8")
    return ReportFiles(html=page, parquet=parquet, pngs=pngs)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="python -m dashboards.report", description=__doc__)
    parser.add_argument("--experiment", required=True, help="MLflow experiment (the sweep's name)")
    parser.add_argument("--tracking-uri", help=f"default: $MLFLOW_TRACKING_URI, else {collect.DEFAULT_TRACKING_URI}")
    parser.add_argument("--out", type=Path, help="output folder (default reports/<experiment>)")
    parser.add_argument("--no-log-artifacts", action="store_true",
                        help="do not attach the report to the sweep's parent run")
    parser.add_argument("--sparsity", choices=analysis.SPARSITY_AXES, default="nominal",
                        help="what the sparsity axis measures: every prunable weight (nominal) or only the live "
                             "ones, those an input of the data set's shape reaches (default: %(default)s)")
    parser.add_argument("--panel", action="append", metavar="COMBINATION",
                        help="a combination (its label in the report, e.g. swish+ls0.1) the cross-family panel "
                             "draws against vanilla LTH; repeat for several (default: the AT + TRT ones)")
    return parser.parse_args(argv)


def _out_problem(out: Path) -> str | None:
    """Why `out` cannot take the report (checked before any work, with a probe file that is
    removed at once: permission bits say nothing to root or on some mounts), or None."""
    folder = out
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    if not folder.is_dir():
        return f"--out {out}: {folder} is a file, not a folder; pass --out with a folder for the report"
    try:
        writable_folder(out)
    except OSError as e:
        return f"--out {out}: {folder} is not writable ({e.strerror or e}); pass --out with a folder you can write to"
    return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path("reports") / args.experiment
    problem = _out_problem(out)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    uri = collect.resolve_tracking_uri(args.tracking_uri)
    try:
        client = collect.connect(uri)
        sweep = collect.load_sweep(client, args.experiment)
    except collect.ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    combos = set(analysis.spend_points(sweep.trials)["tweak"]) if args.panel else set()
    unknown = [c for c in args.panel or [] if c not in combos]
    if unknown:
        print(f"error: --panel {unknown[0]}: no finished run of that combination in {args.experiment!r}; "
              f"combinations there: {', '.join(sorted(combos)) or 'none'}", file=sys.stderr)
        return 2
    try:
        files = build_report(sweep, out, args.sparsity, args.panel)
    except ValueError as exc:  # no live sparsity logged
        print(f"error: --sparsity {args.sparsity}: {exc}; use --sparsity nominal for this experiment",
              file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"error: cannot write the report to {out} ({exc.strerror or exc}); pass --out with a folder you "
              "can write to", file=sys.stderr)
        return 2
    if not args.no_log_artifacts and sweep.parent is None:
        print("note: no sweep parent run (tag stage=sweep); the report is not logged to MLflow", file=sys.stderr)
    elif not args.no_log_artifacts:
        collect.log_report(client, sweep.parent["run_id"], [files.html, *files.pngs])
        print(f"logged to run {sweep.parent['run_id']} under report/")
    print(f"report:  {files.html.resolve()}")
    print(f"table:   {files.parquet.resolve()}")
    for path in files.pngs:
        print(f"figure:  {path.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
