"""The paper's claims C1–C6 (issue 15), judged on one sweep with paired differences per seed.

Pure pandas on the report's data (`analysis.Analysis`), so every verdict can be checked on a
hand-made frame. A *pair* is one ticket (`ticket`: the ticket key, i.e. the ticket seed and its
mask draw) and one spend seed (`seed`: the data order and the re-training randomness): two
combinations run with the same pair saw the same mask, the same initialisation and the same
data order, so their difference removes the seed-to-seed spread that dominates at this scale.

The interval is a paired t interval, mean ± t(0.975, n-1)·sd/√n over the pairs' differences,
while n < BOOTSTRAP_FROM: a sweep has a handful of seeds, the differences of paired runs are
close to normal and a bootstrap on 5 values has far too few distinct resamples to be trusted.
From BOOTSTRAP_FROM pairs on it is a percentile bootstrap of the mean (10,000 resamples, seed 0),
which needs no normality. Verdict: `holds` when the whole interval is on the claimed side of 0,
`contradicted` when it is on the other side, `not detected` otherwise (including a difference
of exactly 0), and `cannot judge: <what is missing>` when the sweep lacks the cells the claim
needs or has fewer than 2 pairs.

Units: accuracies and activation sparsities in percentage points (pp); C2's slope in pp of gain
per 10 points of sparsity; C4's frontier in points of sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from lth_core.mask_sources import SOURCES
from lth_core.tweaks import VANILLA

from . import analysis

BOOTSTRAP_FROM = 20
BOOTSTRAP_RESAMPLES = 10_000
EPS = 1e-12
PAIR = ["ticket", "seed"]
CONTROLS = analysis.CONTROLS
CLAIMS = {
    "C1": "ReLU nets have more near-zero activations than Swish nets (Table A1)",
    "C2": "the gain of each tweak over vanilla LTH grows with sparsity",
    "C3": "AT + TRT beats vanilla LTH at the highest sparsity",
    "C4": "with AT + TRT, tickets keep the dense accuracy up to a higher sparsity",
    "C5": "the IMP ticket beats its reinit and shuffle controls at high sparsity",
    "C6": "the tweaks help random and SNIP masks too (any mask)",
}
COLUMNS = ["claim", "statement", "setting", "compares", "unit", "diff_mean", "ci_low", "ci_high", "n",
           "verdict", "test"]


@dataclass
class Finding:
    """One row of the claims table: the per-pair differences (index: pair label) or why not."""

    claim: str
    setting: str
    compares: str
    unit: str
    values: pd.Series = field(default_factory=lambda: pd.Series(dtype="float64"))
    missing: str = ""  # non-empty: cannot judge

    def row(self) -> dict:
        out = {"claim": self.claim, "statement": CLAIMS[self.claim], "setting": self.setting,
               "compares": self.compares, "unit": self.unit, "diff_mean": np.nan, "ci_low": np.nan,
               "ci_high": np.nan, "n": int(self.values.notna().sum()), "verdict": "", "test": ""}
        values = self.values.dropna().to_numpy(dtype=float)
        if self.missing:
            return {**out, "verdict": f"cannot judge: {self.missing}"}
        if len(values) < 2:
            return {**out, "diff_mean": values.mean() if len(values) else np.nan,
                    "verdict": f"cannot judge: {len(values)} pair(s), an interval needs 2 or more seeds"}
        low, high, test = interval(values)
        return {**out, "diff_mean": float(values.mean()), "ci_low": low, "ci_high": high,
                "verdict": verdict(float(values.mean()), low, high), "test": test}


def interval(values: np.ndarray) -> tuple[float, float, str]:
    """95% interval of the mean paired difference and the name of the test (module docstring)."""
    n = len(values)
    mean = float(values.mean())
    if n < BOOTSTRAP_FROM:
        half = float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / np.sqrt(n))
        return mean - half, mean + half, f"paired t (df={n - 1})"
    rng = np.random.default_rng(0)
    means = values[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high), f"bootstrap of the mean ({BOOTSTRAP_RESAMPLES} resamples)"


def verdict(mean: float, low: float, high: float) -> str:
    """The claim is that the difference is positive."""
    if low > EPS:
        return "holds"
    if high < -EPS:
        return "contradicted"
    return "not detected"


# --- Reading the points -----------------------------------------------------------------------

def source_of(setting: str) -> str:
    """The mask source of a setting label (its last word, see analysis.setting_of); a sweep that
    logged no `prune_method` drew with IMP, the default."""
    last = str(setting).split(" ")[-1]
    return last if last in SOURCES else "imp"


def parts(tweak: str) -> list[str]:
    return [] if tweak == VANILLA else str(tweak).split("+")


def is_control(tweak: str) -> bool:
    return any(p in CONTROLS for p in parts(tweak))


def is_at_trt(tweak: str) -> bool:
    """The paper's AT + TRT: Swish, a skip (identity or the RepVGG 1x1), label smoothing and
    GradInit, nothing else (rewinding aside)."""
    kinds = sorted("skip" if p.startswith("skip-") else "ls" if p.startswith("ls") else p.split("(")[0]
                   for p in parts(tweak) if not p.startswith("rewind"))
    return kinds == ["gradinit", "ls", "skip", "swish"]


def rewind_part(tweak: str) -> str | None:
    return next((p for p in parts(tweak) if p.startswith("rewind")), None)


def vanilla_for(tweak: str, tweaks: set[str]) -> str | None:
    """The vanilla LTH a combination is measured against: the same rewinding alone (`rewind1`
    for `swish+rewind1`) when the sweep ran it, else plain vanilla from init (rewinding alone is
    measured against vanilla from init); None if neither."""
    rewind = rewind_part(tweak)
    if rewind and rewind != tweak and rewind in tweaks:
        return rewind
    return VANILLA if VANILLA in tweaks else None


def _pairs(points: pd.DataFrame) -> pd.DataFrame:
    """test_acc per pair (rows: ticket, seed, level) and combination (columns), in %."""
    return 100 * points.pivot_table(index=[*PAIR, "level"], columns="tweak", values="test_acc", aggfunc="mean")


def _label(index: pd.Index) -> pd.Index:
    return pd.Index([f"{t} s{s}" for t, s in index], name="pair")


def _imp_settings(points: pd.DataFrame) -> list[str]:
    return sorted(s for s in points["setting"].unique() if source_of(s) == "imp")


def _sparsity(points: pd.DataFrame, level: int) -> str:
    return f"{100 * points.loc[points['level'] == level, 'sparsity'].mean():.1f}%"


def _diff_at_top(points: pd.DataFrame, a: str, b: str) -> tuple[pd.Series, str]:
    """Per pair, acc(a) − acc(b) in pp at the highest level both ran; '' or what is missing."""
    table = _pairs(points)
    if a not in table.columns or b not in table.columns:
        return pd.Series(dtype="float64"), f"no {a if a not in table.columns else b} runs"
    both = table[[a, b]].dropna()
    if both.empty:
        return pd.Series(dtype="float64"), f"{a} and {b} share no (seed, level)"
    top = both.index.get_level_values("level").max()
    at = both.xs(top, level="level")
    values = at[a] - at[b]
    values.index = _label(values.index)
    return values, ""


# --- The claims --------------------------------------------------------------------------------

def c1_activation_sparsity(result: analysis.Analysis, act_points: pd.DataFrame | None) -> list[Finding]:
    """C1. Needs, in an IMP setting, `vanilla` (ReLU) and `swish` spends with the overall
    `act_sparsity` logged (--analyze), at a common level: per pair, the ReLU net's share of
    |a| <= 1e-3 minus the Swish net's, in pp, at the highest such level (the stages are in the
    report's Table A1; the claim is judged on the overall share)."""
    unit = "pp of activations"
    compares = "act. sparsity: vanilla (ReLU) − swish"
    settings = _imp_settings(result.points) or ["–"]
    if act_points is None or analysis.ACT_SPARSITY not in act_points.columns \
            or act_points[analysis.ACT_SPARSITY].isna().all():
        return [Finding("C1", s, compares, unit, missing="no act_sparsity logged (run the sweep with --analyze)")
                for s in settings]
    out = []
    for setting in settings:
        points = act_points[act_points["setting"] == setting].rename(columns={analysis.ACT_SPARSITY: "test_acc"})
        values, missing = _diff_at_top(points.dropna(subset=["test_acc"]), VANILLA, "swish")
        out.append(Finding("C1", setting, compares, unit, values, missing))
    return out


def _slope(frame: pd.DataFrame) -> float:
    if frame["sparsity"].nunique() < 2:
        return np.nan
    return 10 * np.polyfit(100 * frame["sparsity"], frame["gain"], 1)[0]


def c2_gain_slope(result: analysis.Analysis) -> list[Finding]:
    """C2. Needs, in an IMP setting, vanilla and at least one tweak (controls aside) at 2 or more
    levels with the same pairs: per pair and tweak, the least-squares slope of the gain
    acc(tweak) − acc(its vanilla) against sparsity, in pp per 10 points of sparsity. One row
    per tweak, and a first row `all tweaks` whose per-pair value is the mean slope over the
    tweaks (the claim as a whole)."""
    unit = "pp gain per 10 pts sparsity"
    out = []
    for setting in _imp_settings(result.points) or ["–"]:
        points = result.points[result.points["setting"] == setting]
        table = _pairs(points)
        tweaks = set(table.columns)
        chosen = [t for t in sorted(tweaks) if t != VANILLA and not is_control(t)]
        if not chosen or VANILLA not in tweaks:
            out.append(Finding("C2", setting, "slope of gain vs sparsity, all tweaks", unit,
                               missing="needs vanilla and at least one tweak"))
            continue
        sparsity = points.groupby("level")["sparsity"].mean()
        slopes = {}
        for tweak in chosen:
            base = vanilla_for(tweak, tweaks)
            gain = (table[tweak] - table[base]).dropna().rename("gain").reset_index()
            gain["sparsity"] = gain["level"].map(sparsity)
            if gain["level"].nunique() < 2:
                slopes[tweak] = pd.Series(dtype="float64")
                continue
            per_pair = gain.groupby(PAIR)[["sparsity", "gain"]].apply(_slope)
            per_pair.index = _label(per_pair.index)
            slopes[tweak] = per_pair
        pooled = pd.DataFrame(slopes).mean(axis=1, skipna=True) if any(len(v) for v in slopes.values()) \
            else pd.Series(dtype="float64")
        out.append(Finding("C2", setting, "slope of gain vs sparsity, mean over tweaks", unit, pooled,
                           "" if len(pooled) else "fewer than 2 levels with vanilla and a tweak"))
        for tweak, values in slopes.items():
            out.append(Finding("C2", setting, f"slope of gain: {tweak} − {vanilla_for(tweak, tweaks)}", unit,
                               values, "" if len(values) else "fewer than 2 levels in common with vanilla"))
    return out


def _at_trt(tweaks) -> list[str]:
    return sorted(t for t in tweaks if is_at_trt(t))


def c3_at_trt_top(result: analysis.Analysis) -> list[Finding]:
    """C3. Needs, in an IMP setting, an AT + TRT combination (`is_at_trt`) and its vanilla
    (`vanilla_for`) at a common level: per pair, acc(AT + TRT) − acc(vanilla) in pp at the
    highest level both ran. One row per AT + TRT variant (skip kind, rewinding)."""
    out = []
    for setting in _imp_settings(result.points) or ["–"]:
        points = result.points[result.points["setting"] == setting]
        tweaks = set(points["tweak"])
        variants = _at_trt(tweaks)
        if not variants:
            out.append(Finding("C3", setting, "AT + TRT − vanilla", "pp test acc",
                               missing="no AT + TRT combination (swish + skip + ls + gradinit)"))
        for tweak in variants:
            base = vanilla_for(tweak, tweaks)
            values, missing = _diff_at_top(points, tweak, base or VANILLA)
            top = points[points["tweak"].isin([tweak, base])]["level"].max()
            out.append(Finding("C3", setting, f"{tweak} − {base} @ {_sparsity(points, top)}", "pp test acc",
                               values, missing))
    return out


def seed_frontier(points: pd.DataFrame, threshold: float) -> pd.Series:
    """Per pair, the highest sparsity (in %) whose test accuracy is >= threshold; 0 when none."""
    ok = points.assign(s=np.where(points["test_acc"] >= threshold - EPS, 100 * points["sparsity"], 0.0))
    out = ok.groupby(PAIR)["s"].max()
    out.index = _label(out.index)
    return out


def c4_frontier(result: analysis.Analysis) -> list[Finding]:
    """C4. Needs, in an IMP setting, the dense accuracy (`result.dense`), an AT + TRT combination
    and its vanilla at the same pairs: per pair, the highest measured sparsity whose accuracy is
    at least dense mean − dense std over tickets (0 with one ticket, as the report's frontier),
    for AT + TRT minus for vanilla, in points of sparsity (0 when a pair matches nowhere)."""
    out = []
    for setting in _imp_settings(result.points) or ["–"]:
        points = result.points[result.points["setting"] == setting]
        tweaks = set(points["tweak"])
        dense = result.dense[result.dense["setting"] == setting]
        variants = _at_trt(tweaks)
        if dense.empty or not variants:
            missing = "; ".join(m for m, lack in (("no dense accuracy logged", dense.empty),
                                                  ("no AT + TRT combination", not variants)) if lack)
            out.append(Finding("C4", setting, "frontier sparsity: AT + TRT − vanilla", "pts sparsity",
                               missing=missing))
            continue
        row = dense.iloc[0]
        tol = row["dense_std"] if row["n_tickets"] >= 2 and pd.notna(row["dense_std"]) else 0.0
        threshold = row["dense_mean"] - tol
        for tweak in variants:
            base = vanilla_for(tweak, tweaks)
            a = seed_frontier(points[points["tweak"] == tweak], threshold)
            b = seed_frontier(points[points["tweak"] == base], threshold)
            values = (a - b).dropna()
            out.append(Finding("C4", setting, f"frontier: {tweak} − {base} (dense {100 * threshold:.2f}%)",
                               "pts sparsity", values, "" if len(values) else f"{tweak} and {base} share no pair"))
    return out


def c5_controls(result: analysis.Analysis) -> list[Finding]:
    """C5. Needs, in an IMP setting, vanilla and the `reinit` and/or `shuffle` control at a
    common level: per pair, acc(ticket) − acc(control) in pp at the highest level both ran."""
    out = []
    for setting in _imp_settings(result.points) or ["–"]:
        points = result.points[result.points["setting"] == setting]
        for control in CONTROLS:
            values, missing = _diff_at_top(points, VANILLA, control)
            where = f" @ {_sparsity(points, points[points['tweak'] == control]['level'].max())}" if not missing else ""
            out.append(Finding("C5", setting, f"ticket − {control}{where}", "pp test acc", values, missing))
    return out


def c6_any_mask(result: analysis.Analysis) -> list[Finding]:
    """C6. Needs a setting whose source is not IMP (random, SNIP, ...) with vanilla and AT + TRT
    (else every tweak, controls aside) at the same pairs: per pair, the gain over vanilla in pp
    averaged over the levels both ran. One row per source and AT + TRT variant (or one row of
    the mean gain over all tweaks when the sweep has no AT + TRT)."""
    others = sorted(s for s in result.points["setting"].unique() if source_of(s) != "imp")
    if not others:
        return [Finding("C6", "–", "gain over vanilla on random / SNIP masks", "pp test acc",
                        missing="no mask source other than IMP (run --prune-methods imp,random,snip)")]
    out = []
    for setting in others:
        points = result.points[result.points["setting"] == setting]
        table = _pairs(points)
        tweaks = set(table.columns)
        if VANILLA not in tweaks:
            out.append(Finding("C6", setting, "gain over vanilla", "pp test acc", missing="no vanilla runs"))
            continue
        variants = _at_trt(tweaks)
        groups = {t: [t] for t in variants} or {
            "all tweaks": [t for t in tweaks if t != VANILLA and not is_control(t)]}
        for name, members in groups.items():
            gains = [(table[t] - table[vanilla_for(t, tweaks)]).rename(t) for t in members]
            if not gains:
                out.append(Finding("C6", setting, "gain over vanilla", "pp test acc", missing="no tweak runs"))
                continue
            per_level = pd.concat(gains, axis=1).mean(axis=1).dropna()
            values = per_level.groupby(level=PAIR).mean()
            values.index = _label(values.index)
            what = f"{name} − {vanilla_for(name, tweaks)}" if name in tweaks else "mean gain of all tweaks"
            out.append(Finding("C6", setting, f"{what}, mean over levels", "pp test acc", values,
                               "" if len(values) else "no pair with both"))
    return out


@dataclass
class Claims:
    table: pd.DataFrame  # COLUMNS, one row per finding
    per_pair: pd.DataFrame  # row (index into table), pair, value: what the plots show

    def judged(self) -> list[str]:
        """Claims with at least one finding that has an interval."""
        return sorted(self.table.loc[self.table["ci_low"].notna(), "claim"].unique())


def evaluate(result: analysis.Analysis, act_points: pd.DataFrame | None = None) -> Claims:
    """Every claim on one sweep. `act_points`: `analysis.analysis_points(trials)` with a
    `ticket` column (see `act_points`), for C1."""
    findings = [*c1_activation_sparsity(result, act_points), *c2_gain_slope(result), *c3_at_trt_top(result),
                *c4_frontier(result), *c5_controls(result), *c6_any_mask(result)]
    table = pd.DataFrame([f.row() for f in findings], columns=COLUMNS)
    per_pair = pd.DataFrame([{"row": i, "pair": pair, "value": value}
                             for i, f in enumerate(findings) if not f.missing
                             for pair, value in f.values.dropna().items()], columns=["row", "pair", "value"])
    return Claims(table=table, per_pair=per_pair)


def act_points(trials: pd.DataFrame) -> pd.DataFrame:
    """`analysis.analysis_points` with the `ticket` of each run, so C1 pairs like the others."""
    points = analysis.analysis_points(trials)
    points["ticket"] = analysis.ticket_of(analysis.finished_spends(trials)).reset_index(drop=True)
    return points
