"""Stage ``train_clv``: fit BTYD + Gamma-Gamma at the calibration cutoff, judge them on its horizon, refit as of
the training date and register the model. It scores no customer: the ``score`` stage does, every week.

1. At ``clv.calibration_cutoff`` (a training cutoff of the features table) every candidate purchase model and
   the Gamma-Gamma spend model are fitted and evaluated on the labelled horizon that follows
   (``features.horizon_days``), next to a naive baseline; ``clv.model: auto`` keeps the best candidate by
   ``clv.selection_metric``.
2. The chosen model is refitted on all history before the training date ``train.as_of``, and refitted again on
   ``clv.bootstrap_samples`` resamples of its customers: the replicates' parameters are the model's uncertainty,
   from which the score stage draws each customer's 5th-95th percentile CLV.
3. Registry (``pipeline.registry``): every tracked run registers its model (``clv.registry.model_name``). The
   alias ``champion`` moves to it only if, on the same calibration holdout rows, the lower bound of its paired gain
   in ``clv.registry.metric`` over the champion clears zero and ``min_improvement``; otherwise it is
   ``challenger``. A run trained before the champion's training
   date is a back-fill and takes no alias.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ibis
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features import schemas as s
from features.behaviour import DAYS_PER_UNIT, btyd_summary, daily_repeat_purchases, purchase_days
from features.errors import InputError
from models import bootstrap, gate
from models import value_booster as vb
from models.clv_base import DAYS_PER_MONTH, MIN_CUSTOMERS_TO_FIT, MODEL_NAMES, ClvFitError, ModelName
from models.evaluation import better, decile_table, holdout_metrics, round_metrics
from models.histories import histories
from models.purchases import PurchaseModel, purchase_model_from_params
from models.spend import SpendModel, usable_spend
from models.value import ValueSettings
from models.value import score as score_value
from pipeline import churn as churn_stage
from pipeline import cli, parallel, plots, registry, tracking
from pipeline.config import (
    BaseConfig,
    ChurnConfig,
    ClvConfig,
    FeaturesConfig,
    ingest_source,
    load_params,
    section,
    training_as_of,
)
from pipeline.engine import backend, open_transactions
from pipeline.features import history_end
from pipeline.io import finite_json, read_stage_json, read_table, write_csv, write_json
from pipeline.progress import Progress

log = logging.getLogger("clv")

SNAPSHOT_COLUMNS = [
    s.CUTOFF,
    s.IS_SCORING,
    s.CUSTOMER_ID,
    s.FREQUENCY,
    s.RECENCY,
    s.T,
    s.MONETARY_VALUE,
    s.FUTURE_PURCHASES,
    s.FUTURE_SPEND,
]
BASELINE = "historical_rate"
FREQUENCY_CAP = 7  # the calibration-vs-holdout plot groups frequencies of 7 and more, as Fader et al. do


# --- inputs ---------------------------------------------------------------------------------------------------


def _check_columns(path: Path) -> None:
    if not path.is_file():
        raise InputError(f"{path}: file not found; run the features stage first (`dvc repro`)")
    names = pq.read_schema(path).names
    missing = [c for c in SNAPSHOT_COLUMNS if c not in names]
    if missing:
        raise InputError(f"{path}: columns {missing} are missing; rebuild it with the features stage")


def training_cutoffs(path: Path, fcfg: FeaturesConfig) -> list[dt.date]:
    """The labelled cutoffs present in the features table, in order."""
    schema = s.feature_schema(fcfg.windows_days, fcfg.trend_window_days)
    table = read_table(path, schema, columns=[s.CUTOFF, s.IS_SCORING], filters=[(s.IS_SCORING, "=", False)])
    return sorted(pd.Timestamp(v).date() for v in table[s.CUTOFF].unique())


def read_snapshot(path: Path, fcfg: FeaturesConfig, cutoff: dt.date) -> pd.DataFrame:
    """The training rows of one cutoff of the features table."""
    schema = s.feature_schema(fcfg.windows_days, fcfg.trend_window_days)
    frame = read_table(path, schema, columns=SNAPSHOT_COLUMNS, filters=[(s.CUTOFF, "=", pd.Timestamp(cutoff))])
    if frame.empty:
        raise InputError(f"{path}: no training rows at cutoff {cutoff}; rebuild it with the features stage")
    return frame.reset_index(drop=True)


def btyd_snapshot(transactions: Path, base: BaseConfig, cutoff: dt.date) -> pd.DataFrame:
    """``customer_id``, ``cutoff`` and the BTYD columns of every customer who bought on or before ``cutoff``.

    Computed from the clean transactions by ``features.behaviour.btyd_summary`` (the features table's definitions
    of these columns, without the other features). The rows come in the engine's order: everything downstream
    (unique histories, the bootstrap, the sorted output) is independent of it.
    """
    con = backend(base)
    expr = btyd_summary(open_transactions(con, transactions), cutoff, time_unit=base.time_unit)
    frame = expr.to_pyarrow().to_pandas()
    frame.insert(1, s.CUTOFF, pd.Timestamp(cutoff))
    return frame


def resolve_calibration(path: Path, fcfg: FeaturesConfig, cfg: ClvConfig) -> dt.date:
    cutoffs = training_cutoffs(path, fcfg)
    if not cutoffs:
        raise InputError(f"{path}: no labelled training cutoffs; the clv stage needs one to evaluate on")
    if cfg.calibration_cutoff is None:
        return cutoffs[-1]
    if cfg.calibration_cutoff not in cutoffs:
        raise InputError(
            f"clv.calibration_cutoff={cfg.calibration_cutoff} is not a training cutoff of the features table "
            f"({', '.join(map(str, cutoffs))}); add it to features.cutoffs or choose one of these"
        )
    return cfg.calibration_cutoff


def value_settings(base: BaseConfig, fcfg: FeaturesConfig, cfg: ClvConfig) -> ValueSettings:
    unit_days = DAYS_PER_UNIT[base.time_unit]
    return ValueSettings(
        horizon_units=fcfg.horizon_days / unit_days,
        months=cfg.clv_horizon_months,
        units_per_month=DAYS_PER_MONTH / unit_days,
        discount_rate_monthly=cfg.discount_rate_monthly,
        margin_ratio=cfg.margin_ratio,
    )


def _arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    return (
        frame[s.FREQUENCY].to_numpy(np.float64),
        frame[s.RECENCY].to_numpy(np.float64),
        frame[s.T].to_numpy(np.float64),
        frame[s.MONETARY_VALUE].to_numpy(np.float64),
    )


def _check_enough_history(frame: pd.DataFrame, where: str) -> None:
    """One-line errors for a snapshot no BTYD model can be fitted on: too few customers, or no repeat buyer."""
    n = len(frame)
    if n < MIN_CUSTOMERS_TO_FIT:
        raise InputError(
            f"clv: the {where} has {n} customer(s); the BTYD models need at least {MIN_CUSTOMERS_TO_FIT}. "
            "Use a log with more customers"
        )
    if not (frame[s.FREQUENCY] > 0).any():
        raise InputError(
            f"clv: at the {where} all {n} customers bought on one day only, so Gamma-Gamma has no repeat spend to "
            "learn from; use a longer history, or a later clv.calibration_cutoff"
        )


def fit_spend(frame: pd.DataFrame, ladder: Sequence[float]) -> tuple[SpendModel, int]:
    """Gamma-Gamma on the repeat buyers with positive mean spend; also returns how many repeat buyers were left out."""
    f, _, _, m = _arrays(frame)
    ok = usable_spend(f, m)
    left_out = int(((f > 0) & ~ok).sum())
    if left_out:
        log.info(
            "%d repeat buyers have a mean repeat spend <= 0 (zero-value purchases or returns); "
            "they get the population mean spend",
            left_out,
        )
    return SpendModel(ladder).fit(f[ok], m[ok]), left_out


# --- calibration: candidates, baseline, choice ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Candidate:
    name: str
    model: PurchaseModel
    expected_purchases: np.ndarray
    expected_spend: np.ndarray
    clv: np.ndarray
    metrics: dict[str, Any]


def evaluate_candidate(
    name: ModelName,
    cal: pd.DataFrame,
    spend: SpendModel,
    settings: ValueSettings,
    ladder: Sequence[float],
) -> Candidate:
    f, r, t, m = _arrays(cal)
    pm = PurchaseModel(name, ladder).fit(f, r, t)
    scored = score_value(pm, spend.params_, f, r, t, m, settings)
    spend_predicted = scored["expected_purchases"] * scored["expected_order_value"]
    metrics = holdout_metrics(
        scored["expected_purchases"],
        cal[s.FUTURE_PURCHASES].to_numpy(np.float64),
        spend_predicted,
        cal[s.FUTURE_SPEND].to_numpy(np.float64),
        scored["clv"],
    )
    report = pm.report()
    metrics.update(log_likelihood=report.log_likelihood, penalizer_coef=report.penalizer_coef)
    return Candidate(name, pm, scored["expected_purchases"], spend_predicted, scored["clv"], metrics)


def naive_predictions(cal: pd.DataFrame, settings: ValueSettings) -> tuple[np.ndarray, np.ndarray]:
    """The naive baseline's purchases and spend over the horizon: each customer keeps their historical
    repeat-purchase and repeat-spend rate per unit of age. Its spend is also its value ranking."""
    f, _, t, m = _arrays(cal)
    age = np.where(t > 0, t, np.inf)  # first bought on the cutoff day: no rate observed yet
    return f / age * settings.horizon_units, f * m / age * settings.horizon_units


def baseline_metrics(cal: pd.DataFrame, settings: ValueSettings) -> dict[str, Any]:
    """The naive baseline (``naive_predictions``) judged on the holdout."""
    purchases, spend = naive_predictions(cal, settings)
    return holdout_metrics(
        purchases,
        cal[s.FUTURE_PURCHASES].to_numpy(np.float64),
        spend,
        cal[s.FUTURE_SPEND].to_numpy(np.float64),
        spend,
    )


def choose(candidates: dict[str, Candidate], metric: str) -> Candidate:
    best: Candidate | None = None
    for cand in candidates.values():
        if best is None or better(metric, cand.metrics[metric], best.metrics[metric]):
            best = cand
    if best is None:
        raise InputError("clv: no candidate model could be fitted")
    return best


# --- registry: the champion's figure on this run's holdout -----------------------------------------------------


def version_params(version: tracking.RegisteredVersion) -> dict[str, Any]:
    """The params.json a registered CLV version was logged with (its calibration and scoring fits): the pyfunc's
    own artifact, read through the registry (``models:/<name>/<version>``)."""
    with tempfile.TemporaryDirectory(prefix="clv-params-") as tmp:
        path = tracking.model_file(version.name, version.version, "artifacts/params.json", Path(tmp))
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


@dataclasses.dataclass(frozen=True)
class Predictions:
    """A model's predictions of the calibration holdout rows: purchases, spend, and the CLV that ranks them."""

    purchases: np.ndarray
    spend: np.ndarray
    clv: np.ndarray

    def against(self, metric: str, cal: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """The holdout truth and the prediction that ``metric`` compares (``models.evaluation.holdout_metrics``)."""
        if metric.startswith("purchases_"):
            return cal[s.FUTURE_PURCHASES].to_numpy(np.float64), self.purchases
        spend = cal[s.FUTURE_SPEND].to_numpy(np.float64)
        return (spend, self.spend) if metric == "spend_mae" else (spend, self.clv)


def rescore_calibration(doc: dict[str, Any], cal: pd.DataFrame, settings: ValueSettings) -> Predictions:
    """A stored model's holdout predictions of this run's calibration rows: its calibration-period fit, no refit."""
    name = doc["scoring"]["model"]
    purchases = purchase_model_from_params(name, doc["calibration"]["candidates"][name]["params"])
    f, r, t, m = _arrays(cal)
    scored = score_value(purchases, doc["calibration"]["gamma_gamma"]["params"], f, r, t, m, settings)
    spend = scored["expected_purchases"] * scored["expected_order_value"]
    return Predictions(scored["expected_purchases"], spend, scored["clv"])


def champion_figure(
    version: tracking.RegisteredVersion,
    rule: gate.Rule,
    cal: pd.DataFrame,
    new: Predictions,
    cutoff: dt.date,
    holdout_sha: str,
    settings: ValueSettings,
) -> gate.ChampionFigure:
    """The champion's calibration-period fit applied to this run's holdout rows: its ``rule.metric`` there, and the
    paired gain of the new model's predictions over it on the same rows.

    Not judged when it was calibrated on a later cutoff (its fit then saw part of this holdout).
    """
    its_cutoff = version.tags.get("holdout.cutoff")
    if its_cutoff and dt.date.fromisoformat(its_cutoff) > cutoff:
        why = f"it was calibrated on {its_cutoff}, after this holdout's cutoff {cutoff}"
        return gate.ChampionFigure(version.version, None, why_not=why)
    champion = rescore_calibration(version_params(version), cal, settings)
    truth, prediction = new.against(rule.metric, cal)
    theirs = champion.against(rule.metric, cal)[1]
    if not np.all(np.isfinite(theirs)):
        why = f"its predictions of {int((~np.isfinite(theirs)).sum())} of these rows are not numbers"
        return gate.ChampionFigure(version.version, None, why_not=why)
    paired = rule.evidence(truth, prediction, theirs)
    same = version.tags.get("holdout.sha") == holdout_sha
    how = f"its calibration fit on {'the same holdout' if same else 'these rows'}"
    return gate.ChampionFigure(version.version, paired.reference, how=how, paired=paired)


def judge(
    cfg: ClvConfig,
    chosen: Candidate,
    cal: pd.DataFrame,
    cutoff: dt.date,
    as_of: dt.date,
    settings: ValueSettings,
    name: str,
    model_sha: str,
    seed: int,
) -> registry.Judgement:
    """This run's model against the registered champion, on the calibration holdout (``pipeline.registry``)."""
    rule = cfg.registry.rule(seed)
    holdout_sha = gate.holdout_fingerprint(
        cutoff,
        cal[s.CUSTOMER_ID],
        {s.FUTURE_PURCHASES: cal[s.FUTURE_PURCHASES], s.FUTURE_SPEND: cal[s.FUTURE_SPEND]},
    )
    new = Predictions(chosen.expected_purchases, chosen.expected_spend, chosen.clv)
    return registry.judge(
        name,
        as_of=as_of,
        model_sha=model_sha,
        holdout_sha=holdout_sha,
        figures={k: v for k, v in chosen.metrics.items() if isinstance(v, int | float)},
        rule=rule,
        champion_figure=lambda v: champion_figure(v, rule, cal, new, cutoff, holdout_sha, settings),
        tags={"holdout.cutoff": str(cutoff)},
    )


# --- plots ----------------------------------------------------------------------------------------------------


def by_frequency(cal: pd.DataFrame, predicted: np.ndarray) -> pd.DataFrame:
    """Mean holdout purchases, actual and predicted, by calibration frequency (7+ grouped)."""
    frame = pd.DataFrame(
        {
            "frequency": np.minimum(cal[s.FREQUENCY].to_numpy(), FREQUENCY_CAP),
            "actual": cal[s.FUTURE_PURCHASES].to_numpy(np.float64),
            "predicted": predicted,
        }
    )
    return frame.groupby("frequency", as_index=False).agg(
        customers=("actual", "size"), actual=("actual", "mean"), predicted=("predicted", "mean")
    )


def cumulative_tracking(
    transactions: Path,
    base: BaseConfig,
    cutoff: dt.date,
    horizon_days: int,
    model: PurchaseModel,
    cal: pd.DataFrame,
) -> pd.DataFrame:
    """Cumulative repeat purchases by the calibration customers over the holdout, actual vs predicted, by week.

    The actual curve counts the purchases of the customers in ``cal`` only: at a cutoff that keeps a draw of its
    customers (``features.max_customers_per_training_cutoff``) both curves are the draw's.
    """
    con = backend(base)
    kept = ibis.memtable(pa.table({s.CUSTOMER_ID: pa.array(cal[s.CUSTOMER_ID])}))
    days = purchase_days(open_transactions(con, transactions)).semi_join(kept, s.CUSTOMER_ID)
    daily = daily_repeat_purchases(days, cutoff, horizon_days=horizon_days).to_pandas()
    offset = (pd.to_datetime(daily["day"]) - pd.Timestamp(cutoff)).dt.days.to_numpy()
    per_day = np.zeros(horizon_days + 1)
    np.add.at(per_day, offset, daily["purchases"].to_numpy(np.float64))
    actual_cum = np.cumsum(per_day)
    steps = sorted(set(range(7, horizon_days + 1, 7)) | {horizon_days})
    f, r, t, _ = _arrays(cal)
    unit_days = DAYS_PER_UNIT[base.time_unit]
    predicted = [float(model.expected_purchases(d / unit_days, f, r, t).sum()) for d in steps]
    return pd.DataFrame(
        {"day": steps, "week": np.array(steps) / 7.0, "actual": actual_cum[steps], "predicted": predicted}
    )


def p_alive_grid(model: PurchaseModel, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """P(alive) over frequency x recency for a customer of the largest age T (cells with f = 0 < recency are NaN)."""
    f_max = int(max(10, np.quantile(frame[s.FREQUENCY], 0.99)))
    t_max = float(frame[s.T].max())
    freq = np.arange(f_max + 1, dtype=np.float64)
    rec = np.linspace(0.0, t_max, 40)
    ff, rr = np.meshgrid(freq, rec)
    valid = ~((ff == 0) & (rr > 0))
    grid = np.full(ff.shape, np.nan)
    grid[valid] = model.p_alive(ff[valid], rr[valid], np.full(int(valid.sum()), t_max))
    return grid, freq, rec


# --- the stage ------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Outputs:
    artifacts: Path
    metrics: Path
    plots: Path

    @property
    def params_json(self) -> Path:
        return self.artifacts / "params.json"

    @property
    def figures(self) -> Path:
        return self.artifacts / "plots"


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Every candidate fitted at the calibration cutoff, the one chosen, and the spend model they share."""

    cutoff: dt.date
    candidates: dict[str, Candidate]
    failed: dict[str, str]
    chosen: Candidate
    spend: SpendModel
    spend_left_out: int


@dataclasses.dataclass(frozen=True)
class ServingChoice:
    """What values customers: the BTYD model (``None``: the best by ``clv.selection_metric`` at the calibration
    cutoff), whether the LightGBM challenger sets the CLV and the value tiers over it, and why."""

    btyd: str | None
    challenger: bool
    reason: str


def backtest_choice(path: Path | None, cfg: ClvConfig) -> ServingChoice:
    """The backtest's choice (``metrics/backtest.json`` ``clv.serving``) when ``clv.model`` is auto."""
    if cfg.model != "auto":
        return ServingChoice(None, False, f"clv.model is {cfg.model}")
    if path is None or not path.is_file():
        # the stored reason names no folder: the same training on another machine stores the same document
        why = f"no backtest ({path.name} not found)" if path else "no backtest given"
        log.warning("%s (%s): the best by %s at the calibration cutoff values them", why, path, cfg.selection_metric)
        return ServingChoice(None, False, f"{why}: the best by {cfg.selection_metric} at the calibration cutoff")
    doc = read_stage_json(path, "backtest")
    serving = (doc.get("clv") or {}).get("serving")
    if not serving:
        why = f"the backtest judged no CLV origin: the best by {cfg.selection_metric} at the calibration cutoff"
        return ServingChoice(None, False, why)
    btyd, scorer = serving.get("btyd"), serving.get("scorer")
    if btyd not in MODEL_NAMES or scorer not in (*MODEL_NAMES, vb.NAME):
        raise InputError(f"{path}: clv serving {scorer!r} / {btyd!r} is not one this project knows; rerun the backtest")
    if scorer != vb.NAME:
        return ServingChoice(btyd, False, f"backtest: {serving['reason']}")
    if not cfg.challenger.enabled:
        why = f"backtest: {serving['reason']}; but clv.challenger.enabled is false, so {btyd} values customers"
        return ServingChoice(btyd, False, why)
    return ServingChoice(btyd, True, f"backtest: {serving['reason']} ({btyd} gives P(alive) and expected purchases)")


def fit_value_model(
    features: Path, base: BaseConfig, fcfg: FeaturesConfig, ccfg: ChurnConfig, cfg: ClvConfig
) -> tuple[vb.ValueBooster, dict[str, Any]]:
    """The challenger trained as the backtest judged it: on the churn model's inputs at the production split's
    training cutoffs, stopped early on its validation cutoff (``pipeline.churn.training_rows``); with what it was
    trained on."""
    data = churn_stage.training_rows(features, base, fcfg, ccfg)
    booster = vb.ValueBooster(churn_stage.booster_settings(base, ccfg), cfg.challenger.tweedie_variance_power)
    booster.fit(
        data.train[data.columns],
        data.train[s.FUTURE_PURCHASES],
        data.train[s.FUTURE_SPEND],
        data.valid[data.columns],
        data.valid[s.FUTURE_PURCHASES],
        data.valid[s.FUTURE_SPEND],
    )
    trained = {
        "training_cutoffs": [str(c.date()) for c in data.split.training],
        "validation_cutoff": str(data.split.validation.date()),
        "training_rows": len(data.train),
        "validation_rows": len(data.valid),
        "best_iterations": booster.best_iterations_,
        "horizon_days": fcfg.horizon_days,
    }
    log.info(
        "CLV challenger (LightGBM) on %d rows of %d cutoffs to %s, stopped on %s: %s trees",
        len(data.train),
        len(data.split.training),
        data.split.training[-1].date(),
        trained["validation_cutoff"],
        " and ".join(f"{n} {k}" for k, n in booster.best_iterations_.items()),
    )
    return booster, trained


def calibrate(
    cal: pd.DataFrame, cutoff: dt.date, cfg: ClvConfig, settings: ValueSettings, *, prefer: str | None = None
) -> Calibration:
    """Fit and judge every candidate on the calibration rows; ``clv.model: auto`` keeps ``prefer`` (the backtest's
    choice) where it fitted, else the best by ``clv.selection_metric``."""
    _check_enough_history(cal, f"calibration cutoff {cutoff}")
    spend, left_out = fit_spend(cal, cfg.penalizer_ladder)
    names: tuple[ModelName, ...] = MODEL_NAMES if cfg.model == "auto" else (cfg.model,)
    candidates: dict[str, Candidate] = {}
    failed: dict[str, str] = {}
    for name in names:
        try:
            candidates[name] = evaluate_candidate(name, cal, spend, settings, cfg.penalizer_ladder)
        except ClvFitError as exc:
            if cfg.model != "auto":
                raise
            failed[name] = str(exc)
            log.warning("candidate %s left out: %s", name, exc)
    chosen = candidates[prefer] if prefer in candidates else choose(candidates, cfg.selection_metric)
    if prefer is not None and prefer not in candidates:
        log.warning("the backtest's choice %s did not fit at %s: %s values instead", prefer, cutoff, chosen.name)
    log.info(
        "calibration %s: chose %s (%s); %s = %.4g (%s)",
        cutoff,
        chosen.name,
        "the backtest's choice" if chosen.name == prefer else "the best there",
        cfg.selection_metric,
        chosen.metrics[cfg.selection_metric],
        ", ".join(f"{n} {c.metrics[cfg.selection_metric]:.4g}" for n, c in candidates.items()),
    )
    return Calibration(cutoff, candidates, failed, chosen, spend, left_out)


@dataclasses.dataclass(frozen=True)
class ServingFit:
    """The chosen model refitted on every customer's history up to ``end``, and its bootstrap replicates."""

    end: dt.date
    snapshot: pd.DataFrame
    purchases: PurchaseModel
    spend: SpendModel
    spend_left_out: int
    replicates: bootstrap.Replicates


def fit_as_of(transactions: Path, base: BaseConfig, cfg: ClvConfig, end: dt.date, model: ModelName) -> ServingFit:
    """Refit ``model`` and Gamma-Gamma on all history up to ``end`` (the BTYD columns alone, straight from the
    transactions: the fast path for tens of millions of customers), then on resamples of its customers."""
    sc = btyd_snapshot(transactions, base, end)
    _check_enough_history(sc, f"training date's history (up to {end})")
    f, r, t, m = _arrays(sc)
    hist = histories(f, r, t)
    purchases = PurchaseModel(model, cfg.penalizer_ladder).fit_histories(hist)
    spend, left_out = fit_spend(sc, cfg.penalizer_ladder)
    log.info("bootstrap: refitting on %d resamples of the customers for CLV intervals", cfg.bootstrap_samples)
    with Progress("clv: bootstrap refits", total=cfg.bootstrap_samples, unit="refits") as shown:
        replicates = bootstrap.refit_replicates(
            purchases,
            spend,
            f,
            r,
            t,
            m,
            usable_spend(f, m),
            samples=cfg.bootstrap_samples,
            seed=base.seed,
            map_fn=parallel.process_map(cfg.bootstrap_processes, len(hist)),
            on_replicate=shown.advance,
        )
    return ServingFit(end, sc, purchases, spend, left_out, replicates)


def model_document(
    base: BaseConfig,
    fcfg: FeaturesConfig,
    cfg: ClvConfig,
    calib: Calibration,
    fit: ServingFit,
    settings: ValueSettings,
    chosen_by: str = "",
    value_model: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """params.json: what a registered version holds (the calibration fits and the serving fit with its
    replicates, and why its model was chosen), all the score stage and the pyfunc need to value customers."""
    boot_params = pd.DataFrame([{**p.purchases, **p.spend} for p in fit.replicates.params])
    return finite_json(
        {
            "time_unit": base.time_unit,
            "trained_as_of": str(fit.end + dt.timedelta(days=1)),
            "chosen_by": chosen_by,
            # the challenger that sets the CLV and the value tiers where the backtest showed it ranks better
            "value_model": value_model,
            "calibration": {
                "cutoff": str(calib.cutoff),
                "horizon_days": fcfg.horizon_days,
                "candidates": {n: c.model.report().to_dict() for n, c in calib.candidates.items()},
                "failed_candidates": calib.failed,
                "gamma_gamma": calib.spend.report().to_dict(),
            },
            "scoring": {
                "cutoff": str(fit.end),
                "model": fit.purchases.model,
                "purchases": fit.purchases.report().to_dict(),
                "gamma_gamma": fit.spend.report().to_dict(),
                "settings": dataclasses.asdict(settings),
                "bootstrap": {
                    "samples": cfg.bootstrap_samples,
                    "failed": fit.replicates.failed,
                    "seed": base.seed,
                    "param_p05": boot_params.quantile(0.05).to_dict(),
                    "param_p95": boot_params.quantile(0.95).to_dict(),
                    "replicates": fit.replicates.to_dict(),
                },
            },
        }
    )


def stage_metrics(
    calib: Calibration, fit: ServingFit, judgement: registry.Judgement, cal: pd.DataFrame, settings: ValueSettings
) -> dict[str, Any]:
    repeat = fit.snapshot[s.FREQUENCY] > 0
    return round_metrics(
        {
            "chosen_model": calib.chosen.name,
            "model": calib.chosen.metrics,
            "candidates": {n: c.metrics for n, c in calib.candidates.items()},
            "baselines": {BASELINE: baseline_metrics(cal, settings)},
            "registry": judgement.as_dict(),
            "training": {
                "trained_as_of": str(fit.end + dt.timedelta(days=1)),
                "customers": len(fit.snapshot),
                "repeat_customer_share": float(repeat.mean()),
                "spend_left_out_repeat_buyers": fit.spend_left_out,
                "calibration_spend_left_out_repeat_buyers": calib.spend_left_out,
                "bootstrap_failed": fit.replicates.failed,
            },
        }
    )


def write_plots(
    out: Outputs,
    transactions: Path,
    base: BaseConfig,
    fcfg: FeaturesConfig,
    cal: pd.DataFrame,
    calib: Calibration,
    fit: ServingFit,
) -> None:
    """Data for DVC's plots, images for DVC and MLflow."""
    chosen = calib.chosen
    freq_table = by_frequency(cal, chosen.expected_purchases)
    cumulative = cumulative_tracking(transactions, base, calib.cutoff, fcfg.horizon_days, chosen.model, cal)
    deciles = decile_table(chosen.clv, chosen.expected_spend, cal[s.FUTURE_SPEND].to_numpy(np.float64))
    out.plots.mkdir(parents=True, exist_ok=True)
    write_csv(freq_table, out.plots / "by_frequency.csv")
    write_csv(cumulative, out.plots / "cumulative.csv")
    write_csv(deciles, out.plots / "deciles.csv")
    grid = p_alive_grid(fit.purchases, fit.snapshot)
    _render(out.figures, freq_table, cumulative, deciles, grid, calib.cutoff, chosen.name, base.time_unit)


def run(
    base: BaseConfig,
    fcfg: FeaturesConfig,
    cfg: ClvConfig,
    transactions: Path,
    features: Path,
    out: Outputs,
    *,
    source: str,
    as_of: dt.date | None = None,
    backtest: Path | None = None,
    churn: ChurnConfig | None = None,
    track: bool = True,
) -> dict[str, Any]:
    """Fit, evaluate and choose at the calibration cutoff (``clv.model: auto``: the ``backtest``'s choice),
    refit as of the training date ``as_of``, register; write the parameters, metrics and plots. Returns the
    metrics."""
    _check_columns(features)
    settings = value_settings(base, fcfg, cfg)
    cutoff = resolve_calibration(features, fcfg, cfg)
    cal = read_snapshot(features, fcfg, cutoff)
    choice = backtest_choice(backtest, cfg)
    calib = calibrate(cal, cutoff, cfg, settings, prefer=choice.btyd)
    chosen_by = choice.reason
    if choice.btyd is not None and calib.chosen.name != choice.btyd:
        chosen_by += f"; {choice.btyd} did not fit at the calibration cutoff: the best there by {cfg.selection_metric}"
    value_model: dict[str, Any] | None = None
    if choice.challenger:
        if churn is None:
            raise InputError("clv: the backtest chose the CLV challenger; it needs the churn section's settings")
        booster, how = fit_value_model(features, base, fcfg, churn, cfg)
        value_model = {**booster.to_dict(), "trained": how}
    fit = fit_as_of(transactions, base, cfg, history_end(transactions, base, fcfg, as_of), calib.chosen.model.model)
    doc = model_document(base, fcfg, cfg, calib, fit, settings, chosen_by, value_model)
    name = tracking.registered_name(cfg.registry.model_name, source)
    trained = fit.end + dt.timedelta(days=1)
    sha = gate.content_fingerprint(doc)
    judgement = (
        judge(cfg, calib.chosen, cal, cutoff, trained, settings, name, sha, base.seed)
        if track
        else registry.untracked(name)
    )
    write_json(doc, out.params_json)
    metrics = {
        **stage_metrics(calib, fit, judgement, cal, settings),
        "chosen_by": chosen_by,
        "value_model": {"name": vb.NAME, **value_model["trained"]} if value_model else None,
    }
    write_json(metrics, out.metrics)
    write_plots(out, transactions, base, fcfg, cal, calib, fit)
    if track:
        _track(
            base,
            fcfg,
            cfg,
            (transactions, features),
            out,
            metrics,
            fit.snapshot,
            judgement,
            source=source,
            holdout=cutoff,
        )
    log.info(
        "%s trained as of %s on %d customers; holdout %s purchases actual %.0f vs predicted %.0f",
        calib.chosen.name,
        trained,
        len(fit.snapshot),
        cutoff,
        calib.chosen.metrics["purchases_actual"],
        calib.chosen.metrics["purchases_predicted"],
    )
    return metrics


def _render(
    folder: Path,
    freq_table: pd.DataFrame,
    cumulative: pd.DataFrame,
    deciles: pd.DataFrame,
    grid: tuple[np.ndarray, np.ndarray, np.ndarray],
    cutoff: dt.date,
    model: str,
    unit: str,
) -> None:
    plots.bars(
        freq_table,
        "frequency",
        ["actual", "predicted"],
        title=f"Holdout purchases by calibration frequency ({model}, cutoff {cutoff})",
        xlabel=f"repeat purchases in calibration ({FREQUENCY_CAP} = {FREQUENCY_CAP}+)",
        ylabel="mean repeat purchases in holdout",
        path=folder / "by_frequency.png",
    )
    plots.lines(
        cumulative,
        "week",
        ["actual", "predicted"],
        title=f"Cumulative repeat purchases after {cutoff} ({model})",
        xlabel="weeks after the calibration cutoff",
        ylabel="cumulative repeat purchases",
        path=folder / "cumulative.png",
    )
    plots.bars(
        deciles,
        "decile",
        ["predicted", "actual"],
        title="Holdout spend by decile of predicted CLV",
        xlabel="decile (1 = highest predicted CLV)",
        ylabel="holdout spend",
        path=folder / "deciles.png",
    )
    values, freq, rec = grid
    plots.heatmap(
        values,
        x=freq,
        y=rec,
        title=f"P(alive) at the scoring cutoff for the oldest customers ({model})",
        xlabel="frequency (repeat purchase days)",
        ylabel=f"recency ({unit})",
        path=folder / "p_alive.png",
    )


def _track(
    base: BaseConfig,
    fcfg: FeaturesConfig,
    cfg: ClvConfig,
    inputs: tuple[Path, Path],
    out: Outputs,
    metrics: dict[str, Any],
    snapshot: pd.DataFrame,
    judgement: registry.Judgement,
    *,
    source: str,
    holdout: dt.date,
) -> None:
    params = {
        "clv": dataclasses.asdict(cfg),
        "base": {"time_unit": base.time_unit, "seed": base.seed},
        "features": {"horizon_days": fcfg.horizon_days},
        "train": {"as_of": metrics["training"]["trained_as_of"]},
    }
    transactions, features = inputs
    tags = {
        **tracking.data_fingerprint(transactions),
        "clv.chosen_model": str(metrics["chosen_model"]),
        "clv.chosen_by": str(metrics["chosen_by"])[:4000],
        "run.kind": "training",
        registry.TRAINED_AS_OF: str(metrics["training"]["trained_as_of"]),
    }
    with tracking.stage_run(
        base.mlflow_experiment,
        "clv",
        params,
        tags,
        inputs=[transactions, features],
        source=source,
        holdout=str(holdout),
    ):
        tracking.log_metrics({k: v for k, v in metrics.items() if k not in ("chosen_model", "chosen_by")})
        model = metrics["model"]
        tracking.log_key_figures({"clv": {"gini": model["gini"], "purchases_pct_error": model["purchases_pct_error"]}})
        tracking.log_artifacts({"clv": out.params_json, "plots": out.figures, "plot_data": out.plots})
        example = snapshot[[s.FREQUENCY, s.RECENCY, s.T, s.MONETARY_VALUE]].head(20).astype("float64")
        registry.record(judgement, tracking.log_clv_model(out.params_json, example))


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.input_file(p, "--transactions")
    cli.input_file(p, "--features")
    cli.output(p, "--artifacts", directory=True)
    cli.output(p, "--metrics")
    cli.output(p, "--plots", directory=True)
    cli.input_file(p, "--backtest", required=False, help="metrics/backtest.json: which CLV model serves")
    args = p.parse_args(argv)
    params = load_params(args.params)
    run(
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        section(params, "clv", ClvConfig),
        args.transactions,
        args.features,
        Outputs(artifacts=args.artifacts, metrics=args.metrics, plots=args.plots),
        source=ingest_source(params),
        as_of=training_as_of(params),
        backtest=args.backtest,
        churn=section(params, "churn", ChurnConfig),
    )


if __name__ == "__main__":
    cli.run(main)
