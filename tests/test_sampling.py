"""Training snapshots that keep a seeded draw of their customers: the draw itself, and the features stage with it."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from features import schemas as s
from features.sampling import sample_customers
from pipeline import clv as clv_stage
from pipeline import features as features_stage
from pipeline import ingest
from pipeline.config import BaseConfig, ClvConfig, FeaturesConfig, IngestConfig, section

IDS = pa.array([f"c{i:03d}" for i in range(200)])
FIRST = np.array([np.datetime64("2020-01-01") + np.timedelta64(i, "D") for i in range(200)])


def test_all_customers_kept_when_they_fit() -> None:
    drawn, eligible = sample_customers(IDS, FIRST, dt.date(2020, 3, 10), max_customers=100, seed=1)
    assert drawn is None and eligible == 70  # first days 2020-01-01 .. 2020-03-10


def test_draw_is_a_seeded_subset_of_the_customers_who_had_bought() -> None:
    cutoff = dt.date(2020, 6, 1)  # 153 customers had bought by then
    drawn, eligible = sample_customers(IDS, FIRST, cutoff, max_customers=100, seed=7)
    assert eligible == 153 and drawn is not None and len(drawn) == 100
    ids = drawn.to_pylist()
    assert ids == sorted(ids) and len(set(ids)) == 100  # in input order, no repeats
    assert max(ids) <= "c152"  # nobody whose first purchase is after the cutoff
    again, _ = sample_customers(IDS, FIRST, cutoff, max_customers=100, seed=7)
    assert again is not None and again.to_pylist() == ids
    other_seed, _ = sample_customers(IDS, FIRST, cutoff, max_customers=100, seed=8)
    other_day, _ = sample_customers(IDS, FIRST, dt.date(2020, 6, 2), max_customers=100, seed=7)
    assert other_seed is not None and other_seed.to_pylist() != ids
    assert other_day is not None and other_day.to_pylist()[:100] != ids


def _features(tmp: Path, params: dict[str, Any], cap: int) -> tuple[pd.DataFrame, dict[str, Any]]:
    base = section(params, "base", BaseConfig)
    cfg = dataclasses.replace(section(params, "features", FeaturesConfig), max_customers_per_training_cutoff=cap)
    out = tmp / f"run{len(list(tmp.glob('run*')))}"
    out.mkdir()
    features_stage.run(base, cfg, tmp / "tx.parquet", out / "f.parquet", out / "m.json")
    return pd.read_parquet(out / "f.parquet"), json.loads((out / "m.json").read_text())


def test_features_stage_draws_before_featurising(tmp_path: Path, params: dict[str, Any]) -> None:
    """With a cap, each training snapshot holds the cap's worth of its customers, with their unchanged rows."""
    params["ingest"]["source"] = "cdnow_sample"  # 2,357 customers, all acquired in the first quarter of 1997
    ingest.run(
        section(params, "base", BaseConfig),
        section(params, "ingest", IngestConfig),
        tmp_path / "tx.parquet",
        tmp_path / "q.parquet",
        tmp_path / "m.json",
    )
    whole, whole_metrics = _features(tmp_path, params, 2**62)
    drawn, metrics = _features(tmp_path, params, 1000)
    assert whole_metrics["training_cutoffs_drawn"] == 0
    assert metrics["training_cutoffs_drawn"] == metrics["training_cutoffs"] == 15
    for day, m in metrics["by_cutoff"].items():
        assert m["customers"] == 1000
        assert m["customers_before_draw"] == whole_metrics["by_cutoff"][day]["customers"] == 2357
    # every kept row is the row the whole snapshot has for that customer: the draw changes who, not what
    keys = [s.CUTOFF, s.CUSTOMER_ID]
    joined = drawn.merge(whole, on=keys, how="left", suffixes=("", "_whole"), validate="one_to_one")
    for column in whole.columns.difference(keys):
        pd.testing.assert_series_equal(joined[column], joined[f"{column}_whole"], check_names=False)
    # the scoring snapshot is another stage's (pipeline.snapshot), never drawn from
    assert not drawn[s.IS_SCORING].any() and not whole[s.IS_SCORING].any()
    # different customers at different cutoffs, the same ones on a rerun
    by_cutoff = drawn.groupby(s.CUTOFF)[s.CUSTOMER_ID].apply(frozenset)
    assert by_cutoff.nunique() == 15
    again, _ = _features(tmp_path, params, 1000)
    pd.testing.assert_frame_equal(again, drawn)

    # the clv stage calibrates on the draw: its holdout and its cumulative-purchases plot are the drawn customers'
    params["clv"]["bootstrap_samples"] = 5
    cfg = dataclasses.replace(section(params, "features", FeaturesConfig), max_customers_per_training_cutoff=1000)
    out = clv_stage.Outputs(tmp_path / "art", tmp_path / "clv.json", tmp_path / "plots")
    clv_stage.run(
        section(params, "base", BaseConfig), cfg, section(params, "clv", ClvConfig), tmp_path / "tx.parquet",
        tmp_path / "run1" / "f.parquet", out, source="cdnow_sample", track=False,
    )  # fmt: skip
    calibration = drawn[drawn[s.CUTOFF] == pd.Timestamp(params["clv"]["calibration_cutoff"])]
    holdout = json.loads(out.metrics.read_text())["model"]["purchases_actual"]
    cumulative = pd.read_csv(out.plots / "cumulative.csv")
    assert holdout == cumulative["actual"].iloc[-1] == calibration[s.FUTURE_PURCHASES].sum()
    assert holdout < whole.loc[whole[s.CUTOFF] == calibration[s.CUTOFF].iloc[0], s.FUTURE_PURCHASES].sum()
    # refitted as of the training date on the transactions: every customer, not the draw
    assert json.loads(out.metrics.read_text())["training"]["customers"] == 2357
