"""Pure pandas: from the trials table (see collect.py) to the paper's comparisons.

No MLflow here, so every number the report shows can be checked on a hand-made frame.
Accuracies stay fractions; gains are in percentage points; sparsities are fractions.
"""

from __future__ import annotations

import dataclasses
import numbers
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from lth_core import tweaks
from lth_core.tweaks import REGISTRY, VANILLA

SETTING_PARAMS = ["dataset", "arch", "width", "prune_method"]
DENSE_PARAMS = ["dataset", "arch", "width"]  # the dense net is the same whatever draws the masks
POINT_KEYS = ["setting", "tweak", "base_tweak", "rewind_epoch", "level"]
EPS = 1e-12  # accuracies equal up to float noise count as equal
# What the sparsity axis measures: the share of every prunable weight a mask removes (`sparsity`),
# or of the live ones only, those an input of the data set's shape reaches (`live_sparsity`).
SPARSITY_AXES = ("nominal", "live")
PLATFORM_PREFIX = "platform."


def _col(frame: pd.DataFrame, name: str, default) -> pd.Series:
    return frame[name] if name in frame.columns else pd.Series(default, index=frame.index)


def setting_of(frame: pd.DataFrame, params: list[str] = SETTING_PARAMS) -> pd.Series:
    """A label for the ticket family (dataset, arch, width, mask source): runs of different
    families never share a curve."""
    def label(row) -> str:
        parts = [f"w{row[p]:g}" if p == "width" and isinstance(row[p], numbers.Number) else str(row[p])
                 for p in params if p in row.index and pd.notna(row[p])]
        return " ".join(parts) or "all runs"
    if frame.empty:
        return pd.Series([], index=frame.index, dtype=object)
    return frame.apply(label, axis=1).astype(object)


def tweak_configs(runs: pd.DataFrame) -> list:
    """Each run's TweakConfig, read back from its params (one per registered tweak)."""
    names = [t.name for t in REGISTRY]
    return [tweaks.from_params({n: row[n] for n in names if n in row and pd.notna(row[n])})
            for _, row in runs.iterrows()]


def base_tweak(config) -> str:
    """The label of a run's tweaks without rewinding: swish + rewind 33 -> 'swish'."""
    return dataclasses.replace(config, rewind_epoch=0).describe()


def ticket_of(frame: pd.DataFrame) -> pd.Series:
    """Which drawn ticket a run belongs to; the seed stands in when ticket_key is absent."""
    return _col(frame, "ticket_key", None).fillna("seed" + _col(frame, "seed", 0).astype(str)).astype(object)


def finished_spends(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials rows that count: finished spend runs with a final test_acc, one per spend_key
    (the latest)."""
    spend = trials[(trials["stage"] == "spend") & trials["final"].astype(bool)
                   & _col(trials, "test_acc", np.nan).notna()].copy()
    spend = spend.sort_values("start_time")
    keyed = _col(spend, "spend_key", None).notna()
    return pd.concat([spend[keyed].drop_duplicates("spend_key", keep="last"), spend[~keyed]])


def on_sparsity_axis(trials: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The trials with `sparsity` measured as `axis` says (SPARSITY_AXES): for `live`, each spend's
    `live_sparsity`. Raises ValueError when no spend run logged one (runs from before it was)."""
    if axis not in SPARSITY_AXES:
        raise ValueError(f"unknown sparsity axis {axis!r}; one of {', '.join(SPARSITY_AXES)}")
    if axis == "nominal":
        return trials
    live = _col(trials, "live_sparsity", np.nan)
    if live[trials["stage"] == "spend"].isna().all():
        raise ValueError("no spend run of this experiment logged live_sparsity (the param came with live "
                         "weights, lth_core.live)")
    return trials.assign(sparsity=live.astype("float64"))


def level_sparsities(trials: pd.DataFrame) -> pd.DataFrame:
    """Per setting and level, the mean sparsity of the finished spends, nominal and among live
    weights (NaN where no run logged the live one), and their share of live weights."""
    columns = ["setting", "level", "sparsity", "live_sparsity"]
    spend = finished_spends(trials)
    if spend.empty:
        return pd.DataFrame(columns=columns)
    frame = pd.DataFrame({"setting": setting_of(spend), "level": _col(spend, "level", 0).fillna(0).astype("int64"),
                          "sparsity": _col(spend, "sparsity", np.nan).astype("float64"),
                          "live_sparsity": _col(spend, "live_sparsity", np.nan).astype("float64")})
    return frame.groupby(["setting", "level"], as_index=False)[["sparsity", "live_sparsity"]].mean()[columns]


def platforms(trials: pd.DataFrame) -> pd.DataFrame:
    """The platforms the draw and spend runs were computed on (`platform.*` params), with how many
    runs of each stage each one computed; empty when no run logged one."""
    names = [c for c in trials.columns if c.startswith(PLATFORM_PREFIX)]
    runs = trials[trials["stage"].isin(["draw", "spend"])]
    if not names or runs.empty:
        return pd.DataFrame()
    shown = runs[names].astype(object).where(runs[names].notna(), "–").astype(str)
    shown.columns = [c[len(PLATFORM_PREFIX):] for c in names]
    counts = pd.crosstab([shown[c] for c in shown.columns], runs["stage"])
    counts.columns.name = None
    return counts.reset_index()


def spend_points(trials: pd.DataFrame) -> pd.DataFrame:
    """Finished spend runs with a final test_acc, one per spend_key (the latest)."""
    spend = finished_spends(trials)
    configs = tweak_configs(spend)
    out = pd.DataFrame({
        "setting": setting_of(spend),
        "tweak": spend["tweak"].fillna(VANILLA).astype(object),
        "rewind_epoch": pd.Series([c.rewind_epoch for c in configs], index=spend.index, dtype="int64"),
        "level": _col(spend, "level", 0).fillna(0).astype("int64"),
        "sparsity": _col(spend, "sparsity", np.nan).astype("float64"),
        "seed": _col(spend, "seed", 0).fillna(0).astype("int64"),
        "ticket": ticket_of(spend),
        "test_acc": _col(spend, "test_acc", np.nan).astype("float64"),
        "device_seconds": _col(spend, "device_seconds", np.nan).astype("float64"),
    }, index=spend.index)
    out.insert(2, "base_tweak", pd.Series([base_tweak(c) for c in configs], index=spend.index, dtype=object))
    return out.reset_index(drop=True)


def ci_halfwidth(std: pd.Series, n: pd.Series) -> pd.Series:
    """Half-width of the t-based 95% interval of a mean; NaN for a single seed."""
    n = n.astype("float64")
    t = pd.Series(np.where(n >= 2, stats.t.ppf(0.975, np.maximum(n - 1, 1)), np.nan), index=n.index)
    return t * std / np.sqrt(n)


def _mean_ci(group: pd.api.typing.DataFrameGroupBy, column: str) -> pd.DataFrame:
    agg = group[column].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    half = ci_halfwidth(agg["std"], agg["n"])
    agg["ci_low"], agg["ci_high"] = agg["mean"] - half, agg["mean"] + half
    return agg


def summarize(points: pd.DataFrame) -> pd.DataFrame:
    """Mean, std and 95% interval of test_acc over seeds per (combination, level)."""
    columns = POINT_KEYS + ["sparsity", "mean", "std", "n", "ci_low", "ci_high",
                            "device_seconds", "device_seconds_total"]
    if points.empty:
        return pd.DataFrame(columns=columns)
    group = points.groupby(POINT_KEYS)
    out = _mean_ci(group, "test_acc")
    out["sparsity"] = group["sparsity"].mean()
    out["device_seconds"] = group["device_seconds"].mean()
    out["device_seconds_total"] = group["device_seconds"].sum(min_count=1)
    return out.reset_index()[columns].sort_values(["setting", "tweak", "sparsity"]).reset_index(drop=True)


def dense_reference(trials: pd.DataFrame) -> pd.DataFrame:
    """Dense accuracy per setting over ticket seeds: the draw's dense_test_acc, or for a ticket
    without a draw run the dense_test_acc its spend runs carry. The dense net does not depend on
    the mask source, so every source of a family shares it (a draw at initialisation has none)."""
    columns = ["setting", "dense_mean", "dense_std", "n_tickets", "source"]
    runs = trials[trials["stage"].isin(["draw", "spend"]) & _col(trials, "dense_test_acc", np.nan).notna()]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    seed = _col(runs, "ticket_seed", None).astype(object)  # runs logged before it name their ticket by key
    ticket = ("seed" + seed.astype(str)).where(seed.notna(), ticket_of(runs))
    runs = runs.assign(family=setting_of(runs, DENSE_PARAMS), ticket=ticket,
                       from_draw=runs["stage"] == "draw").sort_values(["from_draw", "start_time"])
    per_ticket = runs.drop_duplicates(["family", "ticket"], keep="last")
    group = per_ticket.groupby("family")
    out = pd.DataFrame({
        "dense_mean": group["dense_test_acc"].mean(),
        "dense_std": group["dense_test_acc"].std(),
        "n_tickets": group["dense_test_acc"].count(),
        "source": group["from_draw"].agg(lambda d: "draw run" if d.all() else
                                         ("spend runs' dense_test_acc" if not d.any() else "draw and spend runs")),
    }).reset_index()
    settings = trials[trials["stage"].isin(["draw", "spend"])]
    settings = pd.DataFrame({"setting": setting_of(settings), "family": setting_of(settings, DENSE_PARAMS)})
    return settings.drop_duplicates().merge(out, on="family")[columns].reset_index(drop=True)


def vanilla_baseline(summary: pd.DataFrame, trials: pd.DataFrame, draw_levels: pd.DataFrame) -> pd.DataFrame:
    """Vanilla LTH per (setting, level): the grid's `vanilla` spend runs where they exist, else
    the draw's per-level vanilla_test_acc (from the draw run, or as copied onto spend runs)."""
    columns = ["setting", "level", "sparsity", "mean", "std", "n", "ci_low", "ci_high", "source"]
    levels = summary[["setting", "level", "sparsity"]].groupby(["setting", "level"], as_index=False).mean()
    from_spend = summary[summary["tweak"] == VANILLA].assign(source="vanilla spend runs")
    from_spend = from_spend[columns]

    # Per (ticket, level) values the draw reported: its step series, else the spend runs' copy.
    draws = trials[trials["stage"] == "draw"]
    draws = pd.DataFrame({"run_id": draws["run_id"], "setting": setting_of(draws), "ticket": ticket_of(draws)})
    series = draw_levels.merge(draws, on="run_id")[["setting", "ticket", "level", "vanilla_test_acc"]]
    spends = trials[(trials["stage"] == "spend") & _col(trials, "vanilla_test_acc", np.nan).notna()]
    copies = pd.DataFrame({"setting": setting_of(spends), "ticket": ticket_of(spends),
                           "level": _col(spends, "level", 0), "vanilla_test_acc": _col(spends, "vanilla_test_acc", np.nan)})
    per_ticket = pd.concat([series.assign(rank=0), copies.assign(rank=1)]).dropna(subset=["vanilla_test_acc"])
    per_ticket = per_ticket.sort_values("rank").drop_duplicates(["setting", "ticket", "level"])
    if per_ticket.empty:
        from_draw = pd.DataFrame(columns=columns)
    else:
        per_ticket["level"] = per_ticket["level"].astype("int64")
        from_draw = _mean_ci(per_ticket.groupby(["setting", "level"]), "vanilla_test_acc").reset_index()
        from_draw = from_draw.merge(levels, on=["setting", "level"]).assign(source="draw run")[columns]

    out = pd.concat([d for d in (from_spend, from_draw) if not d.empty] or [pd.DataFrame(columns=columns)])
    out = out.drop_duplicates(["setting", "level"], keep="first")
    out = out.merge(levels[["setting", "level"]], on=["setting", "level"])
    return out.sort_values(["setting", "level"]).reset_index(drop=True)[columns]


def gains(summary: pd.DataFrame, baseline: pd.DataFrame) -> pd.DataFrame:
    """Mean test accuracy minus vanilla LTH at the same level, in percentage points
    (NaN where the level has no vanilla accuracy)."""
    tweaks = summary[summary["tweak"] != VANILLA]
    base = baseline[["setting", "level", "mean"]].rename(columns={"mean": "vanilla_mean"})
    out = tweaks.merge(base, on=["setting", "level"], how="left")
    out["gain_pp"] = 100 * (out["mean"] - out["vanilla_mean"])
    return out[["setting", "tweak", "level", "sparsity", "mean", "vanilla_mean", "gain_pp"]]


CONTROLS = ("reinit", "shuffle")  # the lottery-ticket controls' labels (tweak `init`)


def lottery_controls(summary: pd.DataFrame) -> pd.DataFrame:
    """Per setting and level, the ticket (vanilla) against its reinit and shuffle controls: mean
    test accuracy and the ticket's lead in percentage points (the lottery-ticket effect itself)."""
    columns = ["setting", "level", "sparsity", "ticket", *CONTROLS, *(f"ticket_minus_{c}_pp" for c in CONTROLS)]
    picked = summary[summary["tweak"].isin([VANILLA, *CONTROLS])]
    if not picked["tweak"].isin(CONTROLS).any():
        return pd.DataFrame(columns=columns)
    out = (picked.pivot_table(index=["setting", "level"], columns="tweak", values="mean")
           .reindex(columns=[VANILLA, *CONTROLS]).rename(columns={VANILLA: "ticket"})
           .dropna(subset=list(CONTROLS), how="all"))
    out["sparsity"] = picked.groupby(["setting", "level"])["sparsity"].mean()
    for control in CONTROLS:
        out[f"ticket_minus_{control}_pp"] = 100 * (out["ticket"] - out[control])
    return out.reset_index()[columns]


def gains_by_source(gains: pd.DataFrame) -> pd.DataFrame:
    """Gain over vanilla (percentage points) per tweak (rows) and setting x sparsity (columns):
    the settings differ by mask source, so a row that stays positive is the any-mask claim."""
    if gains.empty:
        return pd.DataFrame()
    sparsity = (100 * gains["sparsity"]).round(1).map("{:g}%".format)
    return gains.assign(column=gains["setting"] + " @ " + sparsity).pivot_table(
        index="tweak", columns="column", values="gain_pp", aggfunc="mean")


def matrix(frame: pd.DataFrame, value: str) -> pd.DataFrame:
    """tweak x sparsity (in %, one decimal) table of `value`, for heat maps."""
    if frame.empty:
        return pd.DataFrame()
    table = frame.assign(sparsity_pct=(100 * frame["sparsity"]).round(1))
    return table.pivot_table(index="tweak", columns="sparsity_pct", values=value, aggfunc="mean", dropna=False)


def frontier(summary: pd.DataFrame, dense: pd.DataFrame) -> pd.DataFrame:
    """Winning-ticket frontier: per combination, the highest sparsity whose mean accuracy is
    at least the dense one, less one seed std when several seeds exist (the dense std over
    tickets, else the point's own std over seeds)."""
    columns = ["setting", "tweak", "frontier_sparsity", "frontier_level", "matched_levels",
               "dense_mean", "tolerance", "note"]
    rows = []
    for (setting, tweak), points in summary.groupby(["setting", "tweak"]):
        ref = dense[dense["setting"] == setting]
        row = {"setting": setting, "tweak": tweak, "frontier_sparsity": np.nan, "frontier_level": pd.NA,
               "matched_levels": "", "dense_mean": np.nan, "tolerance": "", "note": ""}
        if ref.empty:
            rows.append({**row, "note": "no dense accuracy logged"})
            continue
        dense_mean, dense_std, n_tickets = ref.iloc[0][["dense_mean", "dense_std", "n_tickets"]]
        if n_tickets >= 2:
            tol, row["tolerance"] = pd.Series(dense_std, index=points.index), f"dense std over {n_tickets} seeds"
        else:
            tol = points["std"].where(points["n"] >= 2, 0.0).fillna(0.0)
            row["tolerance"] = "trial std over seeds" if (points["n"] >= 2).any() else "none (single seed)"
        matched = points[points["mean"] >= dense_mean - tol - EPS].sort_values("sparsity")
        row["dense_mean"] = dense_mean
        row["matched_levels"] = ", ".join(str(int(k)) for k in matched["level"])
        if matched.empty:
            row["note"] = "below the dense accuracy at every sparsity"
        else:
            row["frontier_sparsity"], row["frontier_level"] = matched["sparsity"].iloc[-1], int(matched["level"].iloc[-1])
            if matched["sparsity"].iloc[-1] >= points["sparsity"].max():
                row["note"] = "matches at the highest sparsity measured"
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def critical_sparsity(summary: pd.DataFrame) -> pd.DataFrame:
    """Per combination from init (rewind_epoch 0) against the same tweak with weight
    rewinding (plain rewinding when the grid lacks that pair, as in the paper's Figure 4b):
    the lowest sparsity from which rewinding stays ahead."""
    columns = ["setting", "from_init", "rewound", "levels_compared", "critical_sparsity", "note"]
    rows = []
    for setting, sub in summary.groupby("setting"):
        tweaks = sub.drop_duplicates("tweak").set_index("tweak")
        init = tweaks[tweaks["rewind_epoch"] == 0]
        rewound = tweaks[tweaks["rewind_epoch"] > 0]
        for tweak, base in init["base_tweak"].items():
            same = rewound[rewound["base_tweak"] == base]
            plain = rewound[rewound["base_tweak"] == VANILLA]
            partners = same.index.tolist() or plain.index.tolist()
            for partner in partners:
                rows.append({"setting": setting, "from_init": tweak, "rewound": partner,
                             **_crossing(sub[sub["tweak"] == tweak], sub[sub["tweak"] == partner])})
    return pd.DataFrame(rows, columns=columns)


def _crossing(init: pd.DataFrame, rewound: pd.DataFrame) -> dict:
    both = init.merge(rewound, on="level", suffixes=("_init", "_rew")).sort_values("sparsity_init")
    out = {"levels_compared": len(both), "critical_sparsity": np.nan}
    if both.empty:
        return {**out, "note": "no level in common"}
    ahead = (both["mean_rew"] > both["mean_init"] + EPS).to_numpy()
    if ahead.all():
        return {**out, "note": "rewinding ahead at every sparsity measured: no crossing"}
    if not ahead[-1]:
        never = "never ahead" if not ahead.any() else "not ahead at the highest sparsity"
        return {**out, "note": f"rewinding {never}: no crossing"}
    start = len(ahead) - int(np.argmin(ahead[::-1]))  # first index of the final run of True
    return {**out, "critical_sparsity": float(both["sparsity_init"].iloc[start]), "note": ""}


def cost_by_tweak(summary: pd.DataFrame) -> pd.DataFrame:
    """Device time per combination: trials run, total and per-trial device hours."""
    if summary.empty:
        return pd.DataFrame(columns=["setting", "tweak", "trials", "device_hours", "hours_per_trial"])
    group = summary.groupby(["setting", "tweak"])
    out = pd.DataFrame({"trials": group["n"].sum(),
                        "device_hours": group["device_seconds_total"].sum(min_count=1) / 3600})
    out["hours_per_trial"] = out["device_hours"] / out["trials"]
    return out.reset_index()


# --- The paper's analyses (sweeps run with --analyze / --hessian-every N) -------------------

HESSIAN = "hessian_top_eigenvalue"
ACT_SPARSITY = "act_sparsity"  # overall; act_sparsity_<stage> per stage
OVERALL = "overall"
ANALYSIS_KEYS = ["setting", "tweak", "activation", "level"]


def act_sparsity_stages(columns) -> dict[str, str]:
    """`act_sparsity*` columns -> stage name ('overall' for the plain `act_sparsity`)."""
    out = {}
    for column in columns:
        if column == ACT_SPARSITY:
            out[column] = OVERALL
        elif str(column).startswith(ACT_SPARSITY + "_"):
            out[column] = str(column)[len(ACT_SPARSITY) + 1:]
    return out


def stage_order(stages) -> list[str]:
    """Model order as far as names tell: the stem first, numbered stages by number
    (layer2 before layer10), the classifier head last but one, 'overall' last."""
    def key(name: str):
        rank = 0 if name in ("stem", "conv1", "features") else 2 if name in ("head", "fc", "classifier") else 1
        rank = 3 if name == OVERALL else rank
        return rank, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]
    return sorted(dict.fromkeys(stages), key=key)


def tweak_order(tweaks: pd.Series, activations: pd.Series | None = None) -> list[str]:
    """Vanilla first, then grouped by activation (relu, then swish, ...), then by name."""
    acts = {} if activations is None else dict(zip(tweaks, activations.fillna("").astype(str)))
    return sorted(dict.fromkeys(tweaks), key=lambda t: (t != VANILLA, acts.get(t, ""), str(t)))


def analysis_points(trials: pd.DataFrame) -> pd.DataFrame:
    """The analysis metrics of the runs that count (see `finished_spends`): a row per run with
    its combination, activation, level, seed, the `act_sparsity*` fractions and the final top
    Hessian eigenvalue; columns absent from the sweep are absent here."""
    spend = finished_spends(trials)
    out = pd.DataFrame({
        "run_id": _col(spend, "run_id", None).astype(object),
        "setting": setting_of(spend),
        "tweak": spend["tweak"].fillna(VANILLA).astype(object),
        "activation": _col(spend, "activation", None).astype(object),
        "level": _col(spend, "level", 0).fillna(0).astype("int64"),
        "sparsity": _col(spend, "sparsity", np.nan).astype("float64"),
        "seed": _col(spend, "seed", 0).fillna(0).astype("int64"),
    }, index=spend.index)
    for column in [*act_sparsity_stages(spend.columns), HESSIAN]:
        if column in spend.columns:
            out[column] = spend[column].astype("float64")
    return out.reset_index(drop=True)


def first_present(values: pd.Series):
    present = values.dropna()
    return present.iloc[0] if len(present) else None


def act_sparsity_summary(points: pd.DataFrame) -> pd.DataFrame:
    """Mean activation sparsity (fraction of |a| <= 1e-3) over seeds per combination, level and
    stage ('overall' for all stages together): a long frame, empty when nothing was logged."""
    columns = [*ANALYSIS_KEYS, "sparsity", "stage", "mean", "std", "n"]
    stages = act_sparsity_stages(points.columns)
    if not stages or points.empty:
        return pd.DataFrame(columns=columns)
    long = points.melt(id_vars=["setting", "tweak", "activation", "level", "sparsity", "seed"],
                       value_vars=list(stages), var_name="stage", value_name="value").dropna(subset=["value"])
    if long.empty:
        return pd.DataFrame(columns=columns)
    long["stage"] = long["stage"].map(stages)
    long["activation"] = long.groupby("tweak")["activation"].transform(first_present)
    group = long.groupby(["setting", "tweak", "level", "stage"])
    out = group["value"].agg(["mean", "std", "count"]).rename(columns={"count": "n"})
    out["sparsity"] = group["sparsity"].mean()
    out["activation"] = group["activation"].agg(first_present)
    return out.reset_index()[columns].sort_values(["setting", "tweak", "level", "stage"]).reset_index(drop=True)


def pick_level(frame: pd.DataFrame) -> int | None:
    """The level one table or figure shows: the one the most combinations have data at, the
    highest of those (sparse tickets are where the tweaks differ)."""
    if frame.empty:
        return None
    per_level = frame.groupby("level")["tweak"].nunique()
    return int(max(per_level.index, key=lambda lv: (per_level[lv], lv)))


def act_sparsity_table(summary: pd.DataFrame, level: int | None = None) -> pd.DataFrame:
    """Table A1 for one setting: rows = stages then 'overall', columns = combinations, values =
    mean activation sparsity in % at `level` (default `pick_level`). Empty when there is none."""
    level = pick_level(summary) if level is None else level
    at = summary[summary["level"] == level]
    if at.empty:
        return pd.DataFrame()
    table = at.pivot_table(index="stage", columns="tweak", values="mean", aggfunc="mean")
    table = 100 * table.loc[stage_order(table.index), tweak_order(at["tweak"], at["activation"])]
    table.index.name, table.columns.name = "stage", "tweak"
    return table


def hessian_summary(points: pd.DataFrame) -> pd.DataFrame:
    """The final top Hessian eigenvalue: mean, std and 95% interval over seeds per combination
    and level."""
    columns = [*ANALYSIS_KEYS, "sparsity", "mean", "std", "n", "ci_low", "ci_high"]
    if HESSIAN not in points.columns or points[HESSIAN].isna().all():
        return pd.DataFrame(columns=columns)
    present = points.dropna(subset=[HESSIAN])
    present = present.assign(activation=present.groupby("tweak")["activation"].transform(first_present).fillna(""))
    group = present.groupby(["setting", "tweak", "activation", "level"])
    out = _mean_ci(group, HESSIAN)
    out["sparsity"] = group["sparsity"].mean()
    return out.reset_index()[columns].sort_values(["setting", "tweak", "sparsity"]).reset_index(drop=True)


def hessian_curves(history: pd.DataFrame | None, points: pd.DataFrame) -> pd.DataFrame:
    """The eigenvalue over training (Figure A12): mean, std and 95% interval over seeds per
    combination, level and epoch, for the runs that count."""
    columns = [*ANALYSIS_KEYS, "sparsity", "epoch", "mean", "std", "n", "ci_low", "ci_high"]
    if history is None or history.empty or points.empty:
        return pd.DataFrame(columns=columns)
    runs = points[["run_id", "setting", "tweak", "activation", "level", "sparsity"]]
    joined = history.merge(runs, on="run_id").dropna(subset=[HESSIAN])
    if joined.empty:
        return pd.DataFrame(columns=columns)
    joined["activation"] = joined.groupby("tweak")["activation"].transform(first_present).fillna("")
    group = joined.groupby(["setting", "tweak", "activation", "level", "epoch"])
    out = _mean_ci(group, HESSIAN)
    out["sparsity"] = group["sparsity"].mean()
    return out.reset_index()[columns].sort_values(["setting", "tweak", "level", "epoch"]).reset_index(drop=True)


# --- Loss landscapes (sweeps run with --analyze / --analyze-epochs) ----------------------------

LANDSCAPE_VIEWS = {"surface_2d": "steps", "input_surface_2d": "input_steps", "input_random_1d": "input_steps",
                   "input_gradient_sign_1d": "input_steps"}  # array -> the steps it is measured at


@dataclass
class LandscapeSet:
    """The landscapes of vanilla LTH and each tweak of one ticket (`ticket`, re-training seed
    `seed`: one set of directions) at one level and one set of weights (`weights`: `final` or
    `epoch_<K>`): view (a `LANDSCAPE_VIEWS` key) -> tweak -> array, vanilla first; `steps` per view."""

    setting: str
    level: int
    sparsity: float
    weights: str
    ticket: str
    seed: int
    steps: dict[str, np.ndarray]
    views: dict[str, dict[str, np.ndarray]]


def _weights_order(label: str) -> tuple[int, int]:
    """Epoch snapshots by epoch, the final weights last."""
    return (1, 0) if label == "final" else (0, int(str(label).removeprefix("epoch_")))


def landscape_sets(trials: pd.DataFrame, landscapes: pd.DataFrame | None) -> list[LandscapeSet]:
    """Per setting, at one level (`pick_level` over the runs with landscapes) and for each analysed
    set of weights, the landscapes of the ticket and re-training seed with the most combinations
    there (the lowest ticket, then seed, on ties): the compared spends share their directions."""
    if landscapes is None or landscapes.empty:
        return []
    spend = finished_spends(trials)
    runs = pd.DataFrame({"run_id": spend["run_id"], "setting": setting_of(spend),
                         "tweak": spend["tweak"].fillna(VANILLA).astype(object),
                         "activation": _col(spend, "activation", None).astype(object),
                         "level": _col(spend, "level", 0).fillna(0).astype("int64"),
                         "sparsity": _col(spend, "sparsity", np.nan).astype("float64"),
                         "ticket": ticket_of(spend), "seed": _col(spend, "seed", 0).fillna(0).astype("int64")})
    joined = landscapes.merge(runs, on="run_id")
    out = []
    for setting, rows in joined.groupby("setting"):
        level = pick_level(rows)
        at = rows[rows["level"] == level]
        for weights in sorted(at["weights"].unique(), key=_weights_order):
            same = at[at["weights"] == weights]
            counts = same.groupby(["ticket", "seed"])["tweak"].nunique()
            (ticket, seed), _ = min(counts.items(), key=lambda item: (-item[1], str(item[0][0]), item[0][1]))
            chosen = same[(same["ticket"] == ticket) & (same["seed"] == seed)].drop_duplicates("tweak", keep="last")
            chosen = chosen.set_index("tweak").loc[tweak_order(chosen["tweak"], chosen["activation"])]
            views: dict[str, dict[str, np.ndarray]] = {}
            steps: dict[str, np.ndarray] = {}
            for view, axis in LANDSCAPE_VIEWS.items():
                present = chosen[chosen[view].notna() & chosen[axis].notna()]
                if present.empty:
                    continue
                steps[view] = present[axis].iloc[0]
                views[view] = {tweak: row[view] for tweak, row in present.iterrows()
                               if np.array_equal(row[axis], steps[view])}  # one grid per figure
            out.append(LandscapeSet(setting=setting, level=int(level), sparsity=float(same["sparsity"].mean()),
                                    weights=str(weights), ticket=str(ticket), seed=int(seed), steps=steps,
                                    views=views))
    return out


# --- Across architectures and data sets (Figures 6 and 7) --------------------------------------

FAMILY_PARAMS = ["dataset", "arch", "width", "prune_method"]


def families(trials: pd.DataFrame) -> pd.DataFrame:
    """Each setting (ticket family) with its data set, architecture, width and mask source, ordered
    by data set, then architecture and width: the panel's rows and cells."""
    columns = ["setting", *FAMILY_PARAMS]
    runs = trials[trials["stage"].isin(["draw", "spend"])]
    if runs.empty:
        return pd.DataFrame(columns=columns)
    out = pd.DataFrame({"setting": setting_of(runs),
                        **{p: _col(runs, p, None).astype(object) for p in FAMILY_PARAMS}}).drop_duplicates("setting")
    return out.sort_values(["dataset", "arch", "width", "prune_method"], key=lambda c: c.astype(str),
                           na_position="last").reset_index(drop=True)[columns]


@dataclass
class Analysis:
    """Everything the report shows, plus notes on what is missing."""

    points: pd.DataFrame
    summary: pd.DataFrame
    dense: pd.DataFrame
    baseline: pd.DataFrame
    gains: pd.DataFrame
    frontier: pd.DataFrame
    critical: pd.DataFrame
    cost: pd.DataFrame
    controls: pd.DataFrame = field(default_factory=pd.DataFrame)  # lottery_controls
    notes: list[str] = field(default_factory=list)
    act_sparsity: pd.DataFrame = field(default_factory=pd.DataFrame)  # act_sparsity_summary
    hessian: pd.DataFrame = field(default_factory=pd.DataFrame)  # hessian_summary
    hessian_curves: pd.DataFrame = field(default_factory=pd.DataFrame)  # hessian_curves
    sparsity_axis: str = "nominal"  # SPARSITY_AXES: what every `sparsity` above measures
    landscapes: list[LandscapeSet] = field(default_factory=list)  # landscape_sets
    families: pd.DataFrame = field(default_factory=pd.DataFrame)  # families

    @property
    def settings(self) -> list[str]:
        return sorted(self.summary["setting"].unique())


def analyze(trials: pd.DataFrame, draw_levels: pd.DataFrame, hessian_history: pd.DataFrame | None = None,
            sparsity: str = "nominal", landscapes: pd.DataFrame | None = None) -> Analysis:
    """Everything the report shows, against the sparsity axis `sparsity` (SPARSITY_AXES)."""
    trials = on_sparsity_axis(trials, sparsity)
    points = spend_points(trials)
    summary = summarize(points)
    dense = dense_reference(trials)
    baseline = vanilla_baseline(summary, trials, draw_levels)
    extra = analysis_points(trials)
    result = Analysis(points=points, summary=summary, dense=dense, baseline=baseline,
                      gains=gains(summary, baseline), frontier=frontier(summary, dense),
                      critical=critical_sparsity(summary), cost=cost_by_tweak(summary),
                      controls=lottery_controls(summary),
                      act_sparsity=act_sparsity_summary(extra), hessian=hessian_summary(extra),
                      hessian_curves=hessian_curves(hessian_history, extra), sparsity_axis=sparsity,
                      landscapes=landscape_sets(trials, landscapes), families=families(trials))
    result.notes = sweep_notes(trials, result)
    return result


def sweep_notes(trials: pd.DataFrame, result: Analysis) -> list[str]:
    """Plain sentences on what is running, failed or missing, for the top of the report."""
    notes = []
    runs = trials[trials["stage"].isin(["draw", "spend"])]
    running = runs[runs["status"].isin(["RUNNING", "SCHEDULED"])]
    if len(running):
        notes.append(f"The sweep is still running: {len(running)} run(s) have status RUNNING/SCHEDULED; "
                     "they are left out until they finish.")
    unfinished = runs[(runs["stage"] == "spend") & (runs["status"] == "FINISHED") & ~runs["final"].astype(bool)]
    if len(unfinished):
        notes.append(f"{len(unfinished)} finished spend run(s) have no final metrics (final_best_val_acc) and are "
                     "left out.")
    failed = runs[runs["status"].isin(["FAILED", "KILLED"])]
    if len(failed):
        names = [f"{t} level {lv}" for t, lv in zip(failed["tweak"].fillna(failed["stage"]),
                                                    _col(failed, "level", pd.NA))]
        more = f" and {len(names) - 5} more" if len(names) > 5 else ""
        notes.append(f"{len(failed)} run(s) FAILED or were KILLED ({', '.join(names[:5])}{more}); "
                     "they are left out.")
    if result.summary.empty:
        notes.append("No finished spend run yet: there is nothing to plot.")
        return notes
    if (trials["stage"] == "draw").sum() == 0:
        notes.append("No draw run in this experiment: the dense and vanilla LTH accuracies come from the "
                     "dense_test_acc / vanilla_test_acc metrics of the spend runs.")
    if result.summary["n"].max() < 2:
        notes.append("A single seed per point: no confidence intervals, and the frontier compares with the "
                     "dense accuracy without a tolerance.")
    if result.dense.empty:
        notes.append("No dense accuracy logged: no dense line and no winning-ticket frontier.")
    covered = set(zip(result.baseline["setting"], result.baseline["level"]))
    missing = result.summary.drop_duplicates(["setting", "level"])
    missing = missing[[(s, lv) not in covered for s, lv in zip(missing["setting"], missing["level"])]]
    if len(missing):
        where = ", ".join(f"level {lv} ({100 * sp:.1f}%)" for lv, sp in zip(missing["level"], missing["sparsity"]))
        notes.append(f"No vanilla LTH accuracy at {where}: the gains there are left blank.")
    return notes
