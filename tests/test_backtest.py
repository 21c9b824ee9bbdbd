"""The backtest: origins that train only on what was fully observed before them, pairwise evidence, and the stage
on the CDNOW sample through its DVC entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from models import backtest as bt
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
    assert len(expected) >= 5
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
