"""models/churn.py, features/attributes.py and the churn stage's training table: leakage, determinism, metrics."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from lifetimes import BetaGeoFitter

from features import attributes as attr
from features import schemas as s
from features.errors import InputError
from models import churn as cm
from models.evaluation import calibration_table, churn_metrics, expected_calibration_error, lift_table
from pipeline import churn as stage
from pipeline import features as features_stage
from pipeline import ingest as ingest_stage
from pipeline import score as score_stage
from pipeline.config import (
    AttributeTable,
    BaseConfig,
    ChurnConfig,
    ClvConfig,
    FeaturesConfig,
    IngestConfig,
    ScoreConfig,
    section,
)
from tests.conftest import project_params

SECTIONS_SCORED = (
    ("base", BaseConfig),
    ("features", FeaturesConfig),
    ("clv", ClvConfig),
    ("churn", ChurnConfig),
    ("score", ScoreConfig),
)

# --- cutoffs and baselines ----------------------------------------------------------------------------------------


def test_training_cutoffs_end_their_horizon_before_validation_starts() -> None:
    cutoffs = [pd.Timestamp("2020-12-31") - pd.Timedelta(days=28 * k) for k in range(6)]
    split = cm.split_cutoffs(cutoffs, horizon_days=90)
    assert split.validation == pd.Timestamp("2020-12-31")
    # 28, 56 and 84 days before: their labels would look into (validation, validation + 90]
    assert [str(c.date()) for c in split.excluded] == ["2020-10-08", "2020-11-05", "2020-12-03"]
    assert [str(c.date()) for c in split.training] == ["2020-08-13", "2020-09-10"]
    assert all(c + pd.Timedelta(days=90) <= split.validation for c in split.training)
    with pytest.raises(InputError, match="at least two labelled cutoffs"):
        cm.split_cutoffs(cutoffs[:1], 90)
    with pytest.raises(InputError, match=r"raise features\.cutoff_schedule\.count"):
        cm.split_cutoffs(cutoffs[:3], 90)


def test_btyd_no_purchase_is_bgnbd_zero_probability() -> None:
    # A customer seen at age 0 is alive and dropout only follows a purchase, so P(no purchase in h) is BG/NBD's
    # unconditional P(X(h) = 0) (Fader, Hardie & Lee 2005a, eq. 8), which lifetimes computes independently.
    params = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    fitter = BetaGeoFitter()
    fitter.params_ = pd.Series(params)
    for h in (1.0, 13.0, 39.0):
        expected = float(fitter.probability_of_n_purchases_up_to_time(h, 0))
        got = cm.btyd_no_purchase(params, np.array([0.0]), np.array([0.0]), np.array([1.0]), h)
        assert got[0] == pytest.approx(expected, rel=1e-12)
    # gone for sure -> certain to make no purchase; alive with history -> the gamma posterior's zero term
    dead = cm.btyd_no_purchase(params, np.array([3.0]), np.array([20.0]), np.array([0.0]), 13.0)
    alive = cm.btyd_no_purchase(params, np.array([3.0]), np.array([20.0]), np.array([1.0]), 13.0)
    assert dead[0] == 1.0
    assert alive[0] == pytest.approx(((4.414 + 20) / (4.414 + 20 + 13)) ** (0.243 + 3))


def test_rfm_score_by_hand() -> None:
    frame = pd.DataFrame(
        {
            s.DAYS_SINCE_LAST_PURCHASE: [1, 10, 100, 200, 300],
            s.PURCHASE_DAYS: [9, 5, 3, 2, 1],
            s.TOTAL_SPEND: [500.0, 50.0, 400.0, 20.0, 10.0],
        }
    )
    # recency quintiles 5..1, frequency 5..1, monetary ranks 5, 3, 4, 2, 1
    np.testing.assert_array_equal(cm.rfm_score(frame), [15, 11, 10, 6, 3])


def rule_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            s.DAYS_SINCE_LAST_PURCHASE: [1, 10, 100, 200, 300],
            s.PURCHASE_DAYS: [9, 5, 3, 2, 1],
            s.TOTAL_SPEND: [500.0, 50.0, 400.0, 20.0, 10.0],
            s.FREQUENCY: [8, 4, 2, 1, 0],
            cm.BTYD_P_NO_PURCHASE: [0.1, 0.3, 0.5, 0.7, 0.9],
            cm.BTYD_P_ALIVE: [0.95, 0.8, 0.6, 0.4, 0.2],
        }
    )


def rule_guide(frame: pd.DataFrame, medium_risk: float = 0.4) -> cm.ReasonGuide:
    """Typical values as if the first two customers stayed and the last three churned."""
    stayed, gone = frame.iloc[:2].median().to_dict(), frame.iloc[2:].median().to_dict()
    return cm.ReasonGuide(stayed, gone, medium_risk=medium_risk, currency="USD", horizon_days=90)


def test_a_rule_serves_calibrated_with_its_inputs_as_reasons() -> None:
    frame = rule_frame()
    guide = rule_guide(frame)  # stayed: 5.5 days silent, 7 purchase days, USD 275 spent, P(alive) 88%
    everyone_at_risk = np.ones(len(frame))
    y = np.array([0, 0, 1, 1, 1])
    rfm = cm.RuleScorer.fit("rfm", frame, y, "isotonic")
    p = rfm.predict_proba(frame)
    assert np.all(np.diff(p) >= 0) and p[0] < 0.01 and p[-1] > 0.99  # higher RFM score, lower risk
    np.testing.assert_array_equal(rfm.raw_probability(frame), [0.2, 0.4, 0.6, 0.8, 1.0])  # the score's rank
    reasons = rfm.reasons(frame, guide, everyone_at_risk)
    # the fourth customer: every part in quintile 2, recency first; the first: no part in the bottom 40%
    assert reasons.iloc[3].tolist() == [
        "recency in the bottom 40% of customers: no purchase for 200 days (typical of those who stayed: 6 days)",
        "frequency in the bottom 40% of customers: bought on 2 days in all (typical of those who stayed: 7 days)",
        "spend in the bottom 40% of customers: total spend USD 20.00 (typical of those who stayed: USD 275.00)",
    ]
    assert reasons.iloc[0].fillna("-").tolist() == [cm.NO_SINGLE_SIGN, "-", "-"]  # at risk, yet no weak part
    # below the medium risk tier: one text, and no risk reason
    assert rfm.reasons(frame, guide, p).iloc[:2].fillna("-").values.tolist() == [["no warning signs", "-", "-"]] * 2
    p_given = np.array([0.1, 0.2, 0.3, 0.8, 0.9])  # the third customer under the medium tier
    recency = cm.RuleScorer.fit("recency", frame, y, "sigmoid").reasons(frame, rule_guide(frame.iloc[::-1]), p_given)
    # typical of those who "stayed" (the last two here): 250 days silent
    assert recency[s.REASONS[0]].fillna("-").tolist()[2:] == [
        "no warning signs",
        cm.NO_SINGLE_SIGN,  # silent 200 days: on the safe side of 250, and at risk all the same
        "no purchase for 300 days (typical of those who stayed: 250 days)",
    ]
    assert recency[s.REASONS[1]].isna().all()
    btyd = cm.RuleScorer.fit("btyd", frame, y, "sigmoid")
    assert btyd.reasons(frame, guide, everyone_at_risk).iloc[4].tolist() == [
        "purchase model: 90% chance of no purchase in the next 90 days (typical of those who stayed: 20%)",
        "purchase model: 20% likely to be still active (typical of those who stayed: 88%)",
        "repeat purchases on 0 days (typical of those who stayed: 6 days)",
    ]
    again = cm.RuleScorer.from_dict(json.loads(json.dumps(btyd.to_dict())), "rules.json")
    np.testing.assert_array_equal(again.predict_proba(frame), btyd.predict_proba(frame))
    with pytest.raises(InputError, match=r"rules\.json: not a churn rule written by this project"):
        cm.RuleScorer.from_dict({"rule": "coin"}, "rules.json")
    with pytest.raises(InputError, match="churn rule btyd needs column"):
        btyd.predict_proba(frame.drop(columns=cm.BTYD_P_NO_PURCHASE))


# --- metrics ------------------------------------------------------------------------------------------------------


def reasons_row_by_row(rule: cm.RuleScorer, frame: pd.DataFrame, guide: cm.ReasonGuide, p: np.ndarray) -> list:
    """A rule's reasons as ``RuleScorer.reasons`` documents them, one customer at a time with ``reason_text``."""
    parts = cm.rfm_parts(frame)
    names = {s.DAYS_SINCE_LAST_PURCHASE: "recency", s.PURCHASE_DAYS: "frequency", s.TOTAL_SPEND: "spend"}
    rows = []
    for i in range(len(frame)):
        if p[i] < guide.medium_risk:
            rows.append([cm.NO_WARNING, None, None])
            continue
        if rule.name == "rfm":
            weak = sorted((parts[c][i], k, c) for k, c in enumerate(parts) if parts[c][i] <= cm.RFM_REASON_QUINTILE)
            said = [(f"{names[c]} in the bottom {q * 20:.0f}% of customers: ", c) for q, _, c in weak]
        else:
            said = [("", c) for c in rule.features_]
        texts = []
        for prefix, column in said:
            text = cm.reason_text(column, float(frame[column].iloc[i]), guide)
            if text is not None and len(texts) < 3:
                texts.append(prefix + text)
        texts = texts or [cm.NO_SINGLE_SIGN]
        rows.append(texts + [None] * (3 - len(texts)))
    return rows


@pytest.mark.parametrize("name", cm.RULES)
def test_rule_reasons_are_each_customers_own_made_once_per_value(name: str) -> None:
    rng = np.random.default_rng(5)
    n = 3000
    shared = rng.integers(0, 40, n)  # customers share histories, so their inputs repeat
    frame = pd.DataFrame(
        {
            s.DAYS_SINCE_LAST_PURCHASE: (shared * 9).astype("int64"),
            s.PURCHASE_DAYS: rng.integers(1, 12, n),
            s.TOTAL_SPEND: np.round(rng.gamma(2.0, 40.0, n), 2),
            s.FREQUENCY: rng.integers(0, 8, n).astype("float64"),
            cm.BTYD_P_NO_PURCHASE: rng.random(40)[shared],
            cm.BTYD_P_ALIVE: np.where(rng.random(n) < 0.05, np.nan, rng.random(40)[shared]),
        }
    )
    guide = rule_guide(frame.sample(5, random_state=1), medium_risk=0.3)
    p = rng.random(n)
    rule = cm.RuleScorer(name, cm.Calibrator("sigmoid"))
    got = rule.reasons(frame, guide, p)
    assert got.astype(object).where(got.notna(), None).values.tolist() == reasons_row_by_row(rule, frame, guide, p)
    # each kind of row is there: calm, at risk with no single sign, and at risk with several reasons
    assert (got[s.REASONS[0]] == cm.NO_WARNING).any() and (got[s.REASONS[0]] == cm.NO_SINGLE_SIGN).any()
    assert name == "recency" or got[s.REASONS[1]].notna().any()


def test_churn_metrics_by_hand() -> None:
    y = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 1])
    score = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05])
    m = churn_metrics(y, score, score, k=4)
    # pairs (churner, stayer) ordered right: 6 + 6 + 5 + 0 = 17 of 24
    assert m["roc_auc"] == pytest.approx(17 / 24)
    assert m["precision_at_k"] == pytest.approx(3 / 4) and m["recall_at_k"] == pytest.approx(3 / 4)
    assert m["top_decile_lift"] == pytest.approx(1 / 0.4)  # the top 10% is one churner
    assert m["brier"] == pytest.approx(np.mean((score - y) ** 2))
    # bins of width 0.1: each holds one row, so ECE is the mean |p - y|
    assert m["ece"] == pytest.approx(np.mean(np.abs(score - y)))
    assert expected_calibration_error(np.array([1, 0]), np.array([0.5, 0.5])) == 0.0
    table = calibration_table(y, score)
    assert table["customers"].sum() == 10
    lift = lift_table(y, score)
    assert list(lift["decile"]) == list(range(1, 11)) and lift["lift"].iloc[0] == pytest.approx(2.5)
    without = churn_metrics(y, score, None, k=4)
    assert np.isnan(without["brier"]) and without["roc_auc"] == m["roc_auc"]


def test_cross_fitted_calibration_repairs_a_miscalibrated_score() -> None:
    rng = np.random.default_rng(0)
    p_true = rng.uniform(0.05, 0.95, 20_000)
    y = (rng.uniform(size=p_true.size) < p_true).astype(np.int64)
    overconfident = 1 / (1 + np.exp(-3 * np.log(p_true / (1 - p_true))))
    folds = cm.fold_of(len(y), seed=1)
    assert abs(np.mean(folds) - 0.5) < 1e-3
    for method in cm.CALIBRATION_METHODS:
        fixed = cm.cross_fit(overconfident, y, method, folds)
        assert expected_calibration_error(y, fixed) < 0.015 < expected_calibration_error(y, overconfident)
    best, _, losses = cm.choose_calibration(overconfident, y, folds, "auto")
    assert losses[best] == min(losses.values())
    with pytest.raises(InputError, match="both churned and retained"):
        cm.Calibrator("sigmoid").fit(np.array([0.2, 0.4]), np.array([1, 1]))


@pytest.mark.parametrize("method", cm.CALIBRATION_METHODS)
@pytest.mark.parametrize("scores", ["probability", "days"])
def test_a_calibrator_is_plain_numbers_that_map_as_scikit_learn_does(method: str, scores: str) -> None:
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    p_true = rng.uniform(0.05, 0.95, 5_000)
    y = (rng.uniform(size=p_true.size) < p_true).astype(np.int64)
    score = p_true**2 if scores == "probability" else 400 * (1 - p_true) + rng.normal(0, 20, p_true.size)
    fitted = cm.Calibrator(method).fit(score, y)  # type: ignore[arg-type]
    grid = np.linspace(score.min() - 1, score.max() + 1, 1001)  # beyond both ends too
    if method == "isotonic":
        reference = IsotonicRegression(out_of_bounds="clip", y_min=1e-6, y_max=1 - 1e-6).fit(score, y).predict(grid)
    else:
        z = np.log(np.clip(score, 1e-6, 1 - 1e-6) / (1 - np.clip(score, 1e-6, 1 - 1e-6)))
        zg = np.log(np.clip(grid, 1e-6, 1 - 1e-6) / (1 - np.clip(grid, 1e-6, 1 - 1e-6)))
        if scores == "days":
            z, zg = (score - score.mean()) / score.std(), (grid - score.mean()) / score.std()
        reference = LogisticRegression(C=1e6, max_iter=1000).fit(z.reshape(-1, 1), y).predict_proba(zg.reshape(-1, 1))
        reference = reference[:, 1]
    np.testing.assert_allclose(fitted.transform(grid), np.clip(reference, 1e-6, 1 - 1e-6), rtol=1e-9, atol=1e-12)
    # stored as JSON and read back, it maps every score to the same bits
    stored = json.loads(json.dumps(fitted.to_dict()))
    restored = cm.Calibrator.from_dict(stored, "calibrator.json")
    assert np.array_equal(restored.transform(grid), fitted.transform(grid))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "pickle"}, r"^c\.json: not a calibrator written by this project \(method 'pickle'\)"),
        ({"slope": float("nan")}, r"^c\.json: 'slope' must be a finite number, got nan"),
        ({"intercept": "1.0"}, r"^c\.json: 'intercept' must be a finite number, got '1\.0'"),
        ({"method": "isotonic", "x": [0.1, 0.1], "y": [0.2, 0.3]}, r"'x' must be finite and increasing"),
        ({"method": "isotonic", "x": [0.1, 0.2], "y": [0.2]}, r"'x' and 'y' must be lists of the same"),
        ({"method": "isotonic", "x": ["a"], "y": [0.2]}, r"'x' and 'y' must be lists of the same"),
        ({"method": "isotonic", "x": [0.1, 0.2], "y": [0.2, 1.5]}, r"'y' must hold probabilities in \[0, 1\]"),
    ],
)
def test_a_stored_calibrator_that_is_not_one_is_refused(change: dict[str, Any], message: str) -> None:
    good = {"method": "sigmoid", "input": "probability", "center": 0.5, "scale": 0.2, "slope": 1.1, "intercept": 0.0}
    with pytest.raises(InputError, match=message):
        cm.Calibrator.from_dict({**good, **change}, "c.json")


@pytest.mark.parametrize(
    ("feature", "value", "typical", "text"),
    [
        (s.DAYS_SINCE_LAST_PURCHASE, 120.0, 35.0, "no purchase for 120 days (typical of those who stayed: 35 days)"),
        (s.DAYS_SINCE_LAST_PURCHASE, 20.0, 35.0, None),  # silent for less than those who stayed: no risk
        (s.DAYS_SINCE_LAST_PURCHASE, 35.4, 35.0, None),  # "35 days (typical: 35 days)" says nothing
        ("spend_90d", 12.5, 40.0, "spent EUR 12.50 in the last 90 days (typical of those who stayed: EUR 40.00)"),
        ("spend_180d", 0.0, 0.0, None),
        ("purchase_days_30d", 0.0, 1.0, "bought on 0 days in the last 30 days (typical of those who stayed: 1 day)"),
        (s.GAP_STD_DAYS, 21.0, 49.0, None),  # steadier than those who stayed: not irregular
        (s.GAP_MEAN_DAYS, 4.0, 70.0, None),  # buys more often than those who stayed
        (s.GAP_MEAN_DAYS, float("nan"), 30.0, None),
        (s.RETURNS_SHARE, 0.25, 0.0, "returned 25% of their spend (typical of those who stayed: 0%)"),
        (
            cm.OVERDUE_RATIO,
            3.24,
            0.8,
            "silent for 3.2 times their average gap between purchases (typical of those who stayed: 0.8 times)",
        ),
        (
            "purchase_trend_90d",
            -0.6,
            0.0,
            "only 20% of their purchase days in the last 180 days came in the last 90 "
            "(typical of those who stayed: 50%)",
        ),
        ("purchase_trend_90d", 0.0, 0.2, None),  # not falling: nothing bought in either window, or as much
        (
            cm.BTYD_EXPECTED_PURCHASES,
            0.12,
            0.9,
            "purchase model expects 0.12 purchases in the next 90 days (typical of those who stayed: 0.90 purchases)",
        ),
        (s.TENURE_DAYS, 45.0, 420.0, "a customer for only 45 days (typical of those who stayed: 420 days)"),
        (s.DAYS_SINCE_LAST_PURCHASE + cm.RANK_SUFFIX, 0.955, 0.5, None),  # pushes its concept, never the text
        (s.RECENCY, 12.0, 40.0, None),
        # an attribute is risky on the churners' side: their median NPS is 5, below the 8 of those who stayed
        ("survey_nps_latest", 3.0, 8.0, "survey nps latest 3 (typical of those who stayed: 8)"),
        ("survey_nps_latest", 9.0, 8.0, None),
    ],
)
def test_reason_text(feature: str, value: float, typical: float, text: str | None) -> None:
    guide = cm.ReasonGuide({feature: typical}, {feature: 5.0}, medium_risk=0.4, currency="EUR", horizon_days=90)
    assert cm.reason_text(feature, value, guide) == text


# --- attributes ---------------------------------------------------------------------------------------------------


def _survey() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "cust": ["a", "a", "a", "b", None, "c"],
            "answered": ["2020-01-05", "2020-02-01 10:00", "2020-03-15", "2020-02-10", "2020-01-01", "not a date"],
            "nps": [9, 4, 0, 7, 5, 6],
            "complaint": [0, 1, 1, 0, 0, 0],
        }
    )


def test_attributes_use_only_rows_on_or_before_the_cutoff() -> None:
    table, rejected = attr.prepare(
        _survey(), where="survey", customer_id="cust", timestamp="answered", columns=["nps", "complaint"]
    )
    assert rejected == {attr.MISSING_CUSTOMER_ID: 1, attr.UNPARSEABLE_TIMESTAMP: 1}
    assert len(table) + sum(rejected.values()) == len(_survey())  # every row is kept or counted
    cutoffs = [pd.Timestamp("2020-01-31"), pd.Timestamp("2020-02-01"), pd.Timestamp("2020-03-31")]
    pairs = [("nps", "latest"), ("nps", "mean"), ("complaint", "sum"), ("nps", "count")]
    out = attr.as_of_features(table, cutoffs, name="survey", window_days=None, pairs=pairs).set_index(
        [s.CUTOFF, s.CUSTOMER_ID]
    )
    assert out.loc[("2020-01-31", "a")].tolist() == [9.0, 9.0, 0.0, 1.0]
    assert out.loc[("2020-02-01", "a")].tolist() == [4.0, 6.5, 1.0, 2.0]  # a row on the cutoff day counts
    assert out.loc[("2020-03-31", "a")].tolist() == [0.0, 13 / 3, 2.0, 3.0]
    assert ("2020-01-31", "b") not in out.index  # b answered later
    windowed = attr.as_of_features(table, cutoffs[2:], name="survey", window_days=30, pairs=[("nps", "count")])
    assert windowed.set_index(s.CUSTOMER_ID)["survey_nps_count"].to_dict() == {"a": 1.0}


def test_attribute_errors_are_one_line() -> None:
    with pytest.raises(InputError, match=r"column\(s\) \['score'\] not found"):
        attr.prepare(_survey(), where="survey", customer_id="cust", timestamp="answered", columns=["score"])
    bad = _survey().assign(nps=["9", "4", "zero", "7", "5", "6"])
    with pytest.raises(InputError, match=re.escape("column 'nps' must be numeric; 1 rows are not (e.g. 'zero')")):
        attr.prepare(bad, where="survey", customer_id="cust", timestamp="answered", columns=["nps"])


# --- the training table on the CDNOW sample -------------------------------------------------------------------------


def _build(tmp: Path, params: dict[str, Any], transactions: pd.DataFrame | None = None) -> dict[str, Any]:
    """ingest (or the given transactions) -> features -> the churn stage's modelling table."""
    base = section(params, "base", BaseConfig)
    fcfg = section(params, "features", FeaturesConfig)
    cfg = section(params, "churn", ChurnConfig)
    tx = tmp / "tx.parquet"
    if transactions is None:
        ingest_stage.run(base, section(params, "ingest", IngestConfig), tx, tmp / "q.parquet", tmp / "ingest.json")
    else:
        transactions.to_parquet(tx, index=False)
    features_stage.run(base, fcfg, tx, tmp / "f.parquet", tmp / "features.json")
    frame = stage.read_features(tmp / "f.parquet", fcfg)
    labelled = sorted(frame.loc[~frame[s.IS_SCORING], s.CUTOFF].unique())
    split = cm.split_cutoffs(labelled, fcfg.horizon_days)
    table, fits = stage.modelling_table(frame, [*split.training, split.validation], base, fcfg, cfg, {})
    return {"table": table, "split": split, "fits": fits, "base": base, "cfg": cfg, "tx": tx}


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    params = project_params()
    params["ingest"]["source"] = "cdnow_sample"
    built = _build(tmp_path_factory.mktemp("sample"), params)
    built["params"] = params
    return built


def test_changing_the_validation_horizon_changes_no_training_row(sample: dict[str, Any], tmp_path: Path) -> None:
    split = sample["split"]
    start = split.validation.tz_localize("UTC") + pd.Timedelta(days=1)
    end = start + pd.Timedelta(days=sample["params"]["features"]["horizon_days"])
    tx = pd.read_parquet(sample["tx"])
    inside = (tx[s.TS] >= start) & (tx[s.TS] < end)
    assert inside.sum() > 100
    changed = tx.copy()
    changed.loc[inside, s.AMOUNT] *= 3.0  # every purchase in the horizon costs more ...
    changed = changed.drop(changed.index[inside][::2])  # ... half of them never happened ...
    extra = tx[tx[s.TS] < start].drop_duplicates(s.CUSTOMER_ID).head(200).assign(**{s.TS: start + pd.Timedelta(days=5)})
    changed = pd.concat([changed, extra], ignore_index=True)  # ... and 200 customers bought again
    rebuilt = _build(tmp_path, sample["params"], changed)

    def rows(table: pd.DataFrame, cutoffs: Any) -> pd.DataFrame:
        part = table[table[s.CUTOFF].isin(list(cutoffs))]
        return part.sort_values([s.CUTOFF, s.CUSTOMER_ID]).reset_index(drop=True)

    before, after = rows(sample["table"], split.training), rows(rebuilt["table"], split.training)
    features = cm.feature_columns(before)
    assert set(cm.BTYD_COLUMNS) <= set(features)
    pd.testing.assert_frame_equal(before, after)  # every feature *and* label of every training row
    # the validation rows' features are unchanged too; only their labels saw the horizon
    v_before, v_after = rows(sample["table"], [split.validation]), rows(rebuilt["table"], [split.validation])
    pd.testing.assert_frame_equal(v_before[features], v_after[features])
    assert not v_before[s.CHURNED].equals(v_after[s.CHURNED])


def sample_guide(sample: dict[str, Any]) -> cm.ReasonGuide:
    """The sample's typical values as the training stage stores them: medians at the validation cutoff."""
    table, split = sample["table"], sample["split"]
    valid = table[table[s.CUTOFF] == split.validation]
    medians = cm.typical_values(valid[cm.feature_columns(table)], valid[s.CHURNED].astype(bool))
    return cm.ReasonGuide(medians["stayed"], medians["churned"], medium_risk=0.4, currency="USD", horizon_days=90)


def _fit(sample: dict[str, Any], seed: int) -> tuple[cm.ChurnModel, pd.DataFrame]:
    table, split, cfg = sample["table"], sample["split"], sample["cfg"]
    X = cm.feature_columns(table)
    train = table[table[s.CUTOFF].isin(list(split.training))]
    valid = table[table[s.CUTOFF] == split.validation]
    fields = {f.name: getattr(cfg.lightgbm, f.name) for f in dataclasses.fields(cfg.lightgbm)}
    settings = cm.BoosterSettings(**fields, seed=seed)
    model = cm.ChurnModel(settings, "auto").fit(
        train[X], train[s.CHURNED].astype(int), valid[X], valid[s.CHURNED].astype(int)
    )
    return model, valid[X]


def test_same_seed_same_predictions(sample: dict[str, Any]) -> None:
    first, X = _fit(sample, seed=7)
    second, _ = _fit(sample, seed=7)
    other, _ = _fit(sample, seed=8)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    pd.testing.assert_frame_equal(first.contributions(X), second.contributions(X))
    assert not np.array_equal(first.raw_probability(X), other.raw_probability(X))  # the seed is really used


def test_contributions_add_up_and_reasons_point_up(sample: dict[str, Any]) -> None:
    model, X = _fit(sample, seed=3)
    contrib = model.contributions(X)
    raw = model.raw_probability(X)
    np.testing.assert_allclose(1 / (1 + np.exp(-contrib.sum(axis=1))), raw, rtol=1e-9)
    guide = sample_guide(sample)
    p = model.predict_proba(X)
    reasons = cm.top_reasons(contrib, X, guide, p)
    assert list(reasons.columns) == list(s.REASONS)
    riskiest = np.argsort(-raw)[:50]
    assert reasons.iloc[riskiest]["reason_1"].notna().all()
    # reason_1 comes from the concept with the largest push, summed over its features, and its feature pushing
    # the most among those that read as a risk
    row = int(riskiest[0])
    pushes = contrib.drop(columns="bias").iloc[row]
    by_concept = pushes.groupby([cm.reading(f).concept for f in pushes.index]).sum().sort_values(ascending=False)
    first = next(
        text
        for concept in by_concept.index
        for f in pushes[[cm.reading(f).concept == concept for f in pushes.index]].sort_values(ascending=False).index
        if (text := cm.reason_text(f, float(X.iloc[row][f]), guide)) is not None
    )
    assert reasons.iloc[row]["reason_1"] == first
    calm = p < guide.medium_risk
    assert calm.sum() > 50 and (reasons[calm]["reason_1"] == cm.NO_WARNING).all()
    assert reasons[calm][["reason_2", "reason_3"]].isna().all().all()
    importance = model.importance(X)
    assert importance["share"].sum() == pytest.approx(1.0)
    with pytest.raises(RuntimeError, match="not fitted"):
        cm.ChurnModel(model.settings).predict_proba(X)


def test_scoring_without_reasons_changes_nothing_else(sample: dict[str, Any]) -> None:
    model, X = _fit(sample, seed=3)
    frame = X.head(500).assign(
        **{s.CUSTOMER_ID: [f"{i:05d}" for i in range(500)], s.CUTOFF: pd.Timestamp("1998-01-01")}
    )
    guide = sample_guide(sample)
    full = cm.score_customers(model, frame, guide)
    bare = cm.score_customers(model, frame, guide, explain=False)
    assert list(bare.columns) == list(full.columns) and bare[list(s.REASONS)].isna().all().all()
    pd.testing.assert_frame_equal(bare.drop(columns=list(s.REASONS)), full.drop(columns=list(s.REASONS)))
    assert full["reason_1"].notna().sum() > 400
    # past churn.max_explained_customers the reasons go to the head of the weekly list, by p_churn x CLV
    params = copy.deepcopy(sample["params"])
    params["churn"]["max_explained_customers"] = 50
    cfg = score_stage.Settings(*(section(params, n, c) for n, c in SECTIONS_SCORED), source="cdnow_sample")
    clv = np.linspace(500.0, 1.0, 500)
    ranked = score_stage.risk_table(frame, clv, model, cfg, ties=np.arange(500), guide=guide)
    pd.testing.assert_frame_equal(ranked.drop(columns=list(s.REASONS)), bare.drop(columns=list(s.REASONS)))
    vr = full[s.P_CHURN].to_numpy() * clv
    head = np.argsort(-vr, kind="stable")[:50]
    explained = ranked["reason_1"].notna().to_numpy()
    assert set(np.flatnonzero(explained)) <= set(head) and explained.sum() > 40
    own = cm.score_customers(model, frame, guide)
    pd.testing.assert_frame_equal(  # the head's reasons are the ones explaining everyone gives them
        ranked.iloc[head].reset_index(drop=True), own.iloc[head].reset_index(drop=True)
    )
    with pytest.raises(ValueError, match="499 CLV values for 500 customers"):
        score_stage.risk_table(frame, clv[1:], model, cfg, ties=np.arange(500), guide=guide)


def test_training_rows_are_capped_per_cutoff_and_the_file_reads_like_the_table(sample: dict[str, Any]) -> None:
    split, base = sample["split"], sample["base"]
    features = sample["tx"].parent / "f.parquet"
    fcfg = section(sample["params"], "features", FeaturesConfig)
    used = [*split.training, split.validation]
    # read from the Parquet file one cutoff at a time, nothing capped: the same table as from the loaded frame
    whole, _ = stage.modelling_table(features, used, base, fcfg, sample["cfg"], {}, training=split.training)
    pd.testing.assert_frame_equal(whole, sample["table"])

    params = copy.deepcopy(sample["params"])
    params["churn"]["max_training_rows"] = 5000
    capped_cfg = section(params, "churn", ChurnConfig)
    capped, _ = stage.modelling_table(features, used, base, fcfg, capped_cfg, {}, training=split.training)
    per_cutoff = -(-5000 // len(split.training))  # 10 training cutoffs: 500 customers each
    counts = capped.groupby(s.CUTOFF).size()
    assert all(counts[c] == per_cutoff for c in split.training)
    assert counts[split.validation] == (whole[s.CUTOFF] == split.validation).sum()  # validation: its own cap
    params["churn"]["max_validation_rows"] = 1000
    both = section(params, "churn", ChurnConfig)
    kw: dict[str, Any] = {"training": split.training, "validation": split.validation}
    cut_both, _ = stage.modelling_table(features, used, base, fcfg, both, {}, **kw)
    assert (cut_both[s.CUTOFF] == split.validation).sum() == 1000
    assert all(cut_both.groupby(s.CUTOFF).size()[c] == per_cutoff for c in split.training)
    # the kept customers are a seeded draw: the same twice, and each one's row is its uncapped row
    again, _ = stage.modelling_table(features, used, base, fcfg, capped_cfg, {}, training=split.training)
    pd.testing.assert_frame_equal(capped, again)
    keys = [s.CUTOFF, s.CUSTOMER_ID]
    joined = capped.merge(whole, on=keys, suffixes=("", "_whole"))
    assert len(joined) == len(capped)
    np.testing.assert_array_equal(joined[s.DAYS_SINCE_LAST_PURCHASE], joined[f"{s.DAYS_SINCE_LAST_PURCHASE}_whole"])


def test_attribute_tables_are_read_and_checked_in_one_line(tmp_path: Path) -> None:
    spec = AttributeTable(
        name="survey",
        path=str(tmp_path / "survey.txt"),
        customer_id="cust",
        timestamp="answered",
        window_days=None,
        features=("nps:latest",),
    )
    with pytest.raises(InputError, match=r"survey\.txt: file not found"):
        stage.read_attribute_table(spec)
    (tmp_path / "survey.txt").write_text("x")
    with pytest.raises(InputError, match=r"survey\.txt: use a \.csv, \.csv\.gz or \.parquet file"):
        stage.read_attribute_table(spec)
    broken = tmp_path / "survey.parquet"
    broken.write_bytes(b"PAR1 not really")
    with pytest.raises(InputError, match=r"survey\.parquet: cannot be read \(.*\); check the file, or export it again"):
        stage.read_attribute_table(dataclasses.replace(spec, path=str(broken)))
    good = tmp_path / "survey.csv"
    _survey().to_csv(good, index=False)
    table, counts = stage.read_attribute_table(dataclasses.replace(spec, path=str(good)))
    assert list(table.columns) == [s.CUSTOMER_ID, s.TS, "nps"] and str(table[s.TS].dtype) == "datetime64[ns, UTC]"
    assert counts["rows"] == len(_survey()) and counts["used"] == len(table) == 4  # no id, no date: counted
