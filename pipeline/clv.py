"""Stage ``clv``: fit BTYD + Gamma-Gamma at the calibration cutoff, judge them on its horizon, refit and score.

1. At ``clv.calibration_cutoff`` (a training cutoff of the features table) every candidate purchase model and
   the Gamma-Gamma spend model are fitted and evaluated on the labelled horizon that follows
   (``features.horizon_days``), next to a naive baseline; ``clv.model: auto`` keeps the best candidate by
   ``clv.selection_metric``.
2. The chosen model is refitted on all history up to the scoring cutoff and scores every customer: P(alive),
   expected purchases over the horizon, expected order value, CLV (discounted profit over
   ``clv.clv_horizon_months``) with bootstrap 5th-95th percentiles, and a value tier.
3. Registry: every tracked run registers its model (``clv.registry.model_name``). The alias ``champion`` moves to
   it only if its ``clv.registry.metric`` beats the champion's on the same calibration holdout by
   ``min_improvement``; otherwise it is ``challenger`` and the champion's stored scoring parameters score the
   customers. The bootstrap band is then still this run's refit's (the parameter uncertainty of a fit on this
   history), widened to hold the champion's point value.
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
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import schemas as s
from features.behaviour import DAYS_PER_UNIT, btyd_summary, daily_repeat_purchases, purchase_days
from features.errors import InputError
from models import gate
from models.bootstrap import clv_band, refit_replicates
from models.clv_base import DAYS_PER_MONTH, MIN_CUSTOMERS_TO_FIT, MODEL_NAMES, ClvFitError, ModelName
from models.evaluation import better, decile_table, holdout_metrics, round_metrics
from models.histories import histories
from models.purchases import PurchaseModel, purchase_model_from_params
from models.spend import SpendModel, usable_spend
from models.value import ValueSettings, score, value_tiers
from pipeline import cli, plots, tracking
from pipeline.config import BaseConfig, ClvConfig, FeaturesConfig, ingest_source, load_params, section
from pipeline.engine import backend, open_transactions
from pipeline.io import finite_json, write_csv, write_json, write_table
from pipeline.parallel import process_map
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


def training_cutoffs(path: Path) -> list[dt.date]:
    """The labelled cutoffs present in the features table, in order."""
    table = pq.read_table(path, columns=[s.CUTOFF, s.IS_SCORING], filters=[(s.IS_SCORING, "=", False)])
    values = pc.unique(table[s.CUTOFF]).to_pylist()
    return sorted(pd.Timestamp(v).date() for v in values)


def read_snapshot(path: Path, *, scoring: bool, cutoff: dt.date | None = None) -> pd.DataFrame:
    """One snapshot of the features table: the scoring rows, or the training rows of ``cutoff``."""
    filters: list[tuple[str, str, Any]] = [(s.IS_SCORING, "=", scoring)]
    if cutoff is not None:
        filters.append((s.CUTOFF, "=", pd.Timestamp(cutoff)))
    frame = pq.read_table(path, columns=SNAPSHOT_COLUMNS, filters=filters).to_pandas()
    if frame.empty:
        what = "scoring rows" if scoring else f"training rows at cutoff {cutoff}"
        raise InputError(f"{path}: no {what}; rebuild it with the features stage")
    return frame.reset_index(drop=True)


def scoring_cutoff(path: Path) -> dt.date:
    """The features table's scoring cutoff (the last day of history before ``score.as_of``)."""
    values = pc.unique(pq.read_table(path, columns=[s.CUTOFF], filters=[(s.IS_SCORING, "=", True)])[s.CUTOFF])
    if len(values) != 1:
        raise InputError(f"{path}: {len(values)} scoring cutoffs, expected one; rebuild it with the features stage")
    return pd.Timestamp(values[0].as_py()).date()


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


def resolve_calibration(path: Path, cfg: ClvConfig) -> dt.date:
    cutoffs = training_cutoffs(path)
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
    scored = score(pm, spend.params_, f, r, t, m, settings)
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


def baseline_metrics(cal: pd.DataFrame, settings: ValueSettings) -> dict[str, Any]:
    """Each customer keeps their historical repeat-purchase and repeat-spend rate per unit of age, times the horizon."""
    f, _, t, m = _arrays(cal)
    age = np.where(t > 0, t, np.inf)  # first bought on the cutoff day: no rate observed yet
    purchases = f / age * settings.horizon_units
    spend = f * m / age * settings.horizon_units
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


# --- registry: the champion gate and the parameters that score -------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Serving:
    """The gate's decision for this run's CLV model, and the stored parameters that score instead (if any).

    ``spec`` is None when this run's refit scores; otherwise the ``scoring`` section of the champion's (or the
    pinned version's) params.json. ``version_tags`` go on this run's registered version.
    """

    model_name: str  # the registered model: ``<stage>.registry.model_name`` for this data source
    decision: gate.Decision | None
    spec: dict[str, Any] | None
    scored_with: dict[str, Any]
    version_tags: dict[str, str]
    reused: tracking.RegisteredVersion | None = None  # already holds this model and holdout: nothing to register


def version_params(version: tracking.RegisteredVersion) -> dict[str, Any]:
    """The params.json a registered CLV version was logged with (its calibration and scoring fits)."""
    with tempfile.TemporaryDirectory(prefix="clv-params-") as tmp:
        path = tracking.run_artifact(version.run_id, "clv/params.json", Path(tmp))
        doc: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return doc


def rescore_calibration(doc: dict[str, Any], cal: pd.DataFrame, settings: ValueSettings) -> dict[str, Any]:
    """A stored model's holdout metrics on this run's calibration rows: its calibration-period fit, no refit."""
    name = doc["scoring"]["model"]
    purchases = purchase_model_from_params(name, doc["calibration"]["candidates"][name]["params"])
    f, r, t, m = _arrays(cal)
    scored = score(purchases, doc["calibration"]["gamma_gamma"]["params"], f, r, t, m, settings)
    return holdout_metrics(
        scored["expected_purchases"],
        cal[s.FUTURE_PURCHASES].to_numpy(np.float64),
        scored["expected_purchases"] * scored["expected_order_value"],
        cal[s.FUTURE_SPEND].to_numpy(np.float64),
        scored["clv"],
    )


def champion_figure(
    version: tracking.RegisteredVersion,
    metric: str,
    cal: pd.DataFrame,
    cutoff: dt.date,
    holdout_sha: str,
    settings: ValueSettings,
) -> tuple[gate.ChampionFigure, dict[str, Any] | None]:
    """The champion's ``metric`` on this run's calibration holdout, and its params.json when it was fetched.

    Same rows and outcomes (equal fingerprints): its logged figure. Otherwise its calibration-period fit is applied
    to these rows, unless it was calibrated on a later cutoff (its fit then saw part of this holdout).
    """
    logged = version.tags.get(f"holdout.{metric}")
    if version.tags.get("holdout.sha") == holdout_sha and logged is not None:
        return gate.ChampionFigure(version.version, float(logged), how="same holdout, its logged figure"), None
    its_cutoff = version.tags.get("holdout.cutoff")
    if its_cutoff and dt.date.fromisoformat(its_cutoff) > cutoff:
        why = f"it was calibrated on {its_cutoff}, after this holdout's cutoff {cutoff}"
        return gate.ChampionFigure(version.version, None, why_not=why), None
    doc = version_params(version)
    value = float(rescore_calibration(doc, cal, settings)[metric])
    return gate.ChampionFigure(version.version, value, how="its calibration fit on these rows"), doc


def serving(
    cfg: ClvConfig,
    chosen: Candidate,
    cal: pd.DataFrame,
    cutoff: dt.date,
    scoring: dt.date,
    settings: ValueSettings,
    source: str,
    model_sha: str,
) -> Serving:
    """Judge this run's model against the registered champion; pick the parameters that score this week.

    This run's refit scores when it becomes champion. Otherwise the champion's stored scoring parameters do,
    unless they were fitted on history after this run's scoring date (a back-fill): then this run's refit scores,
    with a warning. ``clv.registry.score_version`` pins a version instead. ``model_sha`` fingerprints this run's
    params.json without ``scored_with``: a version holding the same, judged on the same holdout, is reused with
    its recorded decision while that decision stands (``gate.decision_stands``).
    """
    reg = cfg.registry
    name = tracking.registered_name(reg.model_name, source)
    holdout_sha = gate.holdout_fingerprint(
        cutoff,
        cal[s.CUSTOMER_ID],
        {s.FUTURE_PURCHASES: cal[s.FUTURE_PURCHASES], s.FUTURE_SPEND: cal[s.FUTURE_SPEND]},
    )
    tags = {
        "model.sha": model_sha,
        "holdout.sha": holdout_sha,
        "holdout.cutoff": str(cutoff),
        "scoring_cutoff": str(scoring),
        **{f"holdout.{k}": repr(float(v)) for k, v in chosen.metrics.items() if isinstance(v, int | float)},
    }
    current = tracking.registered_version(name, alias=gate.CHAMPION)
    # a rerun that fitted this very model: its version and recorded decision, unless the champion has moved since
    same = {"model.sha": model_sha, "holdout.sha": holdout_sha}
    standing = tracking.standing_version(name, same, current, reg.metric, reg.min_improvement)
    reused: tracking.RegisteredVersion | None = None
    doc: dict[str, Any] | None = None
    if standing:
        reused, decision = standing
        log.info("registry %s: v%s is this model on this holdout; its decision stands", name, reused.version)
    else:
        figure, doc = (
            champion_figure(current, reg.metric, cal, cutoff, holdout_sha, settings) if current else (None, None)
        )
        decision = gate.decide(reg.metric, reg.min_improvement, float(chosen.metrics[reg.metric]), figure)
        log.info("registry %s: this run's model becomes %s: %s", name, decision.alias, decision.reason)

    def too_late(version: tracking.RegisteredVersion) -> str | None:
        seen = version.tags.get("scoring_cutoff")
        if seen and dt.date.fromisoformat(seen) > scoring:
            return f"it was fitted on history up to {seen}, after this run's scoring cutoff {scoring}"
        return None

    if reg.score_version is not None:
        pinned = tracking.pinned_version(name, reg.score_version, "clv.registry.score_version")
        why = too_late(pinned)
        if why:
            raise InputError(f"clv.registry.score_version={reg.score_version} cannot score this run: {why}")
        spec = version_params(pinned)["scoring"]
        return Serving(name, decision, spec, {"source": "pinned", "version": pinned.version}, tags, reused)
    if decision.alias == gate.CHAMPION or current is None:  # reused as champion: it is the champion
        return Serving(name, decision, None, {"source": "this run", "version": None}, tags, reused)
    why = too_late(current)
    if why:
        log.warning("champion v%s cannot score this run (%s); this run's refit scores instead", current.version, why)
        scored_with = {"source": "this run", "version": None, "champion_unusable": why}
        return Serving(name, decision, None, scored_with, tags, reused)
    spec = (doc or version_params(current))["scoring"]
    return Serving(name, decision, spec, {"source": "champion", "version": current.version}, tags, reused)


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


def _repeat_corr(table: pd.DataFrame) -> float:
    """Pearson correlation of frequency and monetary value over the repeat buyers of the scored table.

    Taken on the table's own order (highest CLV first, then id), not the engine's: a float sum depends on the order
    it adds in, and the metric must not change from run to run.
    """
    repeat = table[table[s.FREQUENCY] > 0]
    return float(
        np.corrcoef(repeat[s.FREQUENCY].to_numpy(np.float64), repeat[s.MONETARY_VALUE].to_numpy(np.float64))[0, 1]
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
    clv: Path
    artifacts: Path
    metrics: Path
    plots: Path

    @property
    def params_json(self) -> Path:
        return self.artifacts / "params.json"

    @property
    def figures(self) -> Path:
        return self.artifacts / "plots"


def run(
    base: BaseConfig,
    fcfg: FeaturesConfig,
    cfg: ClvConfig,
    transactions: Path,
    features: Path,
    out: Outputs,
    *,
    source: str,
    track: bool = True,
) -> dict[str, Any]:
    """Fit, evaluate, choose, refit and score; write the table, parameters, metrics and plots; log to MLflow."""
    _check_columns(features)
    settings = value_settings(base, fcfg, cfg)
    ladder = cfg.penalizer_ladder
    unit = base.time_unit

    # 1. calibration: every candidate on the same spend model, judged on the labelled horizon
    cutoff = resolve_calibration(features, cfg)
    cal = read_snapshot(features, scoring=False, cutoff=cutoff)
    _check_enough_history(cal, f"calibration cutoff {cutoff}")
    spend_cal, spend_left_out_cal = fit_spend(cal, ladder)
    names: tuple[ModelName, ...] = MODEL_NAMES if cfg.model == "auto" else (cfg.model,)
    candidates: dict[str, Candidate] = {}
    failed: dict[str, str] = {}
    for name in names:
        try:
            candidates[name] = evaluate_candidate(name, cal, spend_cal, settings, ladder)
        except ClvFitError as exc:
            if cfg.model != "auto":
                raise
            failed[name] = str(exc)
            log.warning("candidate %s left out: %s", name, exc)
    chosen = choose(candidates, cfg.selection_metric)
    log.info(
        "calibration %s: chose %s by %s = %.4g (%s)",
        cutoff,
        chosen.name,
        cfg.selection_metric,
        chosen.metrics[cfg.selection_metric],
        ", ".join(f"{n} {c.metrics[cfg.selection_metric]:.4g}" for n, c in candidates.items()),
    )

    # 2. scoring: refit the chosen model on all history up to the scoring cutoff; the champion's stored
    #    parameters score instead when this run's model did not replace it
    #    (the BTYD columns alone, straight from the transactions: the fast path for tens of millions of customers)
    sc_cutoff = scoring_cutoff(features)
    sc = btyd_snapshot(transactions, base, sc_cutoff)
    _check_enough_history(sc, "scoring cutoff")
    f, r, t, m = _arrays(sc)
    hist = histories(f, r, t)
    purchases = PurchaseModel(chosen.model.model, ladder).fit_histories(hist)
    spend, spend_left_out = fit_spend(sc, ladder)
    log.info("bootstrap: refitting on %d resamples of the customers for CLV intervals", cfg.bootstrap_samples)
    with Progress("clv: bootstrap refits", total=cfg.bootstrap_samples, unit="refits") as shown:
        replicates = refit_replicates(
            purchases,
            spend,
            f,
            r,
            t,
            m,
            usable_spend(f, m),
            samples=cfg.bootstrap_samples,
            seed=base.seed,
            map_fn=process_map(cfg.bootstrap_processes, len(hist)),
            on_replicate=shown.advance,
        )
    band_low, band_high = clv_band(
        replicates,
        f,
        r,
        t,
        m,
        months=settings.months,
        discount_rate_monthly=settings.discount_rate_monthly,
        units_per_month=settings.units_per_month,
        margin_ratio=settings.margin_ratio,
    )

    # 3. parameters with uncertainty, for reviewers and for the pyfunc: the model a registered version holds
    boot_params = pd.DataFrame([{**rep.purchases, **rep.spend} for rep in replicates.params])
    model_doc = finite_json(
        {
            "time_unit": unit,
            "calibration": {
                "cutoff": str(cutoff),
                "horizon_days": fcfg.horizon_days,
                "candidates": {n: c.model.report().to_dict() for n, c in candidates.items()},
                "failed_candidates": failed,
                "gamma_gamma": spend_cal.report().to_dict(),
            },
            "scoring": {
                "cutoff": str(sc_cutoff),
                "model": purchases.model,
                "purchases": purchases.report().to_dict(),
                "gamma_gamma": spend.report().to_dict(),
                "settings": dataclasses.asdict(settings),
                "bootstrap": {
                    "samples": cfg.bootstrap_samples,
                    "failed": replicates.failed,
                    "seed": base.seed,
                    "param_p05": boot_params.quantile(0.05).to_dict(),
                    "param_p95": boot_params.quantile(0.95).to_dict(),
                    # every replicate's parameters: a later scoring run can compute the band without refitting
                    "replicates": replicates.to_dict(),
                },
            },
        }
    )
    if track:
        serve = serving(cfg, chosen, cal, cutoff, sc_cutoff, settings, source, gate.content_fingerprint(model_doc))
    else:
        registered = tracking.registered_name(cfg.registry.model_name, source)
        serve = Serving(registered, None, None, {"source": "this run", "version": None}, {})
    if serve.spec is None:
        scored = score(purchases, spend.params_, f, r, t, m, settings, customer_histories=hist)
    else:
        stored = purchase_model_from_params(serve.spec["model"], serve.spec["purchases"]["params"])
        scored = score(stored, serve.spec["gamma_gamma"]["params"], f, r, t, m, settings, customer_histories=hist)
    table = pd.DataFrame(
        {
            s.CUSTOMER_ID: sc[s.CUSTOMER_ID],
            s.CUTOFF: sc[s.CUTOFF],
            s.FREQUENCY: sc[s.FREQUENCY],
            s.RECENCY: r,
            s.T: t,
            s.MONETARY_VALUE: m,
            s.P_ALIVE: scored["p_alive"],
            s.EXPECTED_PURCHASES: scored["expected_purchases"],
            s.EXPECTED_ORDER_VALUE: scored["expected_order_value"],
            s.CLV: scored["clv"],
            # the point estimate can sit outside a skewed bootstrap band; widen the band to hold it
            s.CLV_P05: np.minimum(band_low, scored["clv"]),
            s.CLV_P95: np.maximum(band_high, scored["clv"]),
        }
    )
    if cfg.acquisition_cost is not None:
        table[s.CLV_NET] = table[s.CLV] - cfg.acquisition_cost
    q = cfg.value_tier_quantiles
    table[s.VALUE_TIER] = value_tiers(table[s.CLV].to_numpy(), high=q.high, mid=q.mid)
    # highest value first, ties by customer id: the same table whatever order the engine returned the rows in
    table = table.sort_values([s.CLV, s.CUSTOMER_ID], ascending=[False, True], kind="stable").reset_index(drop=True)
    write_table(table, out.clv, s.clv_schema(with_net=cfg.acquisition_cost is not None))

    params_doc = {"time_unit": unit, "scored_with": serve.scored_with}
    write_json(finite_json({**params_doc, **model_doc}), out.params_json)

    # 4. metrics
    repeat = sc[s.FREQUENCY] > 0
    tiers = table[s.VALUE_TIER].value_counts()
    metrics: dict[str, Any] = {
        "chosen_model": chosen.name,
        "model": chosen.metrics,
        "candidates": {n: c.metrics for n, c in candidates.items()},
        "baselines": {BASELINE: baseline_metrics(cal, settings)},
        "registry": {
            "model_name": serve.model_name,
            **(serve.decision.as_dict() if serve.decision else {"alias": None, "reason": "not tracked: no registry"}),
        },
        "scored_with": serve.scored_with,
        "scoring": {
            "customers": len(table),
            "clv_total": float(table[s.CLV].sum()),
            "clv_mean": float(table[s.CLV].mean()),
            "p_alive_mean": float(table[s.P_ALIVE].mean()),
            "expected_purchases_total": float(table[s.EXPECTED_PURCHASES].sum()),
            "repeat_customer_share": float(repeat.mean()),
            "spend_left_out_repeat_buyers": spend_left_out,
            "calibration_spend_left_out_repeat_buyers": spend_left_out_cal,
            "bootstrap_failed": replicates.failed,
            "frequency_monetary_corr": _repeat_corr(table) if repeat.sum() > 2 else None,
            "tier_customers": {tier: int(tiers.get(tier, 0)) for tier in s.VALUE_TIERS},
            "tier_clv_share": {
                tier: float(table.loc[table[s.VALUE_TIER] == tier, s.CLV].sum() / max(table[s.CLV].sum(), 1e-12))
                for tier in s.VALUE_TIERS
            },
        },
    }
    metrics = round_metrics(metrics)
    summary = metrics["scoring"]
    write_json(metrics, out.metrics)

    # 5. plots: data for DVC, images for DVC and MLflow
    freq_table = by_frequency(cal, chosen.expected_purchases)
    cumulative = cumulative_tracking(transactions, base, cutoff, fcfg.horizon_days, chosen.model, cal)
    deciles = decile_table(chosen.clv, chosen.expected_spend, cal[s.FUTURE_SPEND].to_numpy(np.float64))
    out.plots.mkdir(parents=True, exist_ok=True)
    write_csv(freq_table, out.plots / "by_frequency.csv")
    write_csv(cumulative, out.plots / "cumulative.csv")
    write_csv(deciles, out.plots / "deciles.csv")
    _render(out.figures, freq_table, cumulative, deciles, p_alive_grid(purchases, sc), cutoff, chosen.name, unit)

    if track:
        _track(base, fcfg, cfg, transactions, features, out, metrics, table, serve)
    log.info(
        "%d customers scored with %s: CLV total %.0f (tiers %s); holdout %s purchases actual %.0f vs predicted %.0f",
        len(table),
        chosen.name,
        summary["clv_total"],
        summary["tier_customers"],
        cutoff,
        chosen.metrics["purchases_actual"],
        chosen.metrics["purchases_predicted"],
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
    transactions: Path,
    features: Path,
    out: Outputs,
    metrics: dict[str, Any],
    table: pd.DataFrame,
    serve: Serving,
) -> None:
    params = {
        "clv": dataclasses.asdict(cfg),
        "base": {"time_unit": base.time_unit, "seed": base.seed},
        "features": {"horizon_days": fcfg.horizon_days},
    }
    tags = {**tracking.data_fingerprint(transactions), "clv.chosen_model": str(metrics["chosen_model"])}
    with tracking.stage_run(base.mlflow_experiment, "clv", params, tags, inputs=[transactions, features]):
        tracking.log_metrics({k: v for k, v in metrics.items() if k not in ("chosen_model", "scored_with")})
        tracking.log_artifacts({"clv": out.params_json, "plots": out.figures, "plot_data": out.plots})
        example = table[[s.FREQUENCY, s.RECENCY, s.T, s.MONETARY_VALUE]].head(20).astype("float64")
        uri = tracking.log_clv_model(out.params_json, example)
        if serve.decision is not None:
            tracking.register_decision(
                serve.model_name, uri, serve.decision, serve.version_tags, serve.scored_with["version"], serve.reused
            )


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.input_file(p, "--transactions")
    cli.input_file(p, "--features")
    cli.output(p, "--clv")
    cli.output(p, "--artifacts", directory=True)
    cli.output(p, "--metrics")
    cli.output(p, "--plots", directory=True)
    args = p.parse_args(argv)
    params = load_params(args.params)
    run(
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        section(params, "clv", ClvConfig),
        args.transactions,
        args.features,
        Outputs(clv=args.clv, artifacts=args.artifacts, metrics=args.metrics, plots=args.plots),
        source=ingest_source(params),
    )


if __name__ == "__main__":
    cli.run(main)
