"""Drift: the weekly summary warns on a shift that changes the scores, and only on one.

The pure parts (``models.monitoring``) on hand-checkable numbers; then the score and report stages on the CDNOW
sample: the week as logged shows no banner, and the same week with a real shift injected in its snapshot does.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from features import schemas as s
from models import churn as cm
from models import monitoring
from pipeline import report
from pipeline.config import ClvConfig, FeaturesConfig, ScoreConfig, section
from pipeline.io import read_table, write_table
from tests.stages import run_stage, run_stages

# --- bins -------------------------------------------------------------------------------------------------------


def test_a_dense_cluster_of_values_is_one_bin() -> None:
    # 50 customers spread over [0, 0.49]; 57 (one-time buyers' silence share) packed just below 1
    spread = np.arange(50) / 100
    cluster = 0.99 + np.arange(57) * 1e-5
    ref = np.concatenate([spread, cluster])
    # deciles 0.10, 0.21, 0.32, 0.42, then five inside the cluster (0.99003, 0.99014, ...), 0.0001 apart: they
    # merge into one, since the inner quantiles span 0.89 and a bin must be 0.89 / 20 = 0.045 wide
    assert monitoring.bin_edges(ref, 10).tolist() == pytest.approx([0.10, 0.21, 0.32, 0.42, 0.99003])
    # a week on, the cluster moved by 0.0004: only its 4 values at or below 0.99003 change bin, from the one ending
    # there (11 of 107 values, 7 after) to the last (53, then 57). The unmerged bins made this a PSI of 2.7.
    by_hand = (7 - 11) / 107 * np.log(7 / 11) + (57 - 53) / 107 * np.log(57 / 53)
    moved = monitoring.psi(ref, np.concatenate([spread, cluster + 4e-4]))
    assert moved == pytest.approx(by_hand, rel=1e-9) and by_hand == pytest.approx(0.0196, abs=1e-4)
    # the cluster moved into the middle of the spread: a shift
    assert monitoring.psi(ref, np.concatenate([spread, np.full(57, 0.3)])) > 2.0


def test_the_bins_of_a_count_are_kept() -> None:
    # edges 1 apart on a span of 4: wider than 4 / 20, so nothing merges
    ref = np.repeat(np.arange(6.0), [30, 20, 15, 15, 10, 10])
    assert monitoring.bin_edges(ref, 10).tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


# --- what is judged, and in which words ---------------------------------------------------------------------------


def test_calendar_bound_inputs_and_ranks_are_not_judged() -> None:
    for name in (s.T, s.TENURE_DAYS, s.DAYS_SINCE_LAST_PURCHASE, s.TOTAL_SPEND, cm.BTYD_P_NO_PURCHASE):
        assert not monitoring.comparable(name)
    assert not monitoring.comparable(s.TOTAL_SPEND + cm.RANK_SUFFIX)
    for name in (cm.SILENCE_SHARE, cm.OVERDUE_RATIO, s.AVG_SPEND_PER_DAY, "spend_90d", "purchase_trend_90d"):
        assert monitoring.comparable(name)


def test_every_input_has_a_readable_label() -> None:
    windows = [f"{k}_{d}d" for k in ("spend", "purchase_days") for d in (30, 90, 180, 365)]
    names = [*monitoring.LABELS, *windows, "spend_trend_90d", "purchase_trend_90d"]
    names += [c + cm.RANK_SUFFIX for c in cm.RANKED]
    labels = [monitoring.label(n) for n in names]
    assert all("_" not in text for text in labels) and len(set(labels)) == len(labels)
    assert monitoring.label("spend_180d") == "spend in the last 180 days"
    assert monitoring.label(s.AVG_SPEND_PER_DAY) == "spend per purchase day"
    assert monitoring.label("survey_nps_latest") == "survey nps latest"  # an attribute: its configured name


def _table(silence_psi: float, score_psi: float = 0.05) -> pd.DataFrame:
    rows = [
        (s.P_CHURN, score_psi, np.nan),
        (s.T, 8.4, 0.3),  # customer age: a one-cohort log's every week
        (cm.SILENCE_SHARE, silence_psi, 0.2),
        (s.AVG_SPEND_PER_DAY, 0.1, 0.1),
        (cm.BTYD_EXPECTED_PURCHASES + cm.RANK_SUFFIX, 0.0, 0.4),
    ]
    ref, cur = pd.DataFrame({"x": [0.0]}), pd.DataFrame({"x": [0.0]})
    table = monitoring.drift_table(ref, cur, ["x"], bins=10)
    out = pd.DataFrame(
        [{**table.iloc[0].to_dict(), s.DRIFT_FEATURE: f, s.PSI: p, s.DRIFT_WEIGHT: w} for f, p, w in rows]
    )
    out[s.DRIFT_COMPARED] = [f == s.P_CHURN or monitoring.comparable(f) for f, _, _ in rows]
    return out


def test_the_verdict_weighs_the_judged_inputs_by_attention() -> None:
    # judged inputs: silence share (weight 0.2) and spend per purchase day (0.1): (0.2 x 0.3 + 0.1 x 0.1) / 0.3
    shifted = monitoring.verdict(_table(silence_psi=0.3), warning_psi=0.2)
    assert shifted.input_psi == pytest.approx(0.07 / 0.3, rel=1e-12) and shifted.shifted
    assert shifted.movers == (cm.SILENCE_SHARE,) and shifted.score_psi == pytest.approx(0.05)
    # (0.2 x 0.2 + 0.1 x 0.1) / 0.3 = 0.167: no shift, though customer age has a PSI of 8.4
    calm = monitoring.verdict(_table(silence_psi=0.2), warning_psi=0.2)
    assert calm.input_psi == pytest.approx(0.05 / 0.3, rel=1e-12) and not calm.shifted and calm.movers == ()
    # the scores themselves moving is a shift whatever the inputs did
    assert monitoring.verdict(_table(silence_psi=0.0, score_psi=0.25), warning_psi=0.2).shifted


def test_drift_table_records_weight_and_whether_judged() -> None:
    rng = np.random.default_rng(4)
    ref = pd.DataFrame({s.T: rng.normal(60, 3, 1000), cm.SILENCE_SHARE: rng.uniform(size=1000)})
    cur = pd.DataFrame({s.T: rng.normal(72, 3, 1000), cm.SILENCE_SHARE: rng.uniform(size=1000)})
    table = monitoring.drift_table(ref, cur, [s.T, cm.SILENCE_SHARE], bins=10, weights={s.T: 0.25})
    rows = table.set_index(s.DRIFT_FEATURE)
    assert rows.loc[s.T, s.PSI] > 2.0 and not rows.loc[s.T, s.DRIFT_COMPARED] and rows.loc[s.T, s.DRIFT_WEIGHT] == 0.25
    assert rows.loc[cm.SILENCE_SHARE, s.DRIFT_COMPARED] and np.isnan(rows.loc[cm.SILENCE_SHARE, s.DRIFT_WEIGHT])
    assert not monitoring.verdict(table, 0.2).shifted  # only customer age moved


# --- the stages on the CDNOW sample -------------------------------------------------------------------------------

BANNER = re.compile(r'<p class="warning" role="alert">(.*?)</p>', re.S)
SPEND = (s.TOTAL_SPEND, s.AVG_SPEND_PER_DAY, s.MONETARY_VALUE)


def _banner(d: Path, params: dict[str, Any], params_file: Path, week: str) -> str | None:
    """Score the snapshot in ``d``, build the week's summary, and return its drift banner's text (None if none)."""
    run_stage("score", d, params_file)
    folder = report.run(
        section(params, "features", FeaturesConfig),
        section(params, "clv", ClvConfig),
        section(params, "score", ScoreConfig),
        scores_path=d / "data/scores.parquet",
        drift_path=d / "data/drift.parquet",
        weekly=d / week,
    )
    page = (folder / "summary.html").read_text(encoding="utf-8")
    # the technical table is folded away, at the bottom of the page
    assert page.index("<details><summary>Technical table") > page.index("<h2>Drift</h2>")
    found = BANNER.search(page)
    return found.group(1) if found else None


@pytest.mark.slow
def test_the_banner_fires_on_an_injected_shift_only(
    tmp_path: Path, params: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    params["ingest"]["source"] = "cdnow_sample"
    params["clv"]["bootstrap_samples"] = 10
    params["score"]["churn_scorer"] = "model"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    monkeypatch.chdir(tmp_path)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    d = tmp_path
    run_stages(d, params_file, ("ingest", "features", "snapshot", "train_clv", "train_churn"))
    fcfg = section(params, "features", FeaturesConfig)
    schema = s.feature_schema(fcfg.windows_days, fcfg.trend_window_days)
    logged = read_table(d / "data/snapshot.parquet", schema)

    # the week as logged: customers a season older than at the reference cutoff, and no banner
    assert _banner(d, params, params_file, "logged") is None
    drift = pd.read_parquet(d / "data/drift.parquet").set_index(s.DRIFT_FEATURE)
    assert drift.loc[s.T, s.PSI] > 2.0  # customer age moved as far as PSI can tell, and is not judged
    assert not drift.loc[s.T, s.DRIFT_COMPARED]

    # every amount in the snapshot ten times too large (a feed switched from dollars to dimes)
    spend = [c for c in logged.columns if c in SPEND or re.fullmatch(r"spend_\d+d", c)]
    write_table(logged.assign(**{c: logged[c] * 10 for c in spend}), d / "data/snapshot.parquet", schema)
    text = _banner(d, params, params_file, "spend")
    assert text is not None and "spend per purchase day" in text
    assert "_" not in re.sub(r"<[^>]+>", "", text)  # readable labels, no raw column names

    # purchases lost: the feed dropped the last 80 days (less than the 90-day horizon, which the stages accept as
    # a late export). On this one-cohort log few customers bought then: losing only every second customer's
    # purchases moved p_churn by a PSI of 0.05, no shift a marketer would see, and no banner.
    transactions = pd.read_parquet(d / "data/transactions.parquet")
    cutoff = pd.Timestamp(logged[s.CUTOFF].iloc[0]).tz_localize("UTC")
    late = transactions[s.TS] > cutoff - pd.Timedelta(days=80)
    transactions[~late].to_parquet(d / "data/transactions.parquet", index=False)
    params["score"]["as_of"] = str((cutoff + pd.Timedelta(days=1)).date())  # the same week, not the log's new end
    params_file.write_text(yaml.safe_dump(params))
    run_stage("snapshot", d, params_file)
    text = _banner(d, params, params_file, "lost")
    assert text is not None
