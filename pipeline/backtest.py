"""Stage ``backtest``: every churn scorer judged at many evaluation origins, each trained as production would have.

At each of the latest ``backtest.origins`` labelled cutoffs of the features table (``models.backtest``), the churn
model is trained on what was fully observed by then, with the training stage's own code and settings: LightGBM
(``churn.lightgbm``) on the training cutoffs of the production split, early-stopped and calibrated on its
validation cutoff. Every candidate is then judged on the origin's customers over its horizon, which none of them
saw:

- ``model``: that LightGBM;
- ``btyd``: P(no purchase in the horizon) of a BG/NBD fitted on history up to the origin;
- ``recency`` (days since the last purchase) and ``rfm`` (the quintile score, reversed): the one-line rules.

The rules' probabilities come from a calibrator fitted on the same validation cutoff as the model's, as the score
stage serves them. Per origin and pooled over every origin: ROC-AUC, PR-AUC, top-decile lift, precision and recall
at ``churn.campaign_list_size``, Brier, log loss and ECE; for every pair of candidates the pooled paired gain with
its interval (customers resampled, ``backtest.evidence_resamples`` at ``backtest.evidence_level``) and the spread of
the per-origin gains.

Which scorer serves (``serving``): the model only when the lower bound of its pooled gain over the best rule in
``churn.registry.metric`` clears zero and ``churn.registry.min_improvement`` (the champion gate's rule), else that
rule. The score stage reads it (``score.churn_scorer: auto``).

CLV at the same origins (``clv``): every BTYD candidate fitted as ``train_clv`` calibrates on the history up to the
origin, the naive baseline, and the challenger (``models.value_booster``: LightGBM on the churn model's inputs,
trained on the origin's production split like the churn model), each judged on the origin's customers over its
horizon: purchases RMSE/MAE/total error, and how its value ranks the horizon's spend (Gini, Spearman, top-decile
capture), with every pair's paired gain. Which CLV values customers (``clv.serving``): the challenger only when its
pooled gain in ``clv.serving.metric`` over the best of the BTYD models and the naive baseline clears the gate's
bar, else the best BTYD model (``train_clv`` takes it with ``clv.model: auto``). Writes ``metrics/backtest.json``,
``plots/backtest/`` and an MLflow run. It runs when the training features change, never for a week that only
scores. Each cutoff keeps at most ``backtest.max_rows_per_cutoff`` customers (a seeded draw), which bounds its cost
at any size.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from features import schemas as s
from features.errors import InputError
from features.sampling import cutoff_seed
from models import backtest as bt
from models import churn as cm
from models import value_booster as vb
from models.clv_base import MODEL_NAMES, ClvFitError
from models.evaluation import churn_metrics, holdout_metrics, round_metrics
from pipeline import churn, cli, plots, tracking
from pipeline import clv as clv_stage
from pipeline.config import (
    MAX_DAYS,
    BacktestConfig,
    BaseConfig,
    ChurnConfig,
    ClvConfig,
    FeaturesConfig,
    ingest_source,
    load_params,
    section,
)
from pipeline.io import write_csv, write_json

log = logging.getLogger("backtest")

CANDIDATES = ("model", *churn.BASELINES)
PAIRED_METRICS = ("roc_auc", "pr_auc")  # the rankings a campaign list rests on; lift is reported per candidate
PLOTTED = ("roc_auc", "pr_auc", "top_decile_lift")
# CLV: purchases judged against the horizon's purchases, the value ranking (CLV; the naive baseline's spend)
# against the horizon's spend.
CLV_PURCHASE_METRICS = ("purchases_rmse", "purchases_mae")
CLV_VALUE_METRICS = ("gini", "spearman", "top_decile_capture")
CLV_PLOTTED = ("purchases_rmse", "gini")
NAIVE = "naive"
CLV_CANDIDATES = (*MODEL_NAMES, NAIVE, vb.NAME)  # the columns of the CLV plots, whichever were judged
CLV_DRAW = 2  # the CLV backtest's own random stream at a cutoff (features.sampling.cutoff_seed)


@dataclasses.dataclass(frozen=True)
class Outputs:
    metrics: Path
    plots: Path


@dataclasses.dataclass(frozen=True)
class Evaluated:
    """One origin: what it trained on, each candidate's probability of the origin's rows, and their metrics."""

    origin: bt.Origin
    scored: bt.Scored
    probabilities: dict[str, np.ndarray]
    metrics: dict[str, dict[str, float]]
    seconds: float


def backtest_rows(
    features: Path, base: BaseConfig, fcfg: FeaturesConfig, ccfg: ChurnConfig, bcfg: BacktestConfig
) -> tuple[list[bt.Origin], pd.DataFrame, list[str]]:
    """The origins, and one modelling table of every cutoff they need (BTYD, attribute and derived features as the
    training stage builds them), each cutoff capped at ``backtest.max_rows_per_cutoff``."""
    churn.check_features(features, fcfg)
    labelled, _ = churn.read_cutoffs(features, fcfg)
    origins = bt.evaluation_origins(labelled, fcfg.horizon_days, bcfg.origins)
    note = bt.too_few(origins, bcfg.origins, fcfg.horizon_days)
    if note:
        log.warning("%s", note)
    if not origins:
        return origins, pd.DataFrame(), []
    needed = sorted({c for o in origins for c in (o.cutoff, o.split.validation, *o.split.training)})
    capped = dataclasses.replace(ccfg, max_training_rows=bcfg.max_rows_per_cutoff * len(needed))
    tables, _ = churn.read_attributes(ccfg)
    table, _ = churn.modelling_table(features, needed, base, fcfg, capped, tables, training=needed)
    return origins, table, cm.feature_columns(table)


def rows_at(table: pd.DataFrame, cutoffs: Sequence[pd.Timestamp]) -> pd.DataFrame:
    return table[table[s.CUTOFF].isin(list(cutoffs)).to_numpy()]


def evaluate_origin(
    origin: bt.Origin,
    table: pd.DataFrame,
    columns: list[str],
    codes: pd.Series,
    base: BaseConfig,
    ccfg: ChurnConfig,
) -> Evaluated:
    """Train at ``origin`` as production would have, then score and judge every candidate on its rows."""
    started = time.perf_counter()
    split = origin.split
    valid = rows_at(table, [split.validation])
    data = churn.Training(
        split=split,
        train=rows_at(table, split.training),
        valid=valid,
        y_valid=valid[s.CHURNED].astype(bool).to_numpy(np.int64),
        columns=columns,
        fits=[],
        attributes={},
    )
    model = churn.fit(base, ccfg, data)
    test = rows_at(table, [origin.cutoff])
    y = test[s.CHURNED].astype(bool).to_numpy(np.int64)
    scores = {"model": model.raw_probability(test[columns])}
    probabilities = {"model": model.calibrator_.transform(scores["model"])}
    test_scores = churn.baseline_scores(test)
    for name, valid_score in churn.baseline_scores(valid).items():
        score = test_scores[name]
        if any(v is None or not np.all(np.isfinite(v)) for v in (valid_score, score)):
            log.warning("backtest %s: no %s scores (a BTYD fit failed); left out", origin.cutoff.date(), name)
            continue
        assert score is not None and valid_score is not None
        scores[name] = score
        # calibrated as the score stage serves a rule (pipeline.churn.fit_rules): on the validation cutoff
        rule = cm.RuleScorer.fit(name, valid, data.y_valid, model.calibration_method_)
        probabilities[name] = rule.calibrator_.transform(score)
    metrics = {n: churn_metrics(y, scores[n], probabilities[n], ccfg.campaign_list_size) for n in scores}
    scored = bt.Scored(truth=y.astype(np.float64), scores=scores, customers=codes.loc[test.index].to_numpy(np.int64))
    seconds = time.perf_counter() - started
    log.info(
        "origin %s: trained on %d cutoffs to %s, validated on %s; ROC-AUC %s (%.1f s)",
        origin.cutoff.date(),
        len(split.training),
        split.training[-1].date(),
        split.validation.date(),
        ", ".join(f"{n} {m['roc_auc']:.4f}" for n, m in metrics.items()),
        seconds,
    )
    return Evaluated(origin, scored, probabilities, metrics, seconds)


def paired_metrics(ccfg: ChurnConfig) -> tuple[str, ...]:
    """The metrics with pairwise intervals: ROC-AUC, PR-AUC and the champion gate's metric."""
    return tuple(dict.fromkeys((*PAIRED_METRICS, ccfg.registry.metric)))


def summary(
    results: list[Evaluated], bcfg: BacktestConfig, ccfg: ChurnConfig, base: BaseConfig, note: str | None
) -> dict[str, Any]:
    """Per origin, pooled, the pairwise paired differences (``models.backtest.differences``) and which scorer
    serves (``models.backtest.serving_choice``, by ``churn.registry``'s metric and minimum); with no origin, the
    ``note`` saying why, and the model serves for want of evidence."""
    metric, need = ccfg.registry.metric, ccfg.registry.min_improvement
    if not results:
        return {
            "origins": [],
            "note": note,
            "pooled": None,
            "left_out": {},
            "differences": {},
            "best_rule": None,
            "model_vs_best_rule": None,
            "serving": bt.unjudged(
                bt.MODEL, metric, need, f"no backtest origin ({note}): the model serves for want of evidence"
            ),
        }
    parts = [r.scored for r in results]
    everything = bt.pooled(parts)
    sizes = np.array([len(p.truth) for p in parts], dtype=np.float64)
    pooled_metrics = {  # each origin's figure weighted by its customers: origins are never ranked together
        n: {m: float(np.dot(sizes, [r.metrics[n][m] for r in results]) / sizes.sum()) for m in results[0].metrics[n]}
        for n in everything.scores
    }
    differences = {
        metric: bt.differences(
            metric,
            [bt.Scored(p.truth, {n: p.scores[n] for n in everything.scores}, p.customers) for p in parts],
            everything,
            resamples=bcfg.evidence_resamples,
            level=bcfg.evidence_level,
            seed=base.seed,
            max_rows=bcfg.evidence_max_rows,
        )
        for metric in paired_metrics(ccfg)
    }
    rules = [n for n in everything.scores if n != "model"]
    best_rule = max(rules, key=lambda n: pooled_metrics[n]["roc_auc"]) if rules else None
    serving = bt.serving_choice(metric, pooled_metrics, differences[metric], need)
    return {
        "origins": [{**r.origin.as_dict(), "customers": len(r.scored.truth), "metrics": r.metrics} for r in results],
        "note": note,
        "pooled": {"customers": len(everything.truth), "metrics": pooled_metrics},
        "left_out": bt.left_out(parts, [str(r.origin.cutoff.date()) for r in results]),
        "differences": differences,
        "best_rule": best_rule,
        "model_vs_best_rule": next(
            (d for d in differences["roc_auc"] if d["candidate"] == "model" and d["versus"] == best_rule), None
        ),
        "serving": serving,
    }


# --- CLV --------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClvEvaluated:
    """One origin for CLV: every BTYD candidate and the naive baseline fitted on the history up to it, their
    predictions of its horizon's purchases and their value rankings, with the metrics of each."""

    origin: pd.Timestamp
    ids: np.ndarray
    purchases: np.ndarray  # the horizon's purchases, per customer
    spend: np.ndarray  # the horizon's spend
    predicted: dict[str, np.ndarray]  # expected purchases
    value: dict[str, np.ndarray]  # what ranks customers: CLV, or the naive baseline's spend
    metrics: dict[str, dict[str, float]]
    chosen: str  # the candidate clv.selection_metric picks at this origin


def capped(frame: pd.DataFrame, cutoff: pd.Timestamp, cap: int, seed: int) -> pd.DataFrame:
    """A seeded draw of ``cap`` of one cutoff's customers past that many (the CLV backtest's own stream)."""
    if len(frame) > cap:
        rng = np.random.default_rng(cutoff_seed(seed, cutoff.date(), CLV_DRAW))
        frame = frame.take(np.sort(rng.choice(len(frame), cap, replace=False)))
    return frame.reset_index(drop=True)


def clv_rows(features: Path, fcfg: FeaturesConfig, cutoff: pd.Timestamp, cap: int, seed: int) -> pd.DataFrame:
    """One cutoff's customers of the features table with their BTYD summary and horizon labels, a seeded draw of
    ``cap`` past that many."""
    return capped(clv_stage.read_snapshot(features, fcfg, cutoff.date()), cutoff, cap, seed)


def clv_frame(
    cutoff: pd.Timestamp,
    features: Path,
    base: BaseConfig,
    fcfg: FeaturesConfig,
    ccfg: ChurnConfig,
    clv: ClvConfig,
    bcfg: BacktestConfig,
    tables: dict[str, pd.DataFrame],
) -> pd.DataFrame:
    """The customers every CLV candidate is judged on at ``cutoff``: all who had bought by then, as ``train_clv``
    calibrates on (a seeded draw past ``backtest.max_rows_per_cutoff``). With the challenger on, each row also
    carries the churn model's inputs (BTYD, attribute and derived features), without the churn population filter,
    so the challenger scores exactly the rows the BTYD models value."""
    if not clv.challenger.enabled:
        return clv_rows(features, fcfg, cutoff, bcfg.max_rows_per_cutoff, base.seed)
    everyone = dataclasses.replace(ccfg, population_lookback_days=MAX_DAYS)
    frame, _ = churn.modelling_table(features, [cutoff], base, fcfg, everyone, tables)
    return capped(frame, cutoff, bcfg.max_rows_per_cutoff, base.seed)


def fit_challenger(
    origin: bt.Origin, table: pd.DataFrame, columns: list[str], base: BaseConfig, ccfg: ChurnConfig, clv: ClvConfig
) -> vb.ValueBooster:
    """The CLV challenger trained at ``origin`` as the churn model is: on the production split's training
    cutoffs (the churn population), stopped early on its validation cutoff."""
    started = time.perf_counter()
    train, valid = rows_at(table, origin.split.training), rows_at(table, [origin.split.validation])
    booster = vb.ValueBooster(churn.booster_settings(base, ccfg), clv.challenger.tweedie_variance_power).fit(
        train[columns],
        train[s.FUTURE_PURCHASES],
        train[s.FUTURE_SPEND],
        valid[columns],
        valid[s.FUTURE_PURCHASES],
        valid[s.FUTURE_SPEND],
    )
    log.info(
        "clv challenger at %s: %s trees on %d rows (%.1f s)",
        origin.cutoff.date(),
        " and ".join(f"{n} {k}" for k, n in booster.best_iterations_.items()),
        len(train),
        time.perf_counter() - started,
    )
    return booster


def evaluate_clv_origin(
    cutoff: pd.Timestamp,
    cal: pd.DataFrame,
    base: BaseConfig,
    fcfg: FeaturesConfig,
    ccfg: ClvConfig,
    challenger: vb.ValueBooster | None = None,
) -> ClvEvaluated | None:
    """Fit every CLV candidate as the clv stage calibrates (``pipeline.clv.calibrate``) on the history up to
    ``cutoff`` and judge it, the naive baseline and the ``challenger`` (trained on earlier cutoffs) on the horizon
    after it; None (logged) when no BTYD candidate can be fitted."""
    settings = clv_stage.value_settings(base, fcfg, ccfg)
    try:
        fitted = clv_stage.calibrate(cal, cutoff.date(), ccfg, settings)
    except (InputError, ClvFitError) as exc:
        log.warning("backtest clv %s: no candidate fitted (%s); origin left out", cutoff.date(), exc)
        return None
    naive_purchases, naive_spend = clv_stage.naive_predictions(cal, settings)
    metrics = {n: c.metrics for n, c in fitted.candidates.items()}
    metrics[NAIVE] = clv_stage.baseline_metrics(cal, settings)
    predicted = {**{n: c.expected_purchases for n, c in fitted.candidates.items()}, NAIVE: naive_purchases}
    value = {**{n: c.clv for n, c in fitted.candidates.items()}, NAIVE: naive_spend}
    actual_purchases = cal[s.FUTURE_PURCHASES].to_numpy(np.float64)
    actual_spend = cal[s.FUTURE_SPEND].to_numpy(np.float64)
    if challenger is not None:
        purchases, spend = challenger.predict(cal)
        predicted[vb.NAME] = purchases
        value[vb.NAME] = vb.horizon_value(
            spend,
            horizon_days=fcfg.horizon_days,
            months=ccfg.clv_horizon_months,
            discount_rate_monthly=ccfg.discount_rate_monthly,
            margin_ratio=ccfg.margin_ratio,
        )
        metrics[vb.NAME] = holdout_metrics(purchases, actual_purchases, spend, actual_spend, value[vb.NAME])
    log.info(
        "clv origin %s: %s",
        cutoff.date(),
        ", ".join(f"{n} purchases RMSE {m['purchases_rmse']:.4f}, Gini {m['gini']:.4f}" for n, m in metrics.items()),
    )
    return ClvEvaluated(
        origin=cutoff,
        ids=cal[s.CUSTOMER_ID].to_numpy(dtype=object),
        purchases=actual_purchases,
        spend=actual_spend,
        predicted=predicted,
        value=value,
        metrics=metrics,
        chosen=fitted.chosen.name,
    )


def clv_summary(
    results: list[ClvEvaluated], bcfg: BacktestConfig, base: BaseConfig, clv: ClvConfig
) -> dict[str, Any] | None:
    """Per origin, pooled (each origin's figure weighted by its customers), every pair's paired gain in each CLV
    metric (customers resampled across origins) and which CLV serves (``clv_serving``); None with no origin."""
    if not results:
        return None
    codes = np.split(
        pd.factorize(np.concatenate([r.ids for r in results]))[0], np.cumsum([len(r.ids) for r in results])[:-1]
    )
    names = [n for n in results[0].metrics if all(n in r.metrics for r in results)]
    sizes = np.array([len(r.ids) for r in results], dtype=np.float64)
    pooled_metrics = {
        n: {m: float(np.dot(sizes, [r.metrics[n][m] for r in results]) / sizes.sum()) for m in results[0].metrics[n]}
        for n in names
    }
    for n in names:  # totals over every origin: what each candidate expected, and what happened
        for key in ("purchases_actual", "purchases_predicted", "spend_actual", "spend_predicted"):
            pooled_metrics[n][key] = float(sum(r.metrics[n][key] for r in results))
        actual = pooled_metrics[n]["purchases_actual"]
        pooled_metrics[n]["purchases_pct_error"] = 100.0 * (pooled_metrics[n]["purchases_predicted"] - actual) / actual

    def parts(truth: str, scores: str) -> list[bt.Scored]:
        return [
            bt.Scored(getattr(r, truth), {n: getattr(r, scores)[n] for n in names}, c)
            for r, c in zip(results, codes, strict=True)
        ]

    differences = {}
    for metrics, truth, scores in (
        (CLV_PURCHASE_METRICS, "purchases", "predicted"),
        (CLV_VALUE_METRICS, "spend", "value"),
    ):
        per_origin = parts(truth, scores)
        everything = bt.pooled(per_origin)
        for metric in metrics:
            differences[metric] = bt.differences(
                metric,
                per_origin,
                everything,
                resamples=bcfg.evidence_resamples,
                level=bcfg.evidence_level,
                seed=base.seed,
                max_rows=bcfg.evidence_max_rows,
            )
    return {
        "origins": [
            {"origin": str(r.origin.date()), "customers": len(r.ids), "chosen": r.chosen, "metrics": r.metrics}
            for r in results
        ],
        "pooled": {"customers": int(sizes.sum()), "metrics": pooled_metrics},
        "differences": differences,
        "best_by_gini": max(names, key=lambda n: pooled_metrics[n]["gini"]),
        "serving": clv_serving(clv, {n: pooled_metrics[n] for n in names}, differences),
    }


def clv_serving(
    clv: ClvConfig, pooled_metrics: dict[str, dict[str, float]], differences: dict[str, list[dict[str, Any]]]
) -> dict[str, object]:
    """Which CLV sets the value tiers and the CLV column (``train_clv`` serves it when ``clv.model`` is auto): the
    best of the BTYD models and the naive baseline by ``clv.serving.metric``, or the challenger where its pooled
    gain over that one clears the gate's bar. The naive baseline sets the bar but cannot serve (it has no P(alive)
    and no interval): where it ranks best, the best BTYD model serves and the reason says by how much."""
    metric, need = clv.serving.metric, clv.serving.min_improvement
    choice = bt.serving_choice(
        metric, pooled_metrics, differences[metric], need, challenger=vb.NAME, unservable=(NAIVE,)
    )
    btyd = [n for n in MODEL_NAMES if n in pooled_metrics]
    choice["btyd"] = max(btyd, key=lambda n: pooled_metrics[n][metric]) if btyd else None  # what values beside it
    if not clv.challenger.enabled:
        choice["reason"] = (
            f"{choice['scorer']} serves: the best BTYD model by pooled {metric} "
            f"({pooled_metrics[str(choice['scorer'])][metric]:.4f}); the challenger is off (clv.challenger.enabled)"
        )
    return choice


def write_plots(out: Outputs, results: list[Evaluated]) -> None:
    """One CSV per metric: a row per origin, a column per candidate (DVC plots), and the same as PNG."""
    out.plots.mkdir(parents=True, exist_ok=True)
    for metric in PLOTTED:
        frame = pd.DataFrame(
            [{"origin": str(r.origin.cutoff.date()), **{n: m[metric] for n, m in r.metrics.items()}} for r in results],
            columns=["origin", *CANDIDATES],
        )
        write_csv(frame, out.plots / f"churn_{metric}.csv")
        plots.lines(
            frame,
            "origin",
            [c for c in frame.columns if c != "origin"],
            title=f"Churn {metric} at each evaluation origin",
            xlabel="origin (the week scored)",
            ylabel=metric,
            path=out.plots / f"churn_{metric}.png",
        )


def write_clv_plots(out: Outputs, results: list[ClvEvaluated]) -> None:
    """``CLV_PLOTTED`` by origin, a column per candidate present at every origin (DVC plots), and as PNG."""
    names = [n for n in (results[0].metrics if results else {}) if all(n in r.metrics for r in results)]
    for metric in CLV_PLOTTED:
        frame = pd.DataFrame(  # a column per candidate the plots name; empty where one was not judged
            [{"origin": str(r.origin.date()), **{n: r.metrics[n][metric] for n in names}} for r in results],
            columns=["origin", *CLV_CANDIDATES, *(n for n in names if n not in CLV_CANDIDATES)],
        )
        write_csv(frame, out.plots / f"clv_{metric}.csv")
        plots.lines(
            frame,
            "origin",
            names,
            title=f"CLV {metric} at each evaluation origin",
            xlabel="origin (the week valued)",
            ylabel=metric,
            path=out.plots / f"clv_{metric}.png",
        )


def run(
    base: BaseConfig,
    fcfg: FeaturesConfig,
    ccfg: ChurnConfig,
    bcfg: BacktestConfig,
    features: Path,
    out: Outputs,
    *,
    clv: ClvConfig,
    track: bool = True,
    source: str | None = None,
) -> dict[str, Any]:
    """Train and judge at every origin, compare the candidates, write the metrics and plots. Returns the metrics.
    ``source`` (``ingest.source``) is recorded with the MLflow run, so runs of different logs are not compared."""
    started = time.perf_counter()
    origins, table, columns = backtest_rows(features, base, fcfg, ccfg, bcfg)
    codes = pd.Series(pd.factorize(table[s.CUSTOMER_ID])[0], index=table.index) if origins else pd.Series()
    results = [evaluate_origin(o, table, columns, codes, base, ccfg) for o in origins]
    on = clv.challenger.enabled
    challengers = [fit_challenger(o, table, columns, base, ccfg, clv) if on else None for o in origins]
    del table
    tables = churn.read_attributes(ccfg)[0] if origins and on else {}
    valued = []
    for o, challenger in zip(origins, challengers, strict=True):
        frame = clv_frame(o.cutoff, features, base, fcfg, ccfg, clv, bcfg, tables)
        if (v := evaluate_clv_origin(o.cutoff, frame, base, fcfg, clv, challenger)) is not None:
            valued.append(v)
    note = bt.too_few(origins, bcfg.origins, fcfg.horizon_days)
    metrics = round_metrics({**summary(results, bcfg, ccfg, base, note), "clv": clv_summary(valued, bcfg, base, clv)})
    write_json(metrics, out.metrics)
    write_plots(out, results)
    write_clv_plots(out, valued)
    if track:
        _track(base, fcfg, ccfg, clv, bcfg, features, out, metrics, source=source)
    log.info("%s (%.0f s)", headline(metrics), time.perf_counter() - started)
    return metrics


def headline(metrics: dict[str, Any]) -> str:
    """The churn model against the best rule, pooled over the origins, and the CLV candidates' Gini, in a line."""
    value = metrics.get("clv")
    ginis = (
        "; CLV pooled spend Gini "
        + ", ".join(f"{n} {m['gini']:.4f}" for n, m in value["pooled"]["metrics"].items())
        + f"; CLV: {value['serving']['reason']}"
        if value
        else ""
    )
    return churn_headline(metrics) + ginis


def churn_headline(metrics: dict[str, Any]) -> str:
    edge = metrics["model_vs_best_rule"]
    if edge is None:
        return f"{metrics['note'] or 'backtest: no rule to compare the model with'}; {metrics['serving']['reason']}"
    return (
        f"backtest over {len(metrics['origins'])} origins: model ROC-AUC minus {edge['versus']}'s "
        f"{edge['pooled_gain']:+.4f} [{edge['low']:+.4f}, {edge['high']:+.4f}], won {edge['origins_won']} of "
        f"{len(metrics['origins'])} origins: {edge['verdict']}; {metrics['serving']['reason']}"
    )


def _track(
    base: BaseConfig,
    fcfg: FeaturesConfig,
    ccfg: ChurnConfig,
    clv: ClvConfig,
    bcfg: BacktestConfig,
    features: Path,
    out: Outputs,
    metrics: dict[str, Any],
    *,
    source: str | None,
) -> None:
    params = {
        "backtest": dataclasses.asdict(bcfg),
        "churn": {
            "lightgbm": dataclasses.asdict(ccfg.lightgbm),
            "calibration": ccfg.calibration,
            "registry": {"metric": ccfg.registry.metric, "min_improvement": ccfg.registry.min_improvement},
        },
        "features": {"horizon_days": fcfg.horizon_days},
        "clv": {"serving": dataclasses.asdict(clv.serving), "challenger": dataclasses.asdict(clv.challenger)},
    }
    flat: dict[str, Any] = {"pooled": metrics["pooled"]["metrics"] if metrics["pooled"] else {}}
    value = metrics.get("clv") or {"pooled": {"metrics": {}}, "differences": {}}
    flat["clv_pooled"] = value["pooled"]["metrics"]
    for metric, rows in [*metrics["differences"].items(), *value["differences"].items()]:
        for d in rows:
            key = f"{d['candidate']}_vs_{d['versus']}"
            flat[f"gain/{metric}/{key}"] = {"pooled": d["pooled_gain"], "low": d["low"], "high": d["high"]}
    tags = {
        "run.kind": "backtest",
        "backtest.serving": str(metrics["serving"]["scorer"]),
        "backtest.serving_reason": str(metrics["serving"]["reason"])[:4000],
        **(
            {
                "backtest.clv_serving": str(value["serving"]["scorer"]),
                "backtest.clv_serving_reason": str(value["serving"]["reason"])[:4000],
            }
            if metrics.get("clv")
            else {}
        ),
    }
    with tracking.stage_run(base.mlflow_experiment, "backtest", params, tags, inputs=[features], source=source):
        tracking.log_metrics(flat)
        tracking.log_artifacts({"backtest": out.metrics, "plot_data": out.plots})


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.input_file(p, "--features")
    cli.output(p, "--metrics")
    cli.output(p, "--plots", directory=True)
    args = p.parse_args(argv)
    params = load_params(args.params)
    run(
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        section(params, "churn", ChurnConfig),
        section(params, "backtest", BacktestConfig),
        args.features,
        Outputs(metrics=args.metrics, plots=args.plots),
        clv=section(params, "clv", ClvConfig),
        source=ingest_source(params),
    )


if __name__ == "__main__":
    cli.run(main)
