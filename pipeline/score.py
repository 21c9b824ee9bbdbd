"""Stage ``score``: the week's batch scoring run. The serving models value and rank every customer as of
``score.as_of``; nothing is trained here.

1. The serving models (``pipeline.registry.serving``): the pinned version, else the champion, else the model
   the training stage left in the workspace; never one trained on history after the scoring date.
2. Value: CLV (discounted profit over ``clv.clv_horizon_months``), P(alive), expected purchases and order
   value for every customer of the snapshot, and the 5th-95th percentile CLV over the serving model's
   bootstrap replicates (``data/clv.parquet``).
3. Risk: the churn population's calibrated ``p_churn`` by the serving scorer (``score.churn_scorer``; with
   ``auto`` the backtest's choice: the model only where it beats the best rule with its gain shown, else that
   rule), with BG/NBD features fitted on this snapshot's history, as at every training cutoff, and value at risk =
   p_churn x CLV, computed once. The model's TreeSHAP reasons go to the first ``churn.max_explained_customers`` of
   the list by value at risk; a rule's reasons are its inputs in words, for everyone (``data/churn.parquet``).
4. Drift: the population stability index of every model feature and of ``p_churn`` between the latest labelled
   cutoff (the one the serving model was validated on) and this snapshot, each input weighted by its share of the
   model's attention (``data/drift.parquet``; ``models.monitoring`` judges which shifts count).
5. The scores table: risk tier, value x risk segment and its retention action from ``score.segments``, and the
   recent behaviour the KPIs need (revenue over the last ``features.horizon_days``, net of returns), sorted by
   value at risk (``data/scores.parquet``); KPIs overall and per segment (``data/segments.csv``,
   ``metrics/score.json``), and an MLflow run of kind ``scoring``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
from pandera.pandas import DataFrameSchema

from features import schemas as s
from features.behaviour import net_revenue
from features.errors import InputError
from models import bootstrap, monitoring
from models import churn as cm
from models import segments as seg
from models import value_booster as vb
from models.evaluation import round_metrics
from models.histories import histories
from models.purchases import purchase_model_from_params
from models.value import score as score_value
from models.value import value_tiers
from pipeline import churn as churn_stage
from pipeline import cli, registry, spark, tracking
from pipeline import clv as clv_stage
from pipeline.config import (
    MAX_DAYS,
    BaseConfig,
    ChurnConfig,
    ClvConfig,
    FeaturesConfig,
    ScoreConfig,
    ingest_source,
    load_params,
    section,
)
from pipeline.engine import backend, open_transactions
from pipeline.io import (
    finite_json,
    read_stage_json,
    read_table,
    without_unique,
    write_csv,
    write_frames,
    write_json,
    write_table,
)
from pipeline.progress import Progress
from pipeline.weeks import grid, iso_week

log = logging.getLogger("score")

SNAPSHOT_COLUMNS = [s.CUSTOMER_ID, s.CUTOFF, s.DAYS_SINCE_LAST_PURCHASE, s.TENURE_DAYS, s.PURCHASE_DAYS, s.TOTAL_SPEND]


@dataclasses.dataclass(frozen=True)
class Inputs:
    snapshot: Path
    features: Path  # the training features: its latest labelled (validation) cutoff is the drift reference
    transactions: Path
    clv_artifacts: Path
    churn_artifacts: Path
    backtest: Path  # metrics/backtest.json: which churn scorer serves when score.churn_scorer is auto


@dataclasses.dataclass(frozen=True)
class Outputs:
    clv: Path
    churn: Path
    drift: Path
    scores: Path
    metrics: Path
    segments: Path


@dataclasses.dataclass(frozen=True)
class Settings:
    """The params sections the score stage reads."""

    base: BaseConfig
    features: FeaturesConfig
    clv: ClvConfig
    churn: ChurnConfig
    score: ScoreConfig
    source: str


def _one_cutoff(frames: dict[str, pd.DataFrame]) -> pd.Timestamp:
    """The scoring cutoff all inputs share; an input from an older run names itself."""
    seen = {name: sorted({pd.Timestamp(v).date() for v in pd.unique(f[s.CUTOFF])}) for name, f in frames.items()}
    values = {tuple(v) for v in seen.values()}
    if len(values) != 1 or len(next(iter(values))) != 1:
        found = "; ".join(f"{n}: {', '.join(map(str, v))}" for n, v in seen.items())
        raise InputError(f"score: the inputs were scored at different cutoffs ({found}); rerun `dvc repro`")
    return pd.Timestamp(next(iter(values))[0])


def aligned(frames: dict[str, pd.DataFrame]) -> None:
    """Check that the frames hold the same customers in the same rows (the score stage joins by position)."""
    (first, reference), *others = frames.items()
    ids = reference[s.CUSTOMER_ID].reset_index(drop=True)
    for name, frame in others:
        if not frame[s.CUSTOMER_ID].reset_index(drop=True).equals(ids):
            raise InputError(
                f"score: the {name} rows are not the {first} rows in the same order; rerun `dvc repro` so every "
                "stage sees the same data"
            )


# What the scores table takes of the value table (and the net CLV when there is one).
VALUE_KEPT = (s.CLV, s.CLV_P05, s.CLV_P95, s.VALUE_TIER, s.P_ALIVE)

# Customers per chunk of the scores table: it is built and written a chunk at a time, in the list's order.
SCORES_CHUNK_ROWS = 1 << 20


def build_scores(
    churn: pd.DataFrame,
    value: pd.DataFrame,
    snapshot: pd.DataFrame,
    revenue: pd.DataFrame,
    cfg: ScoreConfig,
    *,
    horizon_days: int,
    ties: npt.ArrayLike | None = None,
) -> pd.DataFrame:
    """The scores table (``scores_schema`` columns, in the list's order) for the churn stage's population, whole:
    ``scores_in_chunks`` made into one frame."""
    parts = scores_in_chunks(churn, value, snapshot, revenue, cfg, horizon_days=horizon_days, ties=ties)
    return pd.concat(list(parts), ignore_index=True)


def scores_in_chunks(
    churn: pd.DataFrame,
    value: pd.DataFrame,
    snapshot: pd.DataFrame,
    revenue: pd.DataFrame,
    cfg: ScoreConfig,
    *,
    horizon_days: int,
    ties: npt.ArrayLike | None = None,
    chunk_rows: int | None = None,
) -> Iterator[pd.DataFrame]:
    """The scores table (``scores_schema`` columns) in chunks of ``chunk_rows`` (``SCORES_CHUNK_ROWS``) customers,
    in the list's order: the order is decided on the numbers of everyone first, then each chunk's rows are taken,
    so the whole table is never held.

    ``churn``, ``value`` and ``snapshot`` hold the same customers in the same rows (the population's); ``revenue``
    has a row for each customer who bought in the last horizon; ``ties`` are the rows' ``id_ranks`` if known.
    """
    cutoff = _one_cutoff({"churn": churn, "clv": value, "features": snapshot})
    aligned({"churn": churn, "clv": value, "scoring features": snapshot})
    value_cols = list(VALUE_KEPT)
    if s.CLV_NET in value:
        value_cols.append(s.CLV_NET)
    # the list's order first, from the numbers (models.segments.list_order), then every column taken once in it
    p, clv = churn[s.P_CHURN].to_numpy(np.float64), value[s.CLV].to_numpy(np.float64)
    order = seg.ranked([(p * clv, False), (p, False)], seg.id_ranks(churn[s.CUSTOMER_ID]) if ties is None else ties)
    kept = snapshot.columns.difference([s.CUSTOMER_ID, s.CUTOFF], sort=False)
    revenue_at = revenue_lookup(revenue)
    t = cfg.risk_tier_thresholds
    step = chunk_rows or SCORES_CHUNK_ROWS
    for start in range(0, max(len(order), 1), step):
        at = order[start : start + step]
        frame = pd.DataFrame(
            {
                **{c: churn[c].array.take(at) for c in (s.CUSTOMER_ID, s.P_CHURN, *s.REASONS)},
                **{c: value[c].array.take(at) for c in value_cols},
                **{c: snapshot[c].array.take(at) for c in kept},
            }
        )
        frame[s.REVENUE_LAST_HORIZON] = revenue_at(frame[s.CUSTOMER_ID])
        days_since = frame[s.DAYS_SINCE_LAST_PURCHASE].astype("int64")
        frame[s.LAST_PURCHASE_DATE] = cutoff - pd.to_timedelta(days_since, unit="D")
        # The last horizon is the `horizon_days` ending at the cutoff: customers who had bought before it started
        # are the retention base, and those with a purchase inside it were retained.
        frame[s.ACTIVE_AT_HORIZON_START] = frame[s.TENURE_DAYS].astype("int64") >= horizon_days
        frame[s.BOUGHT_IN_LAST_HORIZON] = days_since < horizon_days
        frame[s.AS_OF] = cutoff + pd.Timedelta(days=1)
        frame = seg.assign(frame, grid(cfg), high=t.high, medium=t.medium)
        yield frame[list(s.scores_schema(s.CLV_NET in frame).columns)]


def revenue_lookup(revenue: pd.DataFrame) -> Callable[[pd.Series], npt.NDArray[np.float64]]:
    """Each customer's revenue over the last horizon, net of returns (0 for a customer with no transaction in it),
    as a function of the customers' ids: the index over ``revenue`` is built once for every chunk."""
    index = pd.Index(revenue[s.CUSTOMER_ID])
    if not index.is_unique:
        raise InputError("score: the revenue of the last horizon has more than one row for a customer")
    amounts = revenue[s.REVENUE_LAST_HORIZON].to_numpy(np.float64)

    def of(ids: pd.Series) -> npt.NDArray[np.float64]:
        at = index.get_indexer(ids)
        out = np.zeros(len(ids), dtype=np.float64)
        out[at >= 0] = amounts[at[at >= 0]]
        return out

    return of


# --- inputs -----------------------------------------------------------------------------------------------------


# What the stage reads of the snapshot whatever serves: the ids, the values' inputs, the population filter, the
# BG/NBD histories, the sources of the derived and ranked features (``models.churn.add_derived``) and the scores
# table's columns. A scorer's own inputs come on top (``snapshot_columns``); the rest is never read: at 30M
# customers each column is a quarter of a gigabyte, held through the stage.
SNAPSHOT_READ = (
    *SNAPSHOT_COLUMNS,  # the scores table's
    s.IS_SCORING,
    *(s.FREQUENCY, s.RECENCY, s.T, s.MONETARY_VALUE),  # the values' and the BG/NBD features' inputs
    s.GAP_MEAN_DAYS,  # the overdue ratio's
)


def snapshot_columns(fcfg: FeaturesConfig, scorer: Scorer, *, challenger: bool) -> list[str]:
    """The snapshot columns the stage reads, in the file's order: ``SNAPSHOT_READ`` and the serving scorer's inputs
    that are snapshot columns (the others are made from these, or come from the attribute tables); with the CLV
    challenger serving, every feature (it reads the churn model's inputs of every customer)."""
    schema = s.feature_schema(fcfg.windows_days, fcfg.trend_window_days)
    wanted = set(SNAPSHOT_READ) | set(scorer.features_)
    return [c for c in schema.columns if c in wanted or (challenger and c not in s.LABELS)]


def scoring_cutoff(path: Path, fcfg: FeaturesConfig) -> pd.Timestamp:
    """The scoring snapshot's cutoff (two of its columns read), to find the serving models before the rest is read."""
    return read_snapshot(path, fcfg, columns=[s.CUTOFF, s.IS_SCORING])[1]


def read_snapshot(
    path: Path, fcfg: FeaturesConfig, *, columns: Sequence[str] | None = None
) -> tuple[pd.DataFrame, pd.Timestamp]:
    """The scoring snapshot (its ``columns``, else all), checked against the features schema, and its cutoff."""
    frame = read_table(path, s.feature_schema(fcfg.windows_days, fcfg.trend_window_days), columns=columns)
    cutoffs = pd.unique(frame[s.CUTOFF])
    if len(cutoffs) != 1 or not frame[s.IS_SCORING].all():
        raise InputError(f"{path}: not one scoring snapshot ({len(cutoffs)} cutoffs); rerun the snapshot stage")
    frame[s.CUTOFF] = frame[s.CUTOFF].astype("datetime64[us]")
    return frame, pd.Timestamp(cutoffs[0])


def read_json(path: Path, stage: str) -> dict[str, Any]:
    doc = read_stage_json(path, stage)
    if not isinstance(doc, dict) or "trained_as_of" not in doc:
        raise InputError(f"{path}: has no trained_as_of; rerun the {stage} stage")
    return doc


# --- the serving models -----------------------------------------------------------------------------------------


def _served(cfg: Settings, stage: str, trained_as_of: str, as_of: dt.date, track: bool) -> registry.Served:
    reg = cfg.clv.registry if stage == "clv" else cfg.churn.registry
    return registry.serving(
        tracking.registered_name(reg.model_name, cfg.source),
        pinned=reg.score_version,
        pin_key=f"{stage}.registry.score_version",
        scoring_as_of=as_of,
        workspace_as_of=dt.date.fromisoformat(trained_as_of),
        tracked=track,
    )


def serving_clv(cfg: Settings, inp: Inputs, as_of: dt.date, track: bool) -> tuple[dict[str, Any], registry.Served]:
    """The serving CLV model's params.json and where it came from."""
    local = read_json(inp.clv_artifacts / "params.json", "train_clv")
    served = _served(cfg, "clv", local["trained_as_of"], as_of, track)
    doc = clv_stage.version_params(served.version) if served.version else local
    if served.version is not None and "replicates" not in doc["scoring"].get("bootstrap", {}):
        # registered before training and scoring were separate stages: no replicates to draw its CLV band from
        note = f"v{served.version.version} holds no bootstrap replicates (registered before the score stage)"
        if dt.date.fromisoformat(local["trained_as_of"]) > as_of:
            raise InputError(
                f"{served.model_name} {note}, and the training run's model was trained after {as_of}; move the "
                "champion alias to a newer version (make ui) or set clv.registry.score_version"
            )
        log.warning("%s: %s; the training run's model scores instead", served.model_name, note)
        return local, registry.Served(served.model_name, None, "training run", note)
    if "replicates" not in doc["scoring"].get("bootstrap", {}):
        raise InputError(f"{inp.clv_artifacts / 'params.json'}: no bootstrap replicates; rerun the train_clv stage")
    return doc, served


Scorer = cm.ChurnModel | cm.RuleScorer
# Each cutoff's BG/NBD columns and fit, once computed (``churn_stage.modelling_table``)
BtydFits = dict[pd.Timestamp, tuple[pd.DataFrame, churn_stage.BtydFit]]


def chosen_scorer(cfg: ScoreConfig, backtest: Path) -> dict[str, Any]:
    """Which churn scorer ranks the list, and why: the one ``score.churn_scorer`` names, or with ``auto`` the
    backtest's choice (its ``serving`` block: the gate's rule applied to the pooled paired gain)."""
    if cfg.churn_scorer != "auto":
        return {"scorer": cfg.churn_scorer, "reason": f"score.churn_scorer is {cfg.churn_scorer}"}
    doc = read_stage_json(backtest, "backtest")
    try:
        choice = doc["serving"]
        scorer = choice["scorer"]
    except (KeyError, TypeError) as exc:
        raise InputError(f"{backtest}: no serving choice in it ({exc!r}); rerun the backtest stage") from exc
    if scorer not in ("model", *cm.RULES):
        raise InputError(f"{backtest}: serving scorer {scorer!r} is not one this project knows; rerun the backtest")
    return {**choice, "origins": len(doc.get("origins") or [])}


def serving_churn(
    cfg: Settings, inp: Inputs, as_of: dt.date, track: bool
) -> tuple[Scorer, registry.Served, dict[str, Any]]:
    """The serving churn scorer, where it came from and why it serves: the serving version's model, or the rule its
    training run calibrated, as ``chosen_scorer`` says."""
    card = read_json(inp.churn_artifacts / "model_card.json", "train_churn")
    served = _served(cfg, "churn", card["trained_as_of"], as_of, track)
    choice = chosen_scorer(cfg.score, inp.backtest)
    name = choice["scorer"]
    scorer: Scorer
    if name != "model":
        if served.version:
            scorer = churn_stage.load_version_rule(served.version, name)
        else:
            scorer = churn_stage.load_trained_rule(inp.churn_artifacts, name)
    elif served.version:
        scorer = churn_stage.load_version(served.version)
    else:
        scorer = churn_stage.load_trained(inp.churn_artifacts)
    return scorer, served, choice


# --- value ------------------------------------------------------------------------------------------------------


def value_table(
    snapshot: pd.DataFrame, doc: dict[str, Any], cfg: Settings, btyd_fits: BtydFits | None = None
) -> pd.DataFrame:
    """Every snapshot customer's value by the serving CLV model (``clv_schema`` columns, in the snapshot's rows).
    ``btyd_fits``: the snapshot's BG/NBD columns, shared with the churn population (``population_rows``)."""
    settings = clv_stage.value_settings(cfg.base, cfg.features, cfg.clv)
    spec = doc["scoring"]
    f, r, t, m = (snapshot[c].to_numpy(np.float64) for c in (s.FREQUENCY, s.RECENCY, s.T, s.MONETARY_VALUE))
    hist = histories(f, r, t)
    purchases = purchase_model_from_params(spec["model"], spec["purchases"]["params"])
    scored = score_value(purchases, spec["gamma_gamma"]["params"], f, r, t, m, settings, customer_histories=hist)
    low, high = bootstrap.clv_band(
        bootstrap.Replicates.from_dict(spec["bootstrap"]["replicates"]),
        f,
        r,
        t,
        m,
        months=settings.months,
        discount_rate_monthly=settings.discount_rate_monthly,
        units_per_month=settings.units_per_month,
        margin_ratio=settings.margin_ratio,
    )
    table = pd.DataFrame(
        {
            s.CUSTOMER_ID: snapshot[s.CUSTOMER_ID].array,
            s.CUTOFF: snapshot[s.CUTOFF].array,
            s.FREQUENCY: snapshot[s.FREQUENCY].to_numpy(),
            s.RECENCY: r,
            s.T: t,
            s.MONETARY_VALUE: m,
            s.P_ALIVE: scored["p_alive"],
            s.EXPECTED_PURCHASES: scored["expected_purchases"],
            s.EXPECTED_ORDER_VALUE: scored["expected_order_value"],
            s.CLV: scored["clv"],
            # the point estimate can sit outside a skewed bootstrap band; widen the band to hold it
            s.CLV_P05: np.minimum(low, scored["clv"]),
            s.CLV_P95: np.maximum(high, scored["clv"]),
        },
        copy=False,  # the arrays as they are, not consolidated into one block: a copy of them all at once
    )
    if doc.get("value_model"):
        table[s.CLV] = challenger_value(snapshot, doc["value_model"], cfg, btyd_fits)
        table[s.CLV_P05] = table[s.CLV_P95] = np.nan  # the challenger has no interval; the BTYD band is not its
    if cfg.clv.acquisition_cost is not None:
        table[s.CLV_NET] = table[s.CLV] - cfg.clv.acquisition_cost
    q = cfg.clv.value_tier_quantiles
    table[s.VALUE_TIER] = value_tiers(table[s.CLV].to_numpy(), high=q.high, mid=q.mid)
    return table


def unlike_backtest(cfg: ClvConfig, backtest: Path, model: str, served: registry.Served) -> str | None:
    """Why the serving CLV version values customers with another model than the backtest's choice, if it does.

    The CLV registry's gate judges the BTYD purchase model on the calibration holdout (``clv.registry``); a new
    version whose only change is the challenger joining or leaving is then no better there and stays
    ``challenger``, while the champion keeps serving."""
    if cfg.model != "auto" or served.version is None or not backtest.is_file():
        return None
    choice = ((read_stage_json(backtest, "backtest").get("clv") or {}).get("serving")) or {}
    wanted = choice.get("scorer")
    if wanted is None or wanted == model or (wanted == vb.NAME and not cfg.challenger.enabled):
        return None
    return (
        f"the backtest ranks {wanted} best to value customers, but the serving CLV version "
        f"v{served.version.version} ({served.source}) values them with {model}: the registry's gate judged the "
        f"new version's purchase model only; move the champion alias to it (make ui) or pin clv.registry.score_version"
    )


def challenger_value(
    snapshot: pd.DataFrame, doc: dict[str, Any], cfg: Settings, btyd_fits: BtydFits | None = None
) -> npt.NDArray[np.float64]:
    """The CLV challenger's value of every snapshot customer (``models.value_booster``): its predicted spend over
    the horizon it was trained on, carried over ``clv.clv_horizon_months``. It reads the churn model's inputs,
    built for every customer (no population filter), as the backtest judged it."""
    booster = vb.ValueBooster.from_dict(doc, "the serving CLV model's params.json")
    cutoff = _one_cutoff({"snapshot": snapshot})
    everyone = dataclasses.replace(cfg.churn, population_lookback_days=MAX_DAYS)
    tables, _ = churn_stage.read_attributes(cfg.churn)
    rows, _ = churn_stage.modelling_table(
        snapshot, [cutoff], cfg.base, cfg.features, everyone, tables, btyd_fits=btyd_fits
    )
    if not rows[s.CUSTOMER_ID].reset_index(drop=True).equals(snapshot[s.CUSTOMER_ID].reset_index(drop=True)):
        raise RuntimeError("score: the CLV challenger's rows are not the snapshot's in order")  # a bug here
    _, spend = booster.predict(rows)
    return vb.horizon_value(
        spend,
        horizon_days=int(doc["trained"]["horizon_days"]),
        months=cfg.clv.clv_horizon_months,
        discount_rate_monthly=cfg.clv.discount_rate_monthly,
        margin_ratio=cfg.clv.margin_ratio,
    )


def value_metrics(value: pd.DataFrame, order: npt.NDArray[np.int64]) -> dict[str, Any]:
    """The CLV summary, over the value table's rows in ``order`` (the written table's: highest CLV first)."""
    used = [s.FREQUENCY, s.MONETARY_VALUE, s.CLV, s.P_ALIVE, s.EXPECTED_PURCHASES, s.VALUE_TIER]
    table = pd.DataFrame({c: value[c].array.take(order) for c in used})
    repeat = table[table[s.FREQUENCY] > 0]
    tiers = table[s.VALUE_TIER].value_counts()
    total = float(table[s.CLV].sum())
    return {
        "customers": len(table),
        "clv_total": total,
        "clv_mean": float(table[s.CLV].mean()),
        "p_alive_mean": float(table[s.P_ALIVE].mean()),
        "expected_purchases_total": float(table[s.EXPECTED_PURCHASES].sum()),
        "repeat_customer_share": float(len(repeat) / max(len(table), 1)),
        # on the table's own order (highest CLV first, then id): a float sum depends on the order it adds in
        "frequency_monetary_corr": float(
            np.corrcoef(repeat[s.FREQUENCY].to_numpy(np.float64), repeat[s.MONETARY_VALUE].to_numpy(np.float64))[0, 1]
        )
        if len(repeat) > 2
        else None,
        "tier_customers": {tier: int(tiers.get(tier, 0)) for tier in s.VALUE_TIERS},
        "tier_clv_share": {
            tier: float(table.loc[table[s.VALUE_TIER] == tier, s.CLV].sum() / max(total, 1e-12))
            for tier in s.VALUE_TIERS
        },
    }


# --- risk and reasons -------------------------------------------------------------------------------------------

# Customers scored and explained per call: TreeSHAP's working memory stays bounded, and progress can be shown.
SCORE_CHUNK_ROWS = 100_000


def score_and_explain(
    base: BaseConfig, frame: pd.DataFrame, model: cm.ChurnModel, guide: cm.ReasonGuide, *, explain: bool
) -> pd.DataFrame:
    """``models.churn.score_customers`` over ``frame`` (the ids and at least the model's features), in ``frame``'s
    rows: on Spark's executors, or here in chunks, so that only a chunk's feature matrix is copied at a time."""
    if base.engine == "spark":  # TreeSHAP reasons are most of the time: spread them over the executors
        needed = frame[[s.CUSTOMER_ID, s.CUTOFF, *model.features_]]
        scored = spark.score_churn(base.spark, needed, model, guide, explain=explain)
        # the executors return rows in any order: back to frame's, which the stage joins by position
        at = pd.Index(scored[s.CUSTOMER_ID]).get_indexer(frame[s.CUSTOMER_ID])
        if len(scored) != len(frame) or (at < 0).any():
            raise RuntimeError("score: Spark returned other customers than it was given")
        return scored.take(at).reset_index(drop=True)
    what = "scored and explained" if explain else "scored"
    with Progress(f"score: customers {what}", total=len(frame), unit="rows") as shown:
        chunks = (frame.iloc[i : i + SCORE_CHUNK_ROWS] for i in range(0, len(frame), SCORE_CHUNK_ROWS))
        parts = [cm.score_customers(model, chunk, guide, explain=explain) for chunk in shown.each(chunks, len)]
    return pd.concat(parts, ignore_index=True)


def model_rows(
    features: pd.DataFrame | Path,
    cutoff: pd.Timestamp,
    cfg: Settings,
    model: Scorer,
    where: str,
    btyd_fits: BtydFits | None = None,
) -> pd.DataFrame:
    """One cutoff's churn population with every feature the model needs (BTYD, attributes, derived), from a
    loaded snapshot or a features file (of which the columns ``snapshot_columns`` names are read)."""
    tables, _ = churn_stage.read_attributes(cfg.churn)
    columns = snapshot_columns(cfg.features, model, challenger=False) if isinstance(features, Path) else None
    rows, _ = churn_stage.modelling_table(
        features, [cutoff], cfg.base, cfg.features, cfg.churn, tables, btyd_fits=btyd_fits, columns=columns
    )
    missing = [c for c in model.features_ if c not in rows.columns]
    if missing:
        raise InputError(f"score: the serving churn model needs feature(s) {missing[:5]} that the {where} lacks")
    return rows.reset_index(drop=True)


def population_rows(
    snapshot: pd.DataFrame, cutoff: pd.Timestamp, cfg: Settings, model: Scorer, btyd_fits: BtydFits | None = None
) -> tuple[pd.DataFrame, npt.NDArray[np.int64]]:
    """The churn population's modelling rows, and where each sits in the snapshot (the population is the
    snapshot's rows within ``churn.population_lookback_days``, in the snapshot's order)."""
    rows = model_rows(snapshot, cutoff, cfg, model, "scoring snapshot", btyd_fits)
    at = np.flatnonzero(cm.in_population(snapshot, cfg.churn.population_lookback_days))
    ids = snapshot[s.CUSTOMER_ID].take(at).reset_index(drop=True)  # Arrow text compared as such, not as objects
    if not rows[s.CUSTOMER_ID].reset_index(drop=True).equals(ids):
        raise RuntimeError("score: the churn population's rows are not the snapshot's in order")  # a bug here
    return rows, at


def rule_table(population: pd.DataFrame, rule: cm.RuleScorer, guide: cm.ReasonGuide) -> pd.DataFrame:
    """A rule's p_churn for the whole population at once (RFM's quintiles are the population's), and its reasons."""
    p_churn = rule.predict_proba(population)
    reasons = rule.reasons(population, guide, p_churn)
    # one frame over the arrays as they are (copy=False): a concatenation would copy every column once more, a
    # gigabyte per column and a half at 30M customers
    return pd.DataFrame(
        {
            s.CUSTOMER_ID: population[s.CUSTOMER_ID].array,
            s.CUTOFF: population[s.CUTOFF].array,
            s.P_CHURN: p_churn,
            s.P_CHURN_RAW: rule.raw_probability(population),
            # as object Series: an object array would be inferred as text, a copy of its text in each row
            **{name: reasons[name].reset_index(drop=True) for name in s.REASONS},
        },
        copy=False,
    )


def reason_guide(
    cfg: Settings, typical: tuple[dict[str, float], dict[str, float]], scorer: Scorer, where: str
) -> cm.ReasonGuide:
    """What the reasons compare with (the training stage's typical values, ``typical``: the medians of those who
    stayed and of those who churned) and how they print: ``base.currency``, the horizon, the medium risk tier."""
    guide = cm.ReasonGuide(
        typical=typical[0],
        churned=typical[1],
        medium_risk=cfg.score.risk_tier_thresholds.medium,
        currency=cfg.base.currency,
        horizon_days=cfg.features.horizon_days,
    )
    guide.check(scorer.features_, where)
    return guide


def serving_typical(
    inp: Inputs, served: registry.Served, as_of: dt.date
) -> tuple[tuple[dict[str, float], dict[str, float]], str]:
    """The typical values stored with the serving churn scorer, and where they came from: the registered version's
    own, else (a version registered before they were stored) the training run's in the workspace, unless that run
    saw labels after the scoring date."""
    if served.version is not None:
        own = churn_stage.load_version_typical(served.version)
        if own is not None:
            return own, f"churn v{served.version.version}, churn/{churn_stage.TYPICAL}"
    card = read_json(inp.churn_artifacts / "model_card.json", "train_churn")
    if served.version is not None and dt.date.fromisoformat(card["trained_as_of"]) > as_of:
        raise InputError(
            f"{served.model_name} v{served.version.version} has no typical values for its reasons (registered before "
            f"they were stored), and the training run's are from after {as_of}; move the champion alias to a newer "
            "version (make ui) or set churn.registry.score_version"
        )
    if served.version is not None:
        log.info("churn v%s stores no typical values: the reasons use the training run's", served.version.version)
    return churn_stage.load_trained_typical(inp.churn_artifacts), str(inp.churn_artifacts / churn_stage.TYPICAL)


def risk_table(
    population: pd.DataFrame,
    clv: npt.ArrayLike,
    model: Scorer,
    cfg: Settings,
    *,
    ties: npt.ArrayLike,
    guide: cm.ReasonGuide,
) -> pd.DataFrame:
    """p_churn for the population (``churn_schema`` columns, in the population's rows), and reasons for the first
    ``churn.max_explained_customers`` of the list by value at risk (p_churn x ``clv``, each customer's CLV; ties
    by p_churn, then by ``ties``, the rows' ``id_ranks``: the list's own order, ``models.segments.list_order``).
    A rule serving gives every customer its reasons: they are its inputs in words, at no cost. ``guide`` holds the
    typical values they compare with (``reason_guide``)."""
    if population.empty:
        raise InputError(
            f"score: no customer bought within {cfg.churn.population_lookback_days} days of the scoring cutoff; "
            "raise churn.population_lookback_days"
        )
    clv = np.asarray(clv, dtype=np.float64)
    if len(clv) != len(population):
        raise ValueError(f"risk_table: {len(clv)} CLV values for {len(population)} customers")
    if isinstance(model, cm.RuleScorer):
        return rule_table(population, model, guide)
    cap = cfg.churn.max_explained_customers
    scored = score_and_explain(cfg.base, population, model, guide, explain=len(population) <= cap)
    if len(population) > cap:
        p = scored[s.P_CHURN].to_numpy(np.float64)
        head = np.sort(seg.ranked([(p * clv, False), (p, False)], ties)[:cap])
        explained = score_and_explain(cfg.base, population.iloc[head], model, guide, explain=True)
        where = np.full(len(scored), len(head))  # everyone else: the missing value after the head's reasons
        where[head] = np.arange(len(head))
        for name in s.REASONS:
            texts = pa.array([*explained[name].to_numpy(dtype=object), None], type=pa.string(), from_pandas=True)
            scored[name] = texts.take(pa.array(where)).to_pandas()
        log.info("reasons for the first %d customers of the list by value at risk (of %d)", cap, len(scored))
    return scored


def attention(model: Scorer, reference: pd.DataFrame, cfg: Settings) -> dict[str, float]:
    """Each input's share of the serving scorer's attention, the weights of the drift verdict: the model's mean
    |TreeSHAP contribution| over a seeded draw of ``churn.importance_rows`` reference customers (its training
    stage's measure, on the population drift is measured against), or equal shares of a rule's inputs."""
    columns = list(model.features_)
    if isinstance(model, cm.RuleScorer):
        return dict.fromkeys(columns, 1.0 / len(columns))
    rows = reference[columns]
    if len(rows) > cfg.churn.importance_rows:
        rows = rows.sample(n=cfg.churn.importance_rows, random_state=np.random.default_rng(cfg.base.seed))
    shares = model.importance(rows)
    return dict(zip(shares["feature"], shares["share"].astype(float), strict=True))


def drift_table(
    model: Scorer,
    reference: pd.DataFrame,
    population: pd.DataFrame,
    cur_p: npt.NDArray[np.float64],
    bins: int,
    weights: dict[str, float],
) -> pd.DataFrame:
    """PSI of ``p_churn`` (``cur_p``, in the population's row order) and of each of the scorer's inputs, the
    reference cutoff's population against this week's, with each input's ``weights`` (``attention``)."""
    columns = list(model.features_)
    ref_p = model.predict_proba(reference[columns])
    ref = reference[columns].assign(**{s.P_CHURN: ref_p})
    cur = population[columns].assign(**{s.P_CHURN: cur_p})
    return monitoring.drift_table(ref, cur, [s.P_CHURN, *columns], bins, weights)


def reference_cutoff(features: Path, fcfg: FeaturesConfig) -> pd.Timestamp:
    """The cutoff this week's customers are compared with: the latest labelled one, the training stage's
    validation cutoff.

    It is the population the serving model was validated on: early stopping, the calibration of p_churn and the
    holdout metrics were all fitted and measured there, so it is the latest population whose scores are known to
    mean what they say. It is also the nearest one to the scoring week with its outcomes observed: a training
    cutoff lies at least another horizon back, and comparing with it makes every week look drifted by the months
    between (on CDNOW the last training cutoff 1997-12-10 put the spend of the last 365 days at PSI 1.68 against
    1998-06-30; the validation cutoff 1998-04-01 puts it at 0.01)."""
    labelled, _ = churn_stage.read_cutoffs(features, fcfg)
    return cm.split_cutoffs(labelled, fcfg.horizon_days).validation


# What the stage reads of the scores table once it is written: the segments' KPIs, the metrics, the log line.
SCORES_KEPT = (s.CUSTOMER_ID, s.RISK_TIER, *seg.KPI_INPUTS)


def write_scores(chunks: Iterator[pd.DataFrame], path: Path, schema: DataFrameSchema) -> pd.DataFrame:
    """Write the scores table chunk by chunk, each validated against ``schema`` (the ids are unique already: they
    are the churn table's, checked when it was written), and return the columns the stage reads later
    (``SCORES_KEPT``), in the list's order."""
    kept: list[pd.DataFrame] = []

    def written() -> Iterator[pd.DataFrame]:
        for chunk in chunks:
            kept.append(chunk[list(SCORES_KEPT)].copy())  # its own arrays: the rest of the chunk is freed
            yield chunk

    write_frames(written(), path, without_unique(schema))
    return pd.concat(kept, ignore_index=True)


# --- the stage --------------------------------------------------------------------------------------------------


def run(cfg: Settings, inp: Inputs, out: Outputs, *, track: bool = True) -> dict[str, Any]:
    """Score, value, segment and write the week's tables; returns the metrics."""
    as_of = (scoring_cutoff(inp.snapshot, cfg.features) + pd.Timedelta(days=1)).date()
    clv_doc, clv_served = serving_clv(cfg, inp, as_of, track)
    model, churn_served, choice = serving_churn(cfg, inp, as_of, track)
    columns = snapshot_columns(cfg.features, model, challenger=bool(clv_doc.get("value_model")))
    snapshot, cutoff = read_snapshot(inp.snapshot, cfg.features, columns=columns)
    ties = seg.id_ranks(snapshot[s.CUSTOMER_ID])  # every table is the snapshot's rows: joined by position
    btyd_fits: BtydFits = {}  # the snapshot's BG/NBD fit, made once for the CLV challenger and the churn population
    value = value_table(snapshot, clv_doc, cfg, btyd_fits)
    by_value = seg.sort_order(value, [(s.CLV, False)], ties=ties)  # highest value first, then by id
    write_table(value, out.clv, s.clv_schema(with_net=cfg.clv.acquisition_cost is not None), order=by_value)
    value_summary = value_metrics(value, by_value)
    value = value[[s.CUSTOMER_ID, s.CUTOFF, *VALUE_KEPT, *([s.CLV_NET] if s.CLV_NET in value else [])]]

    population, at = population_rows(snapshot, cutoff, cfg, model, btyd_fits)
    del snapshot, btyd_fits  # from here on the population's rows: at 30M customers each column is 240 MB
    # what the scorer, the drift and the scores table read of the population; the other columns are freed
    population = population[list(dict.fromkeys([*SNAPSHOT_COLUMNS, *model.features_]))]
    kept = population[SNAPSHOT_COLUMNS]
    typical, where = serving_typical(inp, churn_served, as_of)
    guide = reason_guide(cfg, typical, model, where)
    churned = risk_table(population, value[s.CLV].to_numpy()[at], model, cfg, ties=ties[at], guide=guide)
    riskiest = seg.sort_order(churned, [(s.P_CHURN, False)], ties=ties[at])
    write_table(churned, out.churn, s.churn_schema(), order=riskiest)
    ref_cutoff = reference_cutoff(inp.features, cfg.features)
    reference = model_rows(inp.features, ref_cutoff, cfg, model, "training features")
    cur_p = churned[s.P_CHURN].to_numpy(np.float64)
    drift = drift_table(model, reference, population, cur_p, cfg.churn.drift_bins, attention(model, reference, cfg))
    drift["reference_cutoff"], drift["scoring_cutoff"] = ref_cutoff, cutoff
    write_table(drift, out.drift, s.drift_schema())
    del population, reference  # the model's inputs are not needed for the scores table

    start = cutoff.date() - dt.timedelta(days=cfg.features.horizon_days)
    revenue = net_revenue(open_transactions(backend(cfg.base), inp.transactions), start, cutoff.date()).to_pandas()
    chunks = scores_in_chunks(
        churned, value.take(at), kept, revenue, cfg.score, horizon_days=cfg.features.horizon_days, ties=ties[at]
    )
    scores = write_scores(chunks, out.scores, s.scores_schema(cfg.clv.acquisition_cost is not None))
    del value, kept, revenue
    churned = churned[[s.P_CHURN, s.REASONS[0]]]  # all the metrics read of it; the reasons are in the scores
    kpis = seg.kpi_table(scores, seg.segment_order(grid(cfg.score)), margin_ratio=cfg.clv.margin_ratio)
    write_csv(seg.for_csv(kpis), out.segments, undefined_allowed=seg.KPI_COLUMNS)

    metrics = score_metrics(cfg, as_of, scores, kpis, value_summary, churned, drift)
    clv_model = {
        "model": vb.NAME if clv_doc.get("value_model") else clv_doc["scoring"]["model"],
        "btyd": clv_doc["scoring"]["model"],  # P(alive), expected purchases and order value
        "chosen_by": clv_doc.get("chosen_by", ""),
    }
    unlike = unlike_backtest(cfg.clv, inp.backtest, str(clv_model["model"]), clv_served)
    if unlike:
        log.warning("%s", unlike)
        clv_model["note"] = unlike
    metrics["served"] = {
        "clv": {**clv_served.as_dict(), **clv_model},
        "churn": {**churn_served.as_dict(), "scorer": choice},
    }
    metrics["value"]["trained_as_of"] = clv_doc["trained_as_of"]
    metrics = finite_json(round_metrics(metrics))
    write_json(metrics, out.metrics)
    if track:
        _track(cfg, inp, out, metrics)
    top = scores.iloc[0] if len(scores) else None  # the list's first customer
    log.info(
        "%d customers scored as of %s (%s) with clv %s and churn %s: value at risk %.0f, %d in the high risk tier%s",
        len(scores),
        as_of,
        metrics["week"],
        _named(clv_served),
        f"{_named(churn_served)}, scorer {choice['scorer']} ({choice['reason']})",
        metrics["overall"]["value_at_risk"],
        metrics["risk_tiers"]["high"],
        f"; first on the list: {top[s.CUSTOMER_ID]} ({top[s.SEGMENT]})" if top is not None else "",
    )
    return metrics


def _named(served: registry.Served) -> str:
    return f"v{served.version.version} ({served.source})" if served.version else f"the {served.source}'s model"


def score_metrics(
    cfg: Settings,
    as_of: dt.date,
    scores: pd.DataFrame,
    kpis: pd.DataFrame,
    value: dict[str, Any],
    churned: pd.DataFrame,
    drift: pd.DataFrame,
) -> dict[str, Any]:
    overall = kpis[kpis[s.SEGMENT] == seg.ALL].iloc[0]
    p_churn = churned[s.P_CHURN].to_numpy(np.float64)
    judged = monitoring.verdict(drift, cfg.score.drift_warning_psi)
    return {
        "as_of": str(as_of),
        "week": iso_week(as_of),
        "horizon_days": cfg.features.horizon_days,
        "overall": {k: float(overall[k]) for k in seg.KPI_COLUMNS},
        "risk_tiers": {r: int((scores[s.RISK_TIER] == r).sum()) for r in seg.RISK_TIERS},
        # keyed by tiers, not by name: MLflow metric keys cannot hold the commas of "high value, at risk"
        "segments": {
            f"{v}_value_{r}_risk": {
                "name": name,
                "customers": int(row["customers"]),
                "value_at_risk": float(row["value_at_risk"]),
                "churn_rate": float(row["churn_rate"]),
            }
            for (v, r), (name, _) in grid(cfg.score).items()
            for row in [kpis[kpis[s.SEGMENT] == name].iloc[0]]
        },
        "value": value,
        "risk": {
            "customers": len(churned),
            "customers_explained": int(churned[s.REASONS[0]].notna().sum()),
            "p_churn_mean": float(p_churn.mean()),
            "expected_churners": float(p_churn.sum()),
            "customers_at_p_churn_0_5_or_more": int((p_churn >= 0.5).sum()),
        },
        "drift": {
            "reference_cutoff": str(pd.Timestamp(drift["reference_cutoff"].iloc[0]).date()),
            "p_churn_psi": float(drift.loc[drift[s.DRIFT_FEATURE] == s.P_CHURN, s.PSI].iloc[0]),
            "max_feature_psi": float(drift.loc[drift[s.DRIFT_FEATURE] != s.P_CHURN, s.PSI].max()),
            # the summary's banner: the weighted mean PSI of the judged inputs, and its decision
            "weighted_input_psi": judged.input_psi,
            "warning": judged.shifted,
        },
    }


def _track(cfg: Settings, inp: Inputs, out: Outputs, metrics: dict[str, Any]) -> None:
    served = metrics["served"]
    tags = {
        **tracking.data_fingerprint(inp.snapshot),
        "run.kind": "scoring",
        "score.as_of": metrics["as_of"],
        "score.week": metrics["week"],
        **{f"served.{k}.{f}": str(v[f]) for k, v in served.items() for f in ("source", "version")},
        "served.churn.scorer": str(served["churn"]["scorer"]["scorer"]),
    }
    params = {"score": dataclasses.asdict(cfg.score)}
    inputs = [inp.snapshot, inp.transactions]
    with tracking.stage_run(cfg.base.mlflow_experiment, "score", params, tags, inputs=inputs, source=cfg.source):
        tracking.log_metrics(
            {k: v for k, v in metrics.items() if k in ("overall", "risk_tiers", "segments", "value", "risk", "drift")}
        )
        # the backtest's paired edge of the serving churn scorer over the best rule (the interval it serves on)
        scorer, overall = served["churn"]["scorer"], metrics["overall"]
        edge = {"edge_over_best_rule": scorer.get("gain"), **{f"edge_{k}": scorer.get(k) for k in ("low", "high")}}
        tracking.log_key_figures(
            {"churn": edge, "score": {k: overall[k] for k in ("customers", "value_at_risk", "expected_churners")}}
        )
        tracking.log_artifacts({"score": out.segments})


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    for name in ("snapshot", "features", "transactions"):
        cli.input_file(p, f"--{name}")
    for name in ("clv-artifacts", "churn-artifacts"):
        p.add_argument(f"--{name}", type=Path, required=True, help="the training stage's model folder")
    p.add_argument("--backtest", type=Path, required=True, help="the backtest's metrics (its serving choice)")
    for name in ("clv", "churn", "drift", "scores", "metrics", "segments"):
        cli.output(p, f"--{name}")
    args = p.parse_args(argv)
    params = load_params(args.params)
    cfg = Settings(
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        section(params, "clv", ClvConfig),
        section(params, "churn", ChurnConfig),
        section(params, "score", ScoreConfig),
        ingest_source(params),
    )
    inputs = Inputs(
        args.snapshot, args.features, args.transactions, args.clv_artifacts, args.churn_artifacts, args.backtest
    )
    outputs = Outputs(args.clv, args.churn, args.drift, args.scores, args.metrics, args.segments)
    run(cfg, inputs, outputs)


if __name__ == "__main__":
    cli.run(main)
