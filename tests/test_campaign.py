"""The campaign loop: arms, economics, lift and its intervals, the uplift gate, and the assignment log."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bench import campaign as demo_campaign
from features import schemas as s
from features.errors import InputError
from models import campaign as cp
from models.uplift import qini_coefficient
from pipeline import assign, campaign_log, measure, report
from pipeline.config import (
    BaseConfig,
    CampaignConfig,
    ClvConfig,
    ConfigError,
    FeaturesConfig,
    ScoreConfig,
    section,
)
from pipeline.io import write_json, write_table
from pipeline.weeks import grid
from tests.test_report import synthetic_drift, synthetic_scores

# --- arms -----------------------------------------------------------------------------------------------------------


def test_arms_are_a_function_of_customer_week_and_seed() -> None:
    ids = pd.Series([f"C{i}" for i in range(2000)])
    strata = pd.Series(np.where(np.arange(2000) % 3 == 0, "a", "b"))
    arms = cp.assign_arms(ids, strata, week="1998-W10", seed=42, share=0.2, min_per_segment=30)
    shuffled = np.random.default_rng(1).permutation(2000)
    again = cp.assign_arms(ids[shuffled], strata[shuffled], week="1998-W10", seed=42, share=0.2, min_per_segment=30)
    assert (pd.Series(again, index=shuffled).sort_index().to_numpy() == arms).all()  # row order changes nothing
    other = cp.assign_arms(ids, strata, week="1998-W11", seed=42, share=0.2, min_per_segment=30)
    assert (other != arms).mean() > 0.2  # another week draws again
    for name, n in (("a", 667), ("b", 1333)):
        assert ((arms == cp.CONTROL) & (strata == name)).sum() == int(np.ceil(0.2 * n))
    # the draw itself is pinned: the same on any machine
    assert cp.arm_draw(["C1"], "1998-W10", 42)[0] == cp.arm_draw(["C1"], "1998-W10", 42)[0]
    assert 0 <= cp.arm_draw(["C1"], "1998-W10", 42)[0] < 1


@pytest.mark.parametrize(("n", "expected"), [(0, 0), (1, 0), (2, 1), (40, 20), (100, 30), (1000, 200)])
def test_control_size_keeps_the_minimum_where_a_segment_can_spare_it(n: int, expected: int) -> None:
    assert cp.control_size(n, 0.2, 30) == expected


# --- economics --------------------------------------------------------------------------------------------------------


def test_net_value_and_budget_by_hand() -> None:
    p = np.array([0.6, 0.02, 0.5, 0.9])
    clv = np.array([100.0, 100.0, 10.0, 50.0])
    value = cp.net_value(p, clv, effect=np.array([0.05, 0.05, 0.05, 0.1]), cost=np.array([1.0, 1.0, 1.0, 2.0]))
    # 0.05 x 100 - 1; min(0.05, 0.02) x 100 - 1; 0.05 x 10 - 1; 0.1 x 50 - 2
    assert value == pytest.approx([4.0, 1.0, -0.5, 3.0])
    assert cp.within_budget(value, np.array([1.0, 1, 1, 2]), budget=None, control_share=0.2).tolist() == [
        True,
        True,
        False,
        True,
    ]
    # the best first: 4.0 (expected spend 0.8), 3.0 (+1.6 = 2.4), then 1.0 would make 3.2 > 3
    chosen = cp.within_budget(value, np.array([1.0, 1, 1, 2]), budget=3.0, control_share=0.2)
    assert chosen.tolist() == [True, False, False, True]


def test_actions_must_match_the_segments(params: dict[str, Any]) -> None:
    score = section(params, "score", ScoreConfig)
    used = [a for _, a in grid(score).values()]
    camp = section(params, "campaign", CampaignConfig)
    camp.check_against(used)
    actions = params["campaign"]["actions"]
    params["campaign"]["actions"] = actions[1:]
    with pytest.raises(ConfigError, match=r"no cost and effect for the action\(s\) \['priority retention call'\]"):
        section(params, "campaign", CampaignConfig).check_against(used)
    params["campaign"]["actions"] = [*actions, {"action": "priorty call", "cost_per_contact": 1, "assumed_effect": 0.1}]
    with pytest.raises(ConfigError, match=r"\['priorty call'\] are in no cell of score.segments \(misspelt\?\)"):
        section(params, "campaign", CampaignConfig).check_against(used)


# --- measurement ------------------------------------------------------------------------------------------------------


def test_newcombe_interval_matches_the_published_example() -> None:
    """Newcombe (1998), Statistics in Medicine 17:873, table II, example (a): 56/70 against 48/80, method 10."""
    retained = np.r_[np.ones(56), np.zeros(14), np.ones(48), np.zeros(32)].astype(bool)
    target = np.r_[np.ones(70), np.zeros(80)].astype(bool)
    r = cp.compare_arms(retained, np.zeros(150), target, margin_ratio=0.3, level=0.95, power=0.8)
    assert r.lift == pytest.approx(0.2)
    assert (round(r.lift_low, 4), round(r.lift_high, 4)) == (0.0524, 0.3339)
    assert r.significant


def test_mde_by_hand() -> None:
    # (z_0.975 + z_0.8) x sqrt(0.25 x (1/1000 + 1/1000)) = 2.80158 x 0.0223607
    assert cp.mde(0.5, 1000, 1000, level=0.95, power=0.8) == pytest.approx(0.062645, abs=1e-6)


def test_measured_effect_needs_significance_and_power() -> None:
    assert cp.measured_effect({"lift": 0.05, "mde": 0.03, "lift_low": 0.01, "lift_high": 0.09}) == 0.05
    assert cp.measured_effect({"lift": 0.05, "mde": 0.03, "lift_low": -0.01, "lift_high": 0.11}) is None
    assert cp.measured_effect({"lift": 0.02, "mde": 0.03, "lift_low": 0.001, "lift_high": 0.04}) is None
    assert cp.measured_effect({"lift": None, "mde": None, "lift_low": None, "lift_high": None}) is None


def test_pooled_interval_covers_the_true_lift(params: dict[str, Any]) -> None:
    """20 simulated seasons of 8 weekly lists with a heterogeneous effect: the pooled 95% interval covers the true
    pooled lift in 17-20 of them (the acceptance bar; 19 expected)."""
    hits = demo_campaign.coverage(params, seeds=20, weeks=8, customers=3000, max_effect=0.3)
    assert 17 <= hits <= 20


def test_demo_table_recovers_the_effect_per_segment(params: dict[str, Any]) -> None:
    log = demo_campaign.season(params, seed=3, weeks=8, customers=4000, shape="heterogeneous", max_effect=0.4)
    _, m_cfg = demo_campaign.settings(params, 3)
    table = demo_campaign.truth_table(log, measure.lift_results(log, m_cfg)).set_index("segment")
    # the persuadable middle bands gain most, the outer bands about nothing, and the intervals say so
    assert table.loc["band 2", "low"] > 0 and table.loc["band 3", "low"] > 0
    assert table.loc["band 1", "true lift"] < 0.01 and table.loc["band 4", "true lift"] < 0.02
    assert table["covered"].sum() >= 4


# --- uplift -----------------------------------------------------------------------------------------------------------


def test_qini_by_hand() -> None:
    # ranked: (t, 1), (c, 0), (t, 0), (c, 1). Q = 1, 1, 1, 1 - 1 x 2/2 = 0; random line 0; area 3 over n^2 = 16
    retained = np.array([1, 0, 0, 1])
    target = np.array([1, 0, 1, 0], dtype=bool)
    assert qini_coefficient(retained, target, np.array([4.0, 3.0, 2.0, 1.0])) == pytest.approx(3 / 16)
    assert qini_coefficient(retained, target, -np.array([4.0, 3.0, 2.0, 1.0])) < 0


@pytest.mark.parametrize(("shape", "serves"), [("heterogeneous", True), ("homogeneous", False)])
def test_uplift_serves_only_where_the_effect_varies(params: dict[str, Any], shape: str, serves: bool) -> None:
    doc = demo_campaign.uplift_gate(params, shape=shape, seed=1, weeks=10, customers=6000, max_effect=0.4)  # type: ignore[arg-type]
    assert doc["serves"] is serves, doc["status"]
    if serves:
        assert doc["qini"]["uplift"] > doc["qini"]["risk"] and doc["qini_gain_low"] > 0


# --- the stages and the log -------------------------------------------------------------------------------------------


def _week(tmp: Path, params: dict[str, Any], as_of: dt.date) -> tuple[assign.Inputs, assign.Outputs, assign.Settings]:
    scores = tmp / f"scores_{as_of}.parquet"
    write_table(synthetic_scores(params, as_of, n=3000), scores, s.scores_schema(False))
    score_metrics = tmp / "score.json"
    write_json({"served": {"churn": {"scorer": {"scorer": "model"}, "version": 3}}}, score_metrics)
    campaign_metrics = tmp / "campaign.json"
    if not campaign_metrics.exists():
        write_json({"effects": {}, "uplift": {"serves": False}}, campaign_metrics)
    cfg = assign.Settings(
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        section(params, "score", ScoreConfig),
        section(params, "campaign", CampaignConfig),
    )
    inp = assign.Inputs(scores, score_metrics, campaign_metrics, tmp / "uplift", tmp / "log")
    return inp, assign.Outputs(tmp / f"assignments_{as_of}.parquet", tmp / f"assign_{as_of}.json"), cfg


def _report(tmp: Path, params: dict[str, Any], inp: assign.Inputs, out: assign.Outputs, campaign: Path) -> Path:
    """The report stage on the week's scores and assignments, with ``campaign`` as the measure stage's metrics."""
    drift = tmp / "drift.parquet"
    as_of = pd.Timestamp(pd.read_parquet(inp.scores, columns=[s.AS_OF])[s.AS_OF].iloc[0]).date()
    write_table(synthetic_drift(as_of, False), drift, s.drift_schema())
    return report.run(
        section(params, "features", FeaturesConfig),
        section(params, "clv", ClvConfig),
        section(params, "score", ScoreConfig),
        scores_path=inp.scores,
        drift_path=drift,
        weekly=tmp / "weekly",
        assignments_path=out.assignments,
        campaign_metrics=campaign,
    )


def test_rerunning_a_week_keeps_its_arms_and_adds_nothing(tmp_path: Path, params: dict[str, Any]) -> None:
    inp, out, cfg = _week(tmp_path, params, dt.date(1998, 3, 2))
    first = assign.run(cfg, inp, out)
    logged = (tmp_path / "log" / "1998-W10.parquet").read_bytes()
    written = out.assignments.read_bytes(), out.metrics.read_bytes()
    assert first["target"] > 0 and first["control"] > 0 and first["note"] is None
    frame = pd.read_parquet(out.assignments)
    assert not frame[s.CUSTOMER_ID].duplicated().any()
    assert (frame[s.NET_VALUE] > 0).all() and frame[s.NET_VALUE].is_monotonic_decreasing
    # a rerun writes the same bytes (so `dvc repro` after it changes nothing) and leaves the log as it was
    assert assign.run(cfg, inp, out) == first
    assert (out.assignments.read_bytes(), out.metrics.read_bytes()) == written
    assert (tmp_path / "log" / "1998-W10.parquet").read_bytes() == logged
    # other inputs for a logged week: what marketing was told stands, and the run says so
    changed = dataclasses.replace(cfg, campaign=dataclasses.replace(cfg.campaign, control_share=0.5))
    again = assign.run(changed, inp, out)
    assert again["note"].startswith("week 1998-W10 was assigned before with other inputs")
    assert again["control"] == first["control"] and again["left_out"] is None
    assert (tmp_path / "log" / "1998-W10.parquet").read_bytes() == logged
    assert len(campaign_log.read_log(tmp_path / "log")) == first["assigned"]
    # the next week leaves out the customers whose outcome window is still open
    inp2, out2, _ = _week(tmp_path, params, dt.date(1998, 3, 9))
    second = assign.run(cfg, inp2, out2)
    assert second["left_out"]["assigned_in_the_last_horizon"] == first["assigned"]
    both = campaign_log.read_log(tmp_path / "log")
    assert len(both) == first["assigned"] + second["assigned"] and not both[s.CUSTOMER_ID].duplicated().any()


def test_a_killed_write_leaves_the_log_intact(
    tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    inp, out, cfg = _week(tmp_path, params, dt.date(1998, 3, 2))
    assign.run(cfg, inp, out)
    before = {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir()}
    inp2, out2, _ = _week(tmp_path, params, dt.date(1998, 3, 9))

    def killed(src: str, dst: str) -> None:  # the process dies after writing the temporary, before the link
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "link", killed)
    with pytest.raises(KeyboardInterrupt):
        assign.run(cfg, inp2, out2)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in (tmp_path / "log").iterdir()} == before  # no half week, nothing lost
    assert campaign_log.weeks(tmp_path / "log") == ["1998-W10"]
    assert assign.run(cfg, inp2, out2)["note"] is None
    assert campaign_log.weeks(tmp_path / "log") == ["1998-W10", "1998-W11"]


def test_a_logged_week_is_never_replaced(tmp_path: Path, params: dict[str, Any]) -> None:
    inp, out, cfg = _week(tmp_path, params, dt.date(1998, 3, 2))
    assign.run(cfg, inp, out)
    with pytest.raises(FileExistsError):
        campaign_log.append_week(tmp_path / "log", "1998-W10", pd.read_parquet(out.assignments))
    (tmp_path / "log" / "1998-W10.parquet").write_bytes(b"not parquet")
    with pytest.raises(InputError, match="restore it from a backup"):
        assign.run(cfg, inp, out)


def test_no_control_customer_on_the_marketing_list(tmp_path: Path, params: dict[str, Any]) -> None:
    as_of = dt.date(1998, 3, 2)
    inp, out, cfg = _week(tmp_path, params, as_of)
    metrics = assign.run(cfg, inp, out)
    folder = _report(tmp_path, params, inp, out, inp.campaign_metrics)
    arms = pd.read_parquet(out.assignments)
    control = set(arms.loc[arms[s.ARM] == cp.CONTROL, s.CUSTOMER_ID])
    listed = pd.read_parquet(folder / report.LIST_PARQUET)
    assert control and not control & set(listed[s.CUSTOMER_ID])
    assert len(listed) == 3000 - len(control)
    contact = listed[listed[s.GROUP] == s.CONTACT]
    assert len(contact) == metrics["target"] and contact[s.RANK].max() == len(contact)  # contacts come first
    assert contact[s.NET_VALUE].is_monotonic_decreasing
    csv_text = (folder / report.LIST_CSV).read_text(encoding="utf-8-sig")
    assert csv_text.splitlines()[0].split(",")[:3] == ["rank", "customer id", "group"]  # report.list_headers
    page = (folder / report.SUMMARY).read_text(encoding="utf-8")
    assert "held out as control (not on the list)" in page and "No week has been measured yet" in page


def measured_week(
    tmp_path: Path, params: dict[str, Any], share_bought: tuple[float, float] = (1.0, 0.0), *, track: bool = False
) -> tuple[dict[str, Any], list[str], Path, assign.Inputs, assign.Outputs]:
    """A week assigned and, a horizon later, measured: ``share_bought`` of the target and of the control arm buy
    3 days after the list (20.00 each), the rest of the control one day after the horizon (which does not count)."""
    inp, out, cfg = _week(tmp_path, params, dt.date(1998, 3, 2))
    assign.run(cfg, inp, out)
    arms = pd.read_parquet(out.assignments)
    target = arms.loc[arms[s.ARM] == cp.TARGET, s.CUSTOMER_ID].tolist()
    control = arms.loc[arms[s.ARM] == cp.CONTROL, s.CUSTOMER_ID].tolist()
    horizon = section(params, "features", FeaturesConfig).horizon_days
    day = pd.Timestamp("1998-03-02", tz="UTC")
    bought_t, bought_c = round(share_bought[0] * len(target)), round(share_bought[1] * len(control))
    rows = [(c, day + pd.Timedelta(days=3), 20.0) for c in target[:bought_t]]
    rows += [(c, day + pd.Timedelta(days=3), 20.0) for c in control[:bought_c]]
    rows += [(c, day + pd.Timedelta(days=horizon), 20.0) for c in control[bought_c:]]  # a day too late
    rows.append(("anyone", day + pd.Timedelta(days=horizon - 1), 1.0))  # the log reaches the horizon's last day
    tx = pd.DataFrame(rows, columns=[s.CUSTOMER_ID, s.TS, s.AMOUNT]).assign(
        **{s.TS: lambda f: f[s.TS].astype("datetime64[us, UTC]"), s.ORDER_ID: None}
    )
    write_table(tx, tmp_path / "tx.parquet", s.TRANSACTIONS)
    m_cfg = measure.Settings(cfg.base, cfg.features, section(params, "clv", ClvConfig), cfg.campaign)
    metrics = measure.run(
        m_cfg,
        measure.Inputs(tmp_path / "log", tmp_path / "tx.parquet"),
        measure.Outputs(tmp_path / "campaign_out.json", tmp_path / "plots", tmp_path / "uplift"),
        track=track,
    )
    return metrics, target, tmp_path / "campaign_out.json", inp, out


def report_with_campaign(tmp_path: Path, params: dict[str, Any]) -> Path:
    """The week's folder with a measured campaign on its summary page (a real lift in one arm, noise elsewhere)."""
    _, _, campaign_json, inp, out = measured_week(tmp_path, params, share_bought=(0.6, 0.4))
    return _report(tmp_path, params, inp, out, campaign_json)


def test_measure_stage_on_a_logged_week(
    tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes from the transaction log: a purchase in the horizon retains, one after it does not count."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    metrics, target, _, _, _ = measured_week(tmp_path, params, track=True)
    import mlflow

    (run,) = mlflow.search_runs(
        experiment_names=[params["base"]["mlflow_experiment"]],
        filter_string="tags.stage = 'measure'",
        output_format="list",
    )
    assert run.data.metrics["pooled/lift"] == pytest.approx(1.0) and run.data.metrics["log/weeks"] == 1
    overall = metrics["pooled"]["overall"]
    assert metrics["measured_weeks"] == ["1998-W10"]
    # pooled over strata by weights that sum to 1 in floating point: equal to rounding, not to the bit
    assert overall["retention_target"] == pytest.approx(1.0) and overall["retention_control"] == pytest.approx(0.0)
    assert overall["lift"] == pytest.approx(1.0)
    assert overall["revenue_lift"] == pytest.approx(20.0)
    assert overall["incremental_revenue"] == pytest.approx(20.0 * len(target))
    assert json.loads((tmp_path / "uplift" / "decision.json").read_text())["status"].startswith("waiting")
    effects = metrics["effects"]
    assert any(e["source"] == "measured" for e in effects.values())


def test_summary_shows_the_measured_lift(tmp_path: Path, params: dict[str, Any]) -> None:
    page = (report_with_campaign(tmp_path, params) / report.SUMMARY).read_text(encoding="utf-8")
    assert "Weeks measured: 1998-W10" in page and "detectable (MDE)" in page and "95% interval" in page
    assert "real effect" in page and "Measured retention lift by segment" in page


def test_contacts_file_gives_the_per_protocol_view(tmp_path: Path, params: dict[str, Any]) -> None:
    """Half the contacted arm reached, one held-out customer contacted by mistake, one unknown row."""
    _, target, _, _, out = measured_week(tmp_path, params, share_bought=(0.6, 0.4))
    arms = pd.read_parquet(out.assignments)
    control = arms.loc[arms[s.ARM] == cp.CONTROL, s.CUSTOMER_ID].tolist()
    half = target[::2]
    rows = [*half, control[0], "nobody"]
    contacts = tmp_path / "contacts.csv"
    pd.DataFrame({"week": "1998-W10", "customer_id": rows}).to_csv(contacts, index=False)
    params["campaign"]["contacts"] = str(contacts)
    cfg = measure.Settings(
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        section(params, "clv", ClvConfig),
        section(params, "campaign", CampaignConfig),
    )
    metrics = measure.run(
        cfg,
        measure.Inputs(tmp_path / "log", tmp_path / "tx.parquet"),
        measure.Outputs(tmp_path / "c.json", tmp_path / "plots", tmp_path / "uplift"),
        track=False,
    )
    protocol = metrics["contacts"]
    assert protocol["contacts"] == {
        "rows": len(rows),
        "distinct": len(rows),
        "matched": len(half) + 1,
        "not_in_the_log": 1,
        "control_contacted": 1,
    }
    assert protocol["reach_rate"] == pytest.approx(len(half) / len(target))
    itt = metrics["pooled"]["overall"]["lift"]
    assert protocol["effect_on_the_reached"]["lift"] == pytest.approx(itt / protocol["reach_rate"])
    params["campaign"]["contacts"] = str(tmp_path / "missing.csv")
    with pytest.raises(InputError, match=r"missing\.csv.*file not found"):
        measure.run(
            dataclasses.replace(cfg, campaign=section(params, "campaign", CampaignConfig)),
            measure.Inputs(tmp_path / "log", tmp_path / "tx.parquet"),
            measure.Outputs(tmp_path / "c.json", tmp_path / "plots", tmp_path / "uplift"),
            track=False,
        )


def test_a_week_still_in_its_horizon_changes_no_measure_output(tmp_path: Path, params: dict[str, Any]) -> None:
    """`dvc repro` twice must not move dvc.lock: measure's outputs depend on measured weeks only."""
    tx = pd.DataFrame(
        {
            s.CUSTOMER_ID: ["C00001"],
            s.TS: pd.Series([pd.Timestamp("1998-03-20", tz="UTC")]).astype("datetime64[us, UTC]"),
            s.AMOUNT: [10.0],
            s.ORDER_ID: pd.Series([None], dtype="str"),
        }
    )
    write_table(tx, tmp_path / "tx.parquet", s.TRANSACTIONS)
    inp, out, cfg = _week(tmp_path, params, dt.date(1998, 3, 2))
    m_cfg = measure.Settings(cfg.base, cfg.features, section(params, "clv", ClvConfig), cfg.campaign)
    paths = measure.Outputs(tmp_path / "m.json", tmp_path / "plots", tmp_path / "uplift")

    def outputs() -> list[bytes]:
        measure.run(m_cfg, measure.Inputs(tmp_path / "log", tmp_path / "tx.parquet"), paths, track=False)
        return [p.read_bytes() for p in (paths.metrics, paths.plots / "lift.csv", paths.uplift / "decision.json")]

    before = outputs()
    assign.run(cfg, inp, out)
    assert campaign_log.weeks(tmp_path / "log") == ["1998-W10"]
    assert outputs() == before


def test_assign_reads_only_the_priced_customers_and_counts_the_others(tmp_path: Path, params: dict[str, Any]) -> None:
    """The customers whose segment's action has no price are not read, but each is counted as left out."""
    inp, out, cfg = _week(tmp_path, params, dt.date(1998, 3, 2))
    scores = pd.read_parquet(inp.scores)
    unpriced = int((~scores[s.RECOMMENDED_ACTION].isin(assign.priced_actions(cfg.campaign))).sum())
    metrics = assign.run(cfg, inp, out)
    assert 0 < unpriced < 3000 and metrics["left_out"]["no_contact_action"] == unpriced
    assert metrics["assigned"] + sum(metrics["left_out"].values()) == 3000
    # a week where no action has a price: nobody is read past the date, nobody is assigned, all are counted
    nothing = scores.assign(**{s.RECOMMENDED_ACTION: "no action"})
    write_table(nothing, inp.scores, s.scores_schema(False))
    later = dataclasses.replace(inp, log=tmp_path / "other_log")
    metrics = assign.run(cfg, later, out)
    assert metrics["week"] == "1998-W10" and metrics["assigned"] == 0
    assert metrics["left_out"]["no_contact_action"] == 3000
