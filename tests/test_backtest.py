"""The backtest: origins that train only on what was fully observed before them, pairwise evidence, and the stage
on the CDNOW sample through its DVC entry point."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from features import schemas as s
from models import backtest as bt
from models import churn as cm
from models import value_booster as vb
from pipeline import churn as churn_stage
from pipeline.config import MAX_DAYS, BaseConfig, ChurnConfig, FeaturesConfig, section
from tests.conftest import project_params
from tests.stages import run_stages

HORIZON = 90


def schedule(count: int, every_days: int = 28) -> list[pd.Timestamp]:
    last = pd.Timestamp("1998-04-01")
    return [last - pd.Timedelta(days=every_days * i) for i in range(count)][::-1]


def test_each_origin_trains_only_on_cutoffs_whose_labels_ended_by_it() -> None:
    origins = bt.evaluation_origins(schedule(14), HORIZON, 6)
    assert [o.cutoff for o in origins] == schedule(14)[-6:]
    for o in origins:
        horizon = pd.Timedelta(days=HORIZON)
        assert o.split.validation + horizon <= o.cutoff  # the validation labels were known at the origin
        assert max(o.split.training) + horizon <= o.split.validation  # the production split, as training makes it
    # with 13 cutoffs the earliest origin has no fully observed training cutoff: five origins, not six
    assert len(bt.evaluation_origins(schedule(13), HORIZON, 6)) == 5
    assert len(bt.evaluation_origins(schedule(13), HORIZON, 2)) == 2
    assert bt.evaluation_origins(schedule(7), HORIZON, 6) == []
    assert bt.too_few([], 6, HORIZON) == (
        "backtest: 0 of the 6 origins asked for: an origin needs two earlier labelled cutoffs whose 90-day horizons "
        "ended by it; raise features.cutoff_schedule.count for more"
    )
    assert bt.too_few(bt.evaluation_origins(schedule(14), HORIZON, 6), 6, HORIZON) is None


def scored(rng: np.random.Generator, n: int, customers: np.ndarray) -> bt.Scored:
    """A model with real signal, a rule with less, and a copy of the rule."""
    y = (rng.random(n) < 0.4).astype(np.float64)
    model = y * 1.2 + rng.normal(size=n)
    rule = y * 0.6 + rng.normal(size=n)
    return bt.Scored(y, {"model": model, "rule": rule, "same_rule": rule.copy()}, customers)


def test_pairwise_differences_pool_origins_and_say_who_is_better() -> None:
    rng = np.random.default_rng(0)
    parts = [scored(rng, 1500, np.arange(1500)) for _ in range(4)]  # the same customers at four origins
    everything = bt.pooled(parts)
    rows = bt.differences("roc_auc", parts, everything, resamples=300, level=0.95, seed=1, max_rows=None)
    by_pair = {(d["candidate"], d["versus"]): d for d in rows}
    assert set(by_pair) == {("model", "rule"), ("model", "same_rule"), ("rule", "same_rule")}
    edge = by_pair[("model", "rule")]
    assert edge["verdict"] == "model better" and edge["origins_won"] == 4 and edge["low"] > 0
    assert edge["rows"] == 6000 and len(edge["by_origin"]) == 4
    assert edge["origin_mean"] == pytest.approx(np.mean(edge["by_origin"]))
    tie = by_pair[("rule", "same_rule")]
    assert tie["verdict"] == "no difference shown" and tie["pooled_gain"] == 0 and tie["origins_won"] == 0


@pytest.mark.slow
def test_the_backtest_stage_on_the_cdnow_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    params = project_params()
    params["ingest"]["source"] = "cdnow_sample"
    params["backtest"]["evidence_resamples"] = 200
    file = tmp_path / "params.yaml"
    file.write_text(yaml.safe_dump(params))
    run_stages(tmp_path, file, ("ingest", "features", "backtest"))
    metrics = json.loads((tmp_path / "metrics/backtest.json").read_text())

    cutoffs = pd.read_parquet(tmp_path / "data/features.parquet", columns=["cutoff", "is_scoring"])
    labelled = sorted(pd.Timestamp(c) for c in cutoffs.loc[~cutoffs["is_scoring"], "cutoff"].unique())
    expected = bt.evaluation_origins(labelled, params["features"]["horizon_days"], params["backtest"]["origins"])
    assert [o["origin"] for o in metrics["origins"]] == [str(o.cutoff.date()) for o in expected]
    assert len(expected) == 6  # the default schedule has the six origins the backtest asks for
    horizon = pd.Timedelta(days=params["features"]["horizon_days"])
    for o in metrics["origins"]:
        origin, validation = pd.Timestamp(o["origin"]), pd.Timestamp(o["validation_cutoff"])
        assert validation + horizon <= origin
        assert all(pd.Timestamp(c) + horizon <= validation for c in o["training_cutoffs"])
        assert set(o["metrics"]) == {"model", "btyd", "recency", "rfm"}
        assert 0.5 < o["metrics"]["model"]["roc_auc"] < 1
    assert metrics["pooled"]["customers"] == sum(o["customers"] for o in metrics["origins"])
    for metric in ("roc_auc", "pr_auc"):
        pairs = {(d["candidate"], d["versus"]) for d in metrics["differences"][metric]}
        assert len(pairs) == 6 and ("model", "btyd") in pairs
        for d in metrics["differences"][metric]:
            assert d["low"] <= d["pooled_gain"] <= d["high"]
    edge = metrics["model_vs_best_rule"]
    assert edge["versus"] == metrics["best_rule"] and edge["versus"] in ("btyd", "recency", "rfm")
    plot = pd.read_csv(tmp_path / "plots/backtest/churn_roc_auc.csv")
    assert list(plot["origin"]) == [o["origin"] for o in metrics["origins"]]
    assert list(plot.columns) == ["origin", "model", "btyd", "recency", "rfm"]
    _values_at_the_same_origins(tmp_path, metrics)
    _serves_its_choice(tmp_path, file, params, metrics)
    _values_by_its_choice(tmp_path, file, params, metrics, monkeypatch)


def _values_at_the_same_origins(d: Path, metrics: dict[str, Any]) -> None:
    """Every CLV candidate, the naive baseline and the challenger at each origin, with totals, each pair's paired
    gains and which one values customers."""
    value = metrics["clv"]
    assert [o["origin"] for o in value["origins"]] == [o["origin"] for o in metrics["origins"]]
    btyd = {"bgnbd", "mbgnbd", "pareto_nbd"}
    names = {*btyd, "naive", "lightgbm"}
    for o in value["origins"]:
        assert set(o["metrics"]) == names and o["chosen"] in btyd
        assert o["customers"] == o["metrics"]["naive"]["customers"]
    pooled = value["pooled"]["metrics"]
    actual = sum(o["metrics"]["naive"]["purchases_actual"] for o in value["origins"])
    for n in names:
        assert pooled[n]["purchases_actual"] == pytest.approx(actual)
        expected = 100 * (pooled[n]["purchases_predicted"] - actual) / actual
        assert pooled[n]["purchases_pct_error"] == pytest.approx(expected, abs=1e-3)
    for metric in ("purchases_rmse", "purchases_mae", "gini", "spearman", "top_decile_capture"):
        rows = value["differences"][metric]
        assert len(rows) == 10 and all(r["low"] <= r["pooled_gain"] <= r["high"] for r in rows)
    # a BTYD model predicts the horizon's purchases far better than carrying the past rate forward (every origin)
    edge = next(
        r for r in value["differences"]["purchases_rmse"] if {r["candidate"], r["versus"]} == {"bgnbd", "naive"}
    )
    assert edge["candidate"] == "bgnbd" and edge["low"] > 0 and edge["origins_won"] == 6
    assert value["best_by_gini"] == max(names, key=lambda n: pooled[n]["gini"])
    plot = pd.read_csv(d / "plots/backtest/clv_gini.csv")
    assert list(plot["origin"]) == [o["origin"] for o in value["origins"]] and set(plot.columns) == {"origin", *names}
    # the gate's rule on the ranking metric: the challenger only with its gain over the best of BTYD and naive shown
    serving = value["serving"]
    assert serving["metric"] == "gini" and serving["best_rule"] == max(
        names - {"lightgbm"}, key=lambda n: pooled[n]["gini"]
    )
    assert (serving["scorer"] == "lightgbm") == (serving["low"] > 0 and serving["low"] >= serving["min_improvement"])
    assert serving["btyd"] == max(btyd, key=lambda n: pooled[n]["gini"])


def _serves_its_choice(d: Path, file: Path, params: dict[str, Any], metrics: dict[str, Any]) -> None:
    """The weekly list is ranked by the scorer the backtest chose, calibrated as the training run fitted it."""
    serving = metrics["serving"]
    pooled = metrics["pooled"]["metrics"]
    best = max(("btyd", "recency", "rfm"), key=lambda n: pooled[n]["roc_auc"])
    assert serving["best_rule"] == best
    # the gate's rule: the model only with the lower bound of its gain over the best rule clear of the bar
    assert (serving["scorer"] == "model") == (serving["low"] > 0 and serving["low"] >= serving["min_improvement"])
    assert pooled[serving["scorer"]]["roc_auc"] >= pooled[best]["roc_auc"] - 0.002  # never worse than the rule
    run_stages(d, file, ("train_clv", "train_churn", "snapshot", "score", "measure", "assign", "report"))
    served = json.loads((d / "metrics/score.json").read_text())["served"]["churn"]["scorer"]
    assert served["scorer"] == serving["scorer"] and served["origins"] == len(metrics["origins"])
    churn = pd.read_parquet(d / "data/churn.parquet")
    summary = next((d / "reports/weekly").glob("*/summary.html")).read_text(encoding="utf-8")
    if serving["scorer"] == "model":
        assert (
            "Churn risk ranked by the churn model (LightGBM) churn-clv-churn-cdnow_sample v1. Why: the model" in summary
        )
        return
    rules = json.loads((d / "artifacts/churn/rules.json").read_text())
    rule = cm.RuleScorer.from_dict(rules[serving["scorer"]], "rules.json")
    population = churn_stage.modelling_table(
        d / "data/snapshot.parquet",
        [pd.Timestamp(churn[s.CUTOFF].iloc[0])],
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        section(params, "churn", ChurnConfig),
        {},
    )[0].set_index(s.CUSTOMER_ID)
    expected = pd.Series(rule.predict_proba(population), index=population.index)
    np.testing.assert_allclose(churn.set_index(s.CUSTOMER_ID)[s.P_CHURN], expected.loc[churn[s.CUSTOMER_ID]])
    assert f"Churn risk ranked by the {cm.RULE_WORDS[serving['scorer']]}, calibrated by the run of" in summary
    assert f"Why: {serving['scorer']} serves: the model&#x27;s roc_auc gain over {serving['scorer']}" in summary
    assert churn[s.REASONS[0]].notna().mean() > 0.3  # a rule's reasons are its inputs: everyone at risk gets one


def _values_by_its_choice(
    d: Path, file: Path, params: dict[str, Any], metrics: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the weekly stages ran on the backtest's choice (``_serves_its_choice``)."""
    # the BTYD model the backtest ranks best values customers, whatever clv.selection_metric picks at one cutoff
    trained = json.loads((d / "metrics/clv.json").read_text())
    value = metrics["clv"]
    assert trained["chosen_model"] == value["serving"]["btyd"] and trained["chosen_by"].startswith("backtest: ")
    ginis = value["pooled"]["metrics"]
    best = max(("bgnbd", "mbgnbd", "pareto_nbd", "naive"), key=lambda n: ginis[n]["gini"])
    if best != "naive":
        assert ginis[trained["chosen_model"]]["gini"] >= ginis[best]["gini"] - 0.002
    _values_as_chosen(d, params, value["serving"])
    # the other branch too: the backtest's choice flipped, retrained and rescored in a new registry
    flipped = dict(value["serving"])
    flipped["scorer"] = flipped["btyd"] if flipped["scorer"] == "lightgbm" else "lightgbm"
    flipped["reason"] = f"{flipped['scorer']} serves: flipped by the test"
    doc = json.loads((d / "metrics/backtest.json").read_text())
    doc["clv"]["serving"] = flipped
    (d / "metrics/backtest.json").write_text(json.dumps(doc))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{d}/flipped.db")
    run_stages(d, file, ("train_clv", "score", "measure", "assign", "report"))
    _values_as_chosen(d, params, flipped)


def _values_as_chosen(d: Path, params: dict[str, Any], serving: dict[str, Any]) -> None:
    """The CLV column and the value tiers come from the model the backtest chose: the challenger's carried horizon
    spend (no interval), or the BTYD model's CLV with its bootstrap band."""
    trained = json.loads((d / "metrics/clv.json").read_text())
    stored = json.loads((d / "artifacts/clv/params.json").read_text())
    value = pd.read_parquet(d / "data/clv.parquet")
    served = json.loads((d / "metrics/score.json").read_text())["served"]["clv"]
    summary = next((d / "reports/weekly").glob("*/summary.html")).read_text(encoding="utf-8")
    assert trained["chosen_model"] == stored["scoring"]["model"] == serving["btyd"] == served["btyd"]
    q = params["clv"]["value_tier_quantiles"]
    high = value[s.CLV] >= np.quantile(value[s.CLV], q["high"])
    assert (value.loc[high, s.VALUE_TIER] == "high").all() and (value.loc[~high, s.VALUE_TIER] != "high").all()
    if serving["scorer"] != "lightgbm":
        assert trained["value_model"] is None and stored["value_model"] is None and served["model"] == serving["btyd"]
        assert value[s.CLV_P05].notna().all() and (value[s.CLV_P05] <= value[s.CLV]).all()
        assert f"Customers valued by the {serving['btyd']} model of churn-clv-clv-cdnow_sample v1." in summary
        return
    assert served["model"] == "lightgbm" and trained["value_model"]["name"] == "lightgbm"
    assert value[s.CLV_P05].isna().all() and value[s.CLV_P95].isna().all()
    snapshot = pd.read_parquet(d / "data/snapshot.parquet")
    everyone = dataclasses.replace(section(params, "churn", ChurnConfig), population_lookback_days=MAX_DAYS)
    rows = churn_stage.modelling_table(
        snapshot,
        [pd.Timestamp(snapshot[s.CUTOFF].iloc[0])],
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        everyone,
        {},
    )[0]
    booster = vb.ValueBooster.from_dict(stored["value_model"], "params.json")
    clv = params["clv"]
    expected = vb.horizon_value(
        booster.predict(rows)[1],
        horizon_days=params["features"]["horizon_days"],
        months=clv["clv_horizon_months"],
        discount_rate_monthly=clv["discount_rate_monthly"],
        margin_ratio=clv["margin_ratio"],
    )
    got = value.set_index(s.CUSTOMER_ID)[s.CLV].loc[rows[s.CUSTOMER_ID]]
    np.testing.assert_allclose(got.to_numpy(), expected, rtol=1e-9)
    assert "Customers valued by the CLV challenger (LightGBM) of churn-clv-clv-cdnow_sample v1." in summary


def gains(model_over_rule: tuple[float, float, float], *, model_first: bool = True) -> list[dict[str, object]]:
    gain, low, high = model_over_rule
    if model_first:
        return [{"candidate": "model", "versus": "recency", "pooled_gain": gain, "low": low, "high": high}]
    return [{"candidate": "recency", "versus": "model", "pooled_gain": -gain, "low": -high, "high": -low}]


def test_the_model_serves_only_with_its_gain_over_the_best_rule_shown() -> None:
    pooled = {"model": {"roc_auc": 0.80}, "recency": {"roc_auc": 0.79}, "rfm": {"roc_auc": 0.75}}
    shown = bt.serving_choice("roc_auc", pooled, gains((0.01, 0.004, 0.016)), 0.002)
    assert shown["scorer"] == "model" and shown["best_rule"] == "recency"
    assert shown["reason"].startswith("the model serves: roc_auc gain over recency +0.0100 [+0.0040, +0.0160]")
    # a gain inside its noise, or one whose lower bound is short of min_improvement: the rule serves
    noise = bt.serving_choice("roc_auc", pooled, gains((0.01, -0.001, 0.021)), 0.002)
    short = bt.serving_choice("roc_auc", pooled, gains((0.01, 0.001, 0.019)), 0.002)
    assert noise["scorer"] == short["scorer"] == "recency"
    assert (
        short["reason"] == "recency serves: the model's roc_auc gain over recency +0.0100 [+0.0010, +0.0190] "
        "does not clear zero and 0.002"
    )
    # the pair stored the other way round reads the same
    flipped = bt.serving_choice("roc_auc", pooled, gains((0.01, 0.004, 0.016), model_first=False), 0.002)
    assert (flipped["scorer"], flipped["low"], flipped["high"]) == ("model", 0.004, 0.016)
    assert bt.serving_choice("roc_auc", {"model": {"roc_auc": 0.8}}, [], 0.002)["scorer"] == "model"
    assert (
        bt.serving_choice("roc_auc", {"rfm": {"roc_auc": 0.7}, "recency": {"roc_auc": 0.71}}, [], 0.0)["scorer"]
        == "recency"
    )
