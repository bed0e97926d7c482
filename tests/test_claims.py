"""The claims C1–C6 (dashboards/claims.py) on a hand-made points table whose answers are known:
each pair (ticket, seed) carries an offset shared by every combination, so only the paired
difference is clean; the tweaks' gains are built in."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dashboards import analysis, claims, html, report

IMP, RANDOM = "digits resnet18 w0.125 imp", "digits resnet18 w0.125 random"
SPARSITY = {1: 0.5, 2: 0.8, 3: 0.9}
VANILLA_ACC = {1: 0.95, 2: 0.93, 3: 0.88}
TICKETS = [f"tk{i}" for i in range(5)]
OFFSET = [-0.002, 0.001, 0.0, 0.002, -0.001]  # per pair, shared by every combination
JITTER = [0.002, -0.002, 0.001, -0.001, 0.0]  # per pair, sums to 0
AT_TRT = "swish+skip-conv1x1+ls0.1+gradinit"
# gain over vanilla per level (fractions), plus JITTER[i] * weight at level 3
GAINS = {
    AT_TRT: ({1: 0.0, 2: 0.01, 3: 0.03}, 1.0),  # grows with sparsity, +3 pp at the top
    "ls0.1": ({1: -0.01, 2: -0.01, 3: -0.01}, 1.0),  # flat: slope 0 on average
    "reinit": ({1: 0.0, 2: -0.02, 3: -0.05}, 1.0),  # the ticket beats it
    "shuffle": ({1: 0.0, 2: 0.02, 3: 0.04}, 1.0),  # beats the ticket: C5 contradicted for shuffle
}
RANDOM_GAINS = {AT_TRT: ({1: 0.0, 2: 0.0, 3: 0.0}, 3.0)}  # jitter only: mean 0


def _rows(setting: str, gains: dict) -> list[dict]:
    rows = []
    for i, ticket in enumerate(TICKETS):
        for level, sparsity in SPARSITY.items():
            base = VANILLA_ACC[level] + OFFSET[i]
            rows.append({"setting": setting, "tweak": "vanilla", "level": level, "sparsity": sparsity,
                         "ticket": ticket, "seed": 0, "test_acc": base})
            for tweak, (gain, weight) in gains.items():
                jitter = JITTER[i] * weight * (level == 3)
                rows.append({"setting": setting, "tweak": tweak, "level": level, "sparsity": sparsity,
                             "ticket": ticket, "seed": 0, "test_acc": base + gain[level] + jitter})
    return rows


def make_analysis(rows: list[dict], dense: list[dict] | None = None) -> analysis.Analysis:
    points = pd.DataFrame(rows)
    points["base_tweak"] = points["tweak"]
    points["rewind_epoch"] = 0
    points["device_seconds"] = 1.0
    summary = analysis.summarize(points)
    dense_frame = pd.DataFrame(dense or [], columns=["setting", "dense_mean", "dense_std", "n_tickets", "source"])
    empty = pd.DataFrame()
    return analysis.Analysis(points=points, summary=summary, dense=dense_frame, baseline=empty, gains=empty,
                             frontier=empty, critical=empty, cost=empty)


@pytest.fixture
def full():
    rows = _rows(IMP, GAINS) + _rows(RANDOM, RANDOM_GAINS)
    # dense 93.5%: vanilla keeps it at 50% only, AT + TRT (94% at 80%) up to 80%
    dense = [{"setting": s, "dense_mean": 0.935, "dense_std": 0.0, "n_tickets": 5, "source": "draw run"}
             for s in (IMP, RANDOM)]
    return make_analysis(rows, dense)


def act_points(relu: float, swish: float) -> pd.DataFrame:
    rows = []
    for i, ticket in enumerate(TICKETS):
        for tweak, value in (("vanilla", relu), ("swish", swish)):
            rows.append({"setting": IMP, "tweak": tweak, "level": 3, "sparsity": 0.9, "ticket": ticket, "seed": 0,
                         "act_sparsity": value + JITTER[i]})
    return pd.DataFrame(rows)


def row(table: pd.DataFrame, claim: str, contains: str = "", setting: str | None = None) -> pd.Series:
    picked = table[(table["claim"] == claim) & table["compares"].str.contains(contains, regex=False)]
    if setting is not None:
        picked = picked[picked["setting"] == setting]
    assert len(picked) == 1, picked
    return picked.iloc[0]


def test_interval_is_a_paired_t_interval():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    low, high, test = claims.interval(values)
    half = 2.7764451 * values.std(ddof=1) / np.sqrt(5)
    assert (low, high) == pytest.approx((3 - half, 3 + half))
    assert test == "paired t (df=4)"
    low, high, test = claims.interval(np.arange(40, dtype=float))
    assert test.startswith("bootstrap") and low < 19.5 < high


def test_verdicts():
    assert claims.verdict(1.0, 0.2, 1.8) == "holds"
    assert claims.verdict(-1.0, -1.8, -0.2) == "contradicted"
    assert claims.verdict(0.5, -0.3, 1.3) == "not detected"
    assert claims.verdict(0.0, 0.0, 0.0) == "not detected"


def test_labels():
    assert claims.is_at_trt(AT_TRT) and claims.is_at_trt("swish+skip-identity+ls0.1+gradinit+rewind1")
    assert claims.is_at_trt("swish+skip-identity+ls0.1+gradinit(iterations=390)")  # the paper preset's
    assert not claims.is_at_trt("swish+skip-identity+ls0.1") and not claims.is_at_trt("vanilla")
    assert claims.source_of(RANDOM) == "random" and claims.source_of("digits resnet18 w0.25") == "imp"
    assert claims.vanilla_for("swish+rewind1", {"vanilla", "rewind1"}) == "rewind1"
    assert claims.vanilla_for("rewind1", {"vanilla", "rewind1"}) == "vanilla"
    assert claims.vanilla_for("swish+rewind1", {"vanilla"}) == "vanilla"


def test_every_claim_on_known_answers(full):
    found = claims.evaluate(full, act_points(relu=0.30, swish=0.05))
    table = found.table

    c1 = row(table, "C1")
    assert c1["diff_mean"] == pytest.approx(25.0) and c1["n"] == 5 and c1["verdict"] == "holds"
    assert c1["test"] == "paired t (df=4)"

    c2_all, c2_at, c2_ls = row(table, "C2", "mean over tweaks"), row(table, "C2", AT_TRT), row(table, "C2", ": ls0.1 −")
    assert c2_at["verdict"] == "holds" and c2_at["diff_mean"] > 0
    # ls0.1: a flat gain, jitter summing to 0 at one level: mean slope 0
    assert c2_ls["diff_mean"] == pytest.approx(0.0, abs=1e-9) and c2_ls["verdict"] == "not detected"
    assert c2_all["verdict"] == "holds" and c2_all["n"] == 5
    assert not table["compares"].str.contains("reinit|shuffle").loc[table["claim"] == "C2"].any()

    c3 = row(table, "C3", AT_TRT)
    assert c3["diff_mean"] == pytest.approx(3.0) and c3["verdict"] == "holds" and "90.0%" in c3["compares"]

    c4 = row(table, "C4", AT_TRT)  # vanilla keeps the dense accuracy up to 50%, AT + TRT up to 80%
    assert c4["diff_mean"] == pytest.approx(30.0) and c4["verdict"] == "holds"

    reinit, shuffle = row(table, "C5", "reinit"), row(table, "C5", "shuffle")
    assert reinit["diff_mean"] == pytest.approx(5.0) and reinit["verdict"] == "holds"
    assert shuffle["diff_mean"] == pytest.approx(-4.0) and shuffle["verdict"] == "contradicted"

    c6 = row(table, "C6", AT_TRT, setting=RANDOM)
    assert c6["diff_mean"] == pytest.approx(0.0, abs=1e-9) and c6["verdict"] == "not detected"
    assert c6["n"] == 5

    assert found.judged() == ["C1", "C2", "C3", "C4", "C5", "C6"]
    # the per-pair values behind each row are kept for the plots
    assert len(found.per_pair[found.per_pair["row"] == c3.name]) == 5


def test_c1_contradicted_when_swish_is_sparser(full):
    table = claims.evaluate(full, act_points(relu=0.05, swish=0.30)).table
    assert row(table, "C1")["verdict"] == "contradicted"


def test_cannot_judge_names_the_missing_cells():
    only_vanilla = make_analysis([r for r in _rows(IMP, {}) if r["tweak"] == "vanilla"])
    table = claims.evaluate(only_vanilla).table
    verdicts = dict(zip(table["claim"] + " " + table["compares"], table["verdict"]))
    assert all(v.startswith("cannot judge: ") for v in verdicts.values()), verdicts
    assert "--analyze" in row(table, "C1")["verdict"]
    assert "AT + TRT" in row(table, "C3")["verdict"]
    assert "no dense accuracy" in row(table, "C4")["verdict"]
    assert "no reinit runs" in row(table, "C5", "reinit")["verdict"]
    assert "--prune-methods" in row(table, "C6")["verdict"]
    assert claims.evaluate(only_vanilla).judged() == []


def test_one_seed_cannot_judge():
    rows = [r for r in _rows(IMP, GAINS) if r["ticket"] == "tk0"]
    table = claims.evaluate(make_analysis(rows)).table
    c3 = row(table, "C3", AT_TRT)
    assert c3["verdict"].startswith("cannot judge: 1 pair") and c3["diff_mean"] == pytest.approx(3.0 + 0.2)


def test_report_renders_the_claims_section(full, tmp_path):
    section = html.Section("claims", "Claims")
    pngs = report.claims_section(full, tmp_path, section, act_points(relu=0.30, swish=0.05))
    text = "\n".join(section.blocks)
    assert "measured difference" in text and "95% interval" in text and "paired t (df=4)" in text
    assert "holds" in text and "contradicted" in text and "not detected" in text
    assert sorted(p.name for p in pngs) == [f"claim_C{i}.png" for i in range(1, 7)]
    assert all(p.stat().st_size > 1000 for p in pngs) and text.count("<img") == 6
    written = pd.read_csv(tmp_path / "claims.csv")
    assert list(written.columns) == claims.COLUMNS and set(written["claim"]) == {f"C{i}" for i in range(1, 7)}
