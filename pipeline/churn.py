"""Stage ``churn``: train a calibrated LightGBM churn classifier on stacked cutoffs, judge it, score and explain.

1. The labelled cutoffs of the features table are split in time (``models.churn.split_cutoffs``): the latest
   validates; training uses those whose label horizon ends by it. Rows are the customers with a purchase within
   ``churn.population_lookback_days`` of their cutoff.
2. With ``churn.btyd_features`` a BG/NBD model is fitted at every cutoff on the history up to that cutoff (with
   the clv stage's remedy ladder when a fit fails) and adds P(alive), expected purchases and P(no purchase).
3. Optional attribute tables (``churn.attributes``) are joined as of each cutoff.
4. LightGBM stops early on the validation cutoff and is calibrated on it; metrics for the model and for the
   ``btyd``, ``recency`` and ``rfm`` baselines go to ``metrics/churn.json``, curves to ``plots/churn``.
5. The scoring snapshot gets a calibrated ``p_churn`` and its top three reasons (``data/churn.parquet``).
6. Drift: the population stability index of every feature and of ``p_churn`` between the last training cutoff
   and the scoring cutoff (``data/drift.parquet``), so the weekly report can warn before anyone acts on scores
   computed for customers unlike those the model learned from.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features import attributes as attr
from features import schemas as s
from features.behaviour import DAYS_PER_UNIT
from features.errors import InputError
from features.sampling import cutoff_seed
from models import churn as cm
from models import gate, monitoring
from models import segments as seg
from models.clv_base import ClvFitError
from models.evaluation import calibration_table, churn_metrics, lift_table, pr_points, roc_points, round_metrics
from models.purchases import PurchaseModel
from pipeline import cli, plots, spark, tracking
from pipeline.config import AttributeTable, BaseConfig, ChurnConfig, FeaturesConfig, ingest_source, load_params, section
from pipeline.io import atomic_path, finite_json, write_csv, write_json, write_table
from pipeline.progress import Progress

log = logging.getLogger("churn")

# Customers scored and explained per call: TreeSHAP's working memory stays bounded, and progress can be shown.
SCORE_CHUNK_ROWS = 100_000

BASELINES = ("btyd", "recency", "rfm")


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Where the stage writes: the scored customers, the model folder, the metrics file and the plot data."""

    churn: Path
    artifacts: Path
    metrics: Path
    plots: Path
    drift: Path

    @property
    def figures(self) -> Path:
        return self.artifacts / "plots"


# --- inputs -------------------------------------------------------------------------------------------------------


def check_features(path: Path, fcfg: FeaturesConfig) -> None:
    """One-line errors for a missing features table or one built with other features params."""
    if not path.is_file():
        raise InputError(f"{path}: file not found; run the features stage first (`dvc repro`)")
    expected = list(s.feature_schema(fcfg.windows_days, fcfg.trend_window_days).columns)
    names = pq.read_schema(path).names
    if names != expected:
        missing = [c for c in expected if c not in names]
        raise InputError(
            f"{path}: columns do not match the features schema (missing {missing}); rebuild it with the features "
            "stage and the same features params"
        )


def read_features(path: Path, fcfg: FeaturesConfig) -> pd.DataFrame:
    """The whole stacked features table, checked against the features schema's columns."""
    check_features(path, fcfg)
    frame = pd.read_parquet(path)
    frame[s.CUTOFF] = frame[s.CUTOFF].astype("datetime64[us]")
    return frame


def read_cutoffs(path: Path) -> tuple[list[pd.Timestamp], list[pd.Timestamp]]:
    """The labelled cutoffs and the scoring cutoff(s) of the features table, reading two columns only."""
    marks = pd.read_parquet(path, columns=[s.CUTOFF, s.IS_SCORING]).drop_duplicates()
    labelled = sorted(pd.Timestamp(c) for c in marks.loc[~marks[s.IS_SCORING], s.CUTOFF].unique())
    scoring = sorted(pd.Timestamp(c) for c in marks.loc[marks[s.IS_SCORING], s.CUTOFF].unique())
    return labelled, scoring


def snapshots(
    features: pd.DataFrame | Path, cutoffs: Sequence[pd.Timestamp]
) -> Iterator[tuple[pd.Timestamp, pd.DataFrame]]:
    """Each cutoff's rows in date order: from a loaded table, or read from the Parquet file one cutoff at a time
    (so the whole stack of cutoffs is never in memory at once)."""
    for cutoff in sorted(pd.Timestamp(c) for c in cutoffs):
        if isinstance(features, Path):
            snapshot = pd.read_parquet(features, filters=[(s.CUTOFF, "=", cutoff)])
            snapshot[s.CUTOFF] = snapshot[s.CUTOFF].astype("datetime64[us]")
        else:
            snapshot = features[features[s.CUTOFF] == cutoff]
        if not snapshot.empty:
            yield cutoff, snapshot.reset_index(drop=True)


def read_attribute_table(spec: AttributeTable) -> tuple[pd.DataFrame, dict[str, int]]:
    """Load one configured attribute table (.csv, .csv.gz or .parquet) and prepare it."""
    path = Path(spec.path)
    where = f"churn.attributes[{spec.name}] {path}"
    if not path.is_file():
        raise InputError(f"{where}: file not found")
    if not path.name.endswith((".parquet", ".csv", ".csv.gz")):
        raise InputError(f"{where}: use a .csv, .csv.gz or .parquet file")
    try:
        raw = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={spec.customer_id: str})
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as exc:  # pandas' ParserError is a ValueError
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{where}: cannot be read ({first}); check the file, or export it again") from exc
    columns = [c for c, _ in spec.pairs()]
    table, rejected = attr.prepare(
        raw, where=where, customer_id=spec.customer_id, timestamp=spec.timestamp, columns=columns
    )
    return table, {"rows": len(raw), "used": len(table), **rejected}


# --- building the modelling table ---------------------------------------------------------------------------------


@dataclasses.dataclass
class BtydFit:
    cutoff: str
    customers: int
    report: dict[str, Any] | None
    error: str | None


def btyd_columns(snapshot: pd.DataFrame, horizon_units: float, ladder: Sequence[float]) -> tuple[pd.DataFrame, BtydFit]:
    """BG/NBD fitted on one cutoff's customers (their history up to it): its three features, or NaN if it fails."""
    cutoff = str(pd.Timestamp(snapshot[s.CUTOFF].iloc[0]).date())
    f, r, t = (snapshot[c].to_numpy(np.float64) for c in (s.FREQUENCY, s.RECENCY, s.T))
    out = pd.DataFrame(index=snapshot.index, columns=list(cm.BTYD_COLUMNS), dtype="float64")
    try:
        model = PurchaseModel("bgnbd", ladder).fit(f, r, t)
        alive = model.p_alive(f, r, t)
        out[cm.BTYD_P_ALIVE] = alive
        out[cm.BTYD_EXPECTED_PURCHASES] = model.expected_purchases(horizon_units, f, r, t)
        out[cm.BTYD_P_NO_PURCHASE] = cm.btyd_no_purchase(model.params_, f, t, alive, horizon_units)
    except ClvFitError as exc:
        log.warning("BG/NBD at cutoff %s failed; its BTYD features are missing: %s", cutoff, exc)
        return out, BtydFit(cutoff, len(snapshot), None, str(exc))
    report = model.report()
    summary = {
        "params": report.params,
        "penalizer_coef": report.penalizer_coef,
        "variant": report.variant,
        "attempts": len(report.attempts),
        "remedy_applied": report.penalizer_coef > 0 or report.variant != "bfgs",
    }
    if summary["remedy_applied"]:
        log.info(
            "BG/NBD at cutoff %s converged after %d attempts with the remedy: %s fit, penalizer_coef %s",
            cutoff,
            summary["attempts"],
            report.variant,
            report.penalizer_coef,
        )
    return out, BtydFit(cutoff, len(snapshot), summary, None)


def modelling_table(
    features: pd.DataFrame | Path,
    cutoffs: Sequence[pd.Timestamp],
    base: BaseConfig,
    fcfg: FeaturesConfig,
    cfg: ChurnConfig,
    attribute_tables: dict[str, pd.DataFrame],
    *,
    training: Sequence[pd.Timestamp] = (),
    validation: pd.Timestamp | None = None,
) -> tuple[pd.DataFrame, list[BtydFit]]:
    """The rows of ``cutoffs`` in the population, with BTYD, attribute and derived features added.

    BTYD models are fitted on every customer the features table has at a cutoff (the population filter comes
    after): the whole customer base, or at a large one the features stage's seeded draw of it
    (``features.max_customers_per_training_cutoff``), so each fit sees history up to that cutoff and nothing
    later. The ``training`` cutoffs together keep
    at most ``churn.max_training_rows`` rows: each keeps an equal share, drawn at random with a seed of
    ``base.seed`` and the cutoff, and the ``validation`` cutoff at most ``churn.max_validation_rows``, drawn the
    same way, so memory stays bounded however many customers there are. Other cutoffs (scoring) keep every row.
    """
    parts = []
    fits: list[BtydFit] = []
    horizon_units = fcfg.horizon_days / DAYS_PER_UNIT[base.time_unit]
    train_cutoffs = {pd.Timestamp(c) for c in training}
    per_cutoff = -(-cfg.max_training_rows // len(train_cutoffs)) if train_cutoffs else 0
    for i, (cutoff, snapshot) in enumerate(snapshots(features, cutoffs), start=1):
        if cfg.btyd_features:
            log.info("BG/NBD features at cutoff %s (%d of %d)", cutoff.date(), i, len(cutoffs))
            cols, fit = btyd_columns(snapshot, horizon_units, cfg.penalizer_ladder)
            snapshot = pd.concat([snapshot, cols], axis=1)
            fits.append(fit)
        kept = snapshot[cm.in_population(snapshot, cfg.population_lookback_days)]
        cap, what = None, ""
        if cutoff in train_cutoffs:
            cap, what = per_cutoff, "for training (churn.max_training_rows)"
        elif validation is not None and cutoff == pd.Timestamp(validation):
            cap, what = cfg.max_validation_rows, "for validation (churn.max_validation_rows)"
        if cap is not None and len(kept) > cap:
            seed = cutoff_seed(base.seed, cutoff.date())
            kept = kept.sample(n=cap, random_state=np.random.default_rng(seed)).sort_index()
            log.info("cutoff %s: %d of %d customers kept %s", cutoff.date(), cap, len(snapshot), what)
        parts.append(kept)
    table = pd.concat(parts, ignore_index=True)
    del parts
    for spec in cfg.attributes:
        feats = attr.as_of_features(
            attribute_tables[spec.name], cutoffs, name=spec.name, window_days=spec.window_days, pairs=spec.pairs()
        )
        table = table.merge(feats, on=[s.CUTOFF, s.CUSTOMER_ID], how="left", validate="one_to_one")
        for column, how in spec.pairs():
            if how == "count":  # no rows yet means a count of zero, not an unknown
                name = attr.feature_name(spec.name, column, how)
                table[name] = table[name].fillna(0.0)
    return cm.add_derived(table), fits


# --- registry: the champion gate and the model that scores ----------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Serving:
    """The gate's decision for this run's model, and the model that scores the customers this week.

    ``version_tags`` go on this run's registered version, so a later run can judge this one on its own holdout
    without loading it (same holdout fingerprint) or re-score it (different rows).
    """

    model_name: str  # the registered model: ``<stage>.registry.model_name`` for this data source
    decision: gate.Decision | None
    model: cm.ChurnModel
    scored_with: dict[str, Any]
    version_tags: dict[str, str]
    reused: tracking.RegisteredVersion | None = None  # already holds this model and holdout: nothing to register


CALIBRATOR = "calibrator.json"


def load_version(version: tracking.RegisteredVersion) -> cm.ChurnModel:
    """A registered churn model ready to score: its booster, and the calibrator (plain numbers, JSON) logged by its
    source run. Nothing is unpickled from the store."""
    booster = tracking.load_lightgbm(version.name, version.version)
    where = f"churn: registered version {version.version} of {version.name}"
    with tempfile.TemporaryDirectory(prefix="churn-calibrator-") as tmp:
        try:
            path = tracking.run_artifact(version.run_id, f"churn/{CALIBRATOR}", Path(tmp))
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, tracking.MissingArtifact) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(
                f"{where} has no readable churn/{CALIBRATOR} ({reason}): "
                "versions registered before calibrators were stored as JSON are not loaded (a pickle can run code); "
                "move the champion alias to a newer version (make ui) or set churn.registry.score_version"
            ) from exc
    return cm.ChurnModel.restore(booster, cm.Calibrator.from_dict(data, f"{where}, churn/{CALIBRATOR}"))


def unusable(
    version: tracking.RegisteredVersion, model: cm.ChurnModel, columns: Sequence[str], scoring: pd.Timestamp
) -> str | None:
    """Why ``version`` cannot score this run's customers (None if it can)."""
    missing = [c for c in model.features_ if c not in columns]
    if missing:
        return f"it needs feature(s) {missing[:5]} that this run's features table lacks"
    seen = version.tags.get("scoring_cutoff")
    if seen and pd.Timestamp(seen) > scoring:
        return f"it was trained on history up to {seen}, after this run's scoring cutoff {scoring.date()}"
    return None


def champion_figure(
    version: tracking.RegisteredVersion,
    metric: str,
    valid: pd.DataFrame,
    y_valid: np.ndarray,
    validation: pd.Timestamp,
    holdout_sha: str,
    k: int,
) -> tuple[gate.ChampionFigure, cm.ChurnModel | None]:
    """The champion's ``metric`` on this run's validation rows, and the champion loaded (when it was needed).

    Same rows and labels (equal holdout fingerprints): its logged figure. Otherwise it is re-scored on these rows,
    unless it was validated on a later cutoff (its labels then reach into this holdout) or lacks features.
    """
    logged = version.tags.get(f"holdout.{metric}")
    if version.tags.get("holdout.sha") == holdout_sha and logged is not None:
        return gate.ChampionFigure(version.version, float(logged), how="same holdout, its logged figure"), None
    its_cutoff = version.tags.get("holdout.cutoff")
    if its_cutoff and pd.Timestamp(its_cutoff) > validation:
        why = f"it was validated on {its_cutoff}, after this holdout's cutoff {validation.date()}"
        return gate.ChampionFigure(version.version, None, why_not=why), None
    champion = load_version(version)
    missing = [c for c in champion.features_ if c not in valid.columns]
    if missing:
        why = f"it needs feature(s) {missing[:5]} that this run's features table lacks"
        return gate.ChampionFigure(version.version, None, why_not=why), champion
    raw = champion.raw_probability(valid)
    value = churn_metrics(y_valid, raw, None, k)[metric]
    return gate.ChampionFigure(version.version, value, how="re-scored on these rows"), champion


def serving(
    cfg: ChurnConfig,
    model: cm.ChurnModel,
    new_figures: dict[str, float],
    valid: pd.DataFrame,
    y_valid: np.ndarray,
    validation: pd.Timestamp,
    scoring: pd.Timestamp,
    columns: Sequence[str],
    source: str,
) -> Serving:
    """Judge this run's model against the registered champion and pick the model that scores this week.

    The new model scores when it becomes champion. Otherwise the champion scores, unless it cannot (features
    missing, or trained on history after this run's scoring date, as in a back-fill): then this run's model
    does, with a warning. ``churn.registry.score_version`` pins a version instead, and fails if it cannot score.
    """
    reg = cfg.registry
    name = tracking.registered_name(reg.model_name, source)
    holdout_sha = gate.holdout_fingerprint(validation, valid[s.CUSTOMER_ID], {s.CHURNED: y_valid})
    model_sha = gate.content_fingerprint(
        {
            "trees": model.booster_.model_to_string(num_iteration=model.best_iteration_),
            "calibration": {
                **model.calibrator_.to_dict(),
                "center": model.calibrator_.center_,
                "scale": model.calibrator_.scale_,
            },
            "features": list(model.features_),
        }
    )
    tags = {
        "model.sha": model_sha,
        "holdout.sha": holdout_sha,
        "holdout.cutoff": str(validation.date()),
        "scoring_cutoff": str(scoring.date()),
        **{f"holdout.{m}": repr(float(new_figures[m])) for m in gate.CHURN_GATE_METRICS},
    }
    current = tracking.registered_version(name, alias=gate.CHAMPION)
    # a rerun that trained this very model: its version and recorded decision, unless the champion has moved since
    same = {"model.sha": model_sha, "holdout.sha": holdout_sha}
    standing = tracking.standing_version(name, same, current, reg.metric, reg.min_improvement)
    reused: tracking.RegisteredVersion | None = None
    loaded: cm.ChurnModel | None = None
    if standing:
        reused, decision = standing
        log.info("registry %s: v%s is this model on this holdout; its decision stands", name, reused.version)
    else:
        figure, loaded = (
            champion_figure(current, reg.metric, valid, y_valid, validation, holdout_sha, cfg.campaign_list_size)
            if current
            else (None, None)
        )
        decision = gate.decide(reg.metric, reg.min_improvement, new_figures[reg.metric], figure)
        log.info("registry %s: this run's model becomes %s: %s", name, decision.alias, decision.reason)

    if reg.score_version is not None:
        pinned = tracking.pinned_version(name, reg.score_version, "churn.registry.score_version")
        chosen = load_version(pinned)
        why = unusable(pinned, chosen, columns, scoring)
        if why:
            raise InputError(f"churn.registry.score_version={reg.score_version} cannot score this run: {why}")
        return Serving(name, decision, chosen, {"source": "pinned", "version": pinned.version}, tags, reused)
    if decision.alias == gate.CHAMPION or current is None:  # reused as champion: it is the champion
        return Serving(name, decision, model, {"source": "this run", "version": None}, tags, reused)
    chosen = loaded or load_version(current)
    why = unusable(current, chosen, columns, scoring)
    if why:
        log.warning("champion v%s cannot score this run (%s); this run's model scores instead", current.version, why)
        scored_with = {"source": "this run", "version": None, "champion_unusable": why}
        return Serving(name, decision, model, scored_with, tags, reused)
    return Serving(name, decision, chosen, {"source": "champion", "version": current.version}, tags, reused)


# --- scoring and reasons -----------------------------------------------------------------------------------------


def score_and_explain(
    base: BaseConfig, frame: pd.DataFrame, model: cm.ChurnModel, medians: dict[str, float], *, explain: bool
) -> pd.DataFrame:
    """``models.churn.score_customers`` over ``frame`` (the ids and at least the model's features): on Spark's
    executors, or here in chunks, so that only a chunk's feature matrix is copied at a time."""
    if base.engine == "spark":  # TreeSHAP reasons are most of the time: spread them over the executors
        needed = frame[[s.CUSTOMER_ID, s.CUTOFF, *model.features_]]
        return spark.score_churn(base.spark, needed, model, medians, explain=explain)
    what = "scored and explained" if explain else "scored"
    with Progress(f"churn: customers {what}", total=len(frame), unit="rows") as shown:
        chunks = (frame.iloc[i : i + SCORE_CHUNK_ROWS] for i in range(0, len(frame), SCORE_CHUNK_ROWS))
        parts = [cm.score_customers(model, chunk, medians, explain=explain) for chunk in shown.each(chunks, len)]
    return pd.concat(parts, ignore_index=True)


def read_value(path: Path | None, scoring: pd.Timestamp) -> pd.DataFrame:
    """``customer_id`` and ``clv`` of the clv stage's table, which must be as of the same scoring cutoff."""
    if path is None:
        raise InputError(
            "churn: more customers to score than churn.max_explained_customers, and no --clv table to choose who "
            "gets reasons; pass the clv stage's table (dvc.yaml does)"
        )
    if not path.is_file():
        raise InputError(
            f"{path}: file not found; the clv stage's table ranks the customers who get reasons "
            "(churn.max_explained_customers); run the clv stage first (`dvc repro`)"
        )
    try:
        arrow = pq.read_table(path, columns=[s.CUSTOMER_ID, s.CUTOFF, s.CLV])
    except (OSError, KeyError, pa.ArrowInvalid) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{path}: not the clv stage's table ({first}); rerun `dvc repro`") from exc
    if pc.count_distinct(arrow[s.CUSTOMER_ID]).as_py() != arrow.num_rows:
        raise InputError(f"{path}: more than one row for a customer; rerun `dvc repro`")
    table = arrow.to_pandas()
    seen = sorted({pd.Timestamp(v).date() for v in pd.unique(table[s.CUTOFF])})
    if seen != [scoring.date()]:
        raise InputError(
            f"{path}: scored as of {', '.join(map(str, seen))}, not this run's scoring cutoff {scoring.date()}; "
            "rerun `dvc repro`"
        )
    return table[[s.CUSTOMER_ID, s.CLV]]


def first_on_the_list(scored: pd.DataFrame, value: pd.DataFrame, n: int) -> pd.Series:
    """The ids of the ``n`` customers the weekly list puts first: highest value at risk (p_churn x CLV), then
    highest p_churn, then id, the order of the score stage (``models.segments.list_order``)."""
    # one row per customer on both sides (scoring rows by construction, the clv table checked by read_value): the
    # join is not validated again, which at 10M customers would hash every id a second time
    frame = scored[[s.CUSTOMER_ID, s.P_CHURN]].merge(value, on=s.CUSTOMER_ID, how="left")
    unvalued = frame[s.CLV].isna()  # absent from the clv table (it has no missing CLV: its schema says so)
    if unvalued.any():
        raise InputError(
            f"churn: {int(unvalued.sum())} scored customers have no CLV (e.g. "
            f"{frame.loc[unvalued, s.CUSTOMER_ID].iloc[0]!r}); rerun `dvc repro` so both stages see the same data"
        )
    frame[s.VALUE_AT_RISK] = frame[s.P_CHURN].to_numpy(np.float64) * frame[s.CLV].to_numpy(np.float64)
    return seg.list_order(frame)[s.CUSTOMER_ID].iloc[:n]


# --- the stage ----------------------------------------------------------------------------------------------------


def _baseline_scores(valid: pd.DataFrame) -> dict[str, np.ndarray | None]:
    """Churn scores of the three baselines (higher = likelier to churn)."""
    return {
        "btyd": valid[cm.BTYD_P_NO_PURCHASE].to_numpy(np.float64) if cm.BTYD_P_NO_PURCHASE in valid else None,
        "recency": valid[s.DAYS_SINCE_LAST_PURCHASE].to_numpy(np.float64),
        "rfm": -cm.rfm_score(valid),
    }


def evaluate(
    model: cm.ChurnModel, valid: pd.DataFrame, y: np.ndarray, k: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Metrics of the model and the baselines on the validation rows, and every contender's probabilities.

    Every contender is ranked by its own score and judged as a probability on cross-fitted calibrated values.
    The model's ranking metrics are those of its uncalibrated score: the sigmoid keeps that order exactly, isotonic
    calibration can only tie neighbours in it. Its Brier, log loss and ECE come from ``valid_calibrated_``, where
    no row's calibrator saw its label. ``recency`` and ``rfm`` are calibrated the same way; ``btyd`` is already a
    probability and is judged as it is.
    """
    probs: dict[str, np.ndarray] = {"model": model.valid_calibrated_}
    out: dict[str, Any] = {"model": churn_metrics(y, model.valid_raw_, model.valid_calibrated_, k)}
    baselines: dict[str, Any] = {}
    for name, score in _baseline_scores(valid).items():
        if score is None or not np.all(np.isfinite(score)):
            baselines[name] = None  # the BTYD fit at the validation cutoff failed (see btyd_fits)
            continue
        p = score if name == "btyd" else cm.cross_fit(score, y, model.calibration_method_, model.folds_)
        probs[name] = p
        baselines[name] = churn_metrics(y, score, p, k)
    out["baselines"] = baselines
    return out, probs


def run(
    base: BaseConfig,
    fcfg: FeaturesConfig,
    cfg: ChurnConfig,
    features: Path,
    out: Outputs,
    *,
    source: str,
    value: Path | None = None,
    track: bool = True,
) -> dict[str, Any]:
    """Train, evaluate, score and explain; write every output. Returns the metrics.

    ``value`` is the clv stage's table: it is read only when there are more customers to score than
    ``churn.max_explained_customers``, to choose who gets reasons.
    """
    check_features(features, fcfg)
    labelled, scoring_cutoffs = read_cutoffs(features)
    split = cm.split_cutoffs(labelled, fcfg.horizon_days)
    if len(scoring_cutoffs) != 1:
        raise InputError(f"{features}: expected one scoring cutoff, found {len(scoring_cutoffs)}; rebuild features")
    scoring = scoring_cutoffs[0]

    tables: dict[str, pd.DataFrame] = {}
    attribute_counts: dict[str, Any] = {}
    for spec in cfg.attributes:
        tables[spec.name], attribute_counts[spec.name] = read_attribute_table(spec)
    used = [*split.training, split.validation, scoring]
    table, fits = modelling_table(
        features, used, base, fcfg, cfg, tables, training=split.training, validation=split.validation
    )

    X_cols = cm.feature_columns(table)
    is_train = table[s.CUTOFF].isin(list(split.training)).to_numpy()
    is_valid = (table[s.CUTOFF] == split.validation).to_numpy()
    is_score = (table[s.CUTOFF] == scoring).to_numpy()
    train, valid, score = table[is_train], table[is_valid], table[is_score].reset_index(drop=True)
    del table  # the parts are copies: at 10M customers the whole table would be 3 GB more held to the end
    if train.empty or valid.empty:
        raise InputError(
            f"churn: no customers in the population at the {'training' if train.empty else 'validation'} cutoffs; "
            "raise churn.population_lookback_days"
        )
    y_train = train[s.CHURNED].astype(bool).to_numpy(np.int64)
    y_valid = valid[s.CHURNED].astype(bool).to_numpy(np.int64)
    settings = cm.BoosterSettings(
        **{f.name: getattr(cfg.lightgbm, f.name) for f in dataclasses.fields(cfg.lightgbm)}, seed=base.seed
    )
    log.info("LightGBM on %d training rows, early stopping on %d validation rows", len(train), len(valid))
    with Progress("churn: boosting rounds (until early stopping)", unit="rounds") as shown:
        model = cm.ChurnModel(settings, cfg.calibration).fit(
            train[X_cols], y_train, valid[X_cols], y_valid, on_round=shown.advance
        )
    log.info(
        "%d trees (early-stopped) on %d rows from %d cutoffs; validated on %d rows at %s",
        model.best_iteration_,
        len(train),
        len(split.training),
        len(valid),
        split.validation.date(),
    )

    # 1. metrics on the validation cutoff
    evaluation, probs = evaluate(model, valid, y_valid, cfg.campaign_list_size)
    evaluation["model"].update(
        n_train=float(len(train)), n_valid=float(len(valid)), positive_rate=float(y_valid.mean())
    )
    sample = valid.sample(n=min(len(valid), cfg.importance_rows), random_state=base.seed)
    importance = model.importance(sample[X_cols])

    # 2. scoring and reasons, by the champion unless this run's model replaces it
    if score.empty:
        raise InputError(
            f"churn: no customer bought within {cfg.population_lookback_days} days of the scoring cutoff "
            f"{scoring.date()}; raise churn.population_lookback_days"
        )
    if track:
        serve = serving(cfg, model, evaluation["model"], valid, y_valid, split.validation, scoring, X_cols, source)
    else:
        name = tracking.registered_name(cfg.registry.model_name, source)
        serve = Serving(name, None, model, {"source": "this run", "version": None}, {})
    scorer = serve.model
    medians = score[X_cols].median(numeric_only=True).to_dict()
    explain_all = len(score) <= cfg.max_explained_customers
    started = time.perf_counter()
    scored = score_and_explain(base, score, scorer, medians, explain=explain_all)
    log.info(
        "%d customers scored%s in %.1f s",
        len(scored),
        " and explained" if explain_all else "",
        time.perf_counter() - started,
    )
    if not explain_all:
        started = time.perf_counter()
        first = first_on_the_list(scored, read_value(value, scoring), cfg.max_explained_customers)
        explained = score_and_explain(base, score[score[s.CUSTOMER_ID].isin(first)], scorer, medians, explain=True)
        scored = scored.drop(columns=list(s.REASONS)).merge(
            explained[[s.CUSTOMER_ID, *s.REASONS]], on=s.CUSTOMER_ID, how="left"
        )  # both one row per customer: a subset of the same scoring rows
        log.info(
            "reasons for the first %d customers of the list by value at risk (of %d) in %.1f s",
            len(first),
            len(scored),
            time.perf_counter() - started,
        )
    scored = scored.sort_values([s.P_CHURN, s.CUSTOMER_ID], ascending=[False, True], ignore_index=True)
    write_table(scored, out.churn, s.churn_schema())
    # the drift table pairs p_churn with the scoring rows in their order
    p_churn = (
        score[[s.CUSTOMER_ID]]
        .merge(scored[[s.CUSTOMER_ID, s.P_CHURN]], on=s.CUSTOMER_ID, how="left")[s.P_CHURN]
        .to_numpy(np.float64)
    )
    reference_cutoff = split.training[-1]
    drift = drift_frame(scorer, train[train[s.CUTOFF] == reference_cutoff], score, X_cols, p_churn, cfg.drift_bins)
    drift["reference_cutoff"] = reference_cutoff
    drift["scoring_cutoff"] = scoring
    write_table(drift, out.drift, s.drift_schema())

    # 3. model artifacts
    out.artifacts.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.artifacts / "model.txt") as tmp:
        model.booster_.save_model(str(tmp), num_iteration=model.best_iteration_)
    write_json(model.calibrator_.to_dict(), out.artifacts / CALIBRATOR)
    write_csv(importance, out.artifacts / "importance.csv")
    card = {
        "features": X_cols,
        "feature_medians_at_scoring": medians,
        "best_iteration": model.best_iteration_,
        "lightgbm_params": settings.params(),
        "calibration": model.calibrator_.to_dict(),
        "training_cutoffs": [str(c.date()) for c in split.training],
        "validation_cutoff": str(split.validation.date()),
        "cutoffs_excluded_for_overlap": [str(c.date()) for c in split.excluded],
        "scoring_cutoff": str(scoring.date()),
        "btyd_fits": {f.cutoff: f.report if f.report else {"error": f.error} for f in fits},
    }
    write_json(finite_json(card), out.artifacts / "model_card.json")

    # 4. metrics file
    metrics: dict[str, Any] = {
        **evaluation,
        "calibration": {
            "method": model.calibration_method_,
            **{f"log_loss_{k}": v for k, v in model.calibration_log_loss_.items()},
        },
        "training": {
            "training_cutoffs": len(split.training),
            "first_training_cutoff": str(split.training[0].date()),
            "last_training_cutoff": str(split.training[-1].date()),
            "validation_cutoff": str(split.validation.date()),
            "cutoffs_excluded_for_overlap": len(split.excluded),
            "best_iteration": model.best_iteration_,
            "features": len(X_cols),
        },
        "btyd_fits": {
            "fitted": sum(f.error is None for f in fits),
            "failed": sum(f.error is not None for f in fits),
            "remedy_applied": sum(bool(f.report and f.report["remedy_applied"]) for f in fits),
        },
        "importance": {r.feature: r.share for r in importance.head(10).itertuples()},
        "scoring": {
            "cutoff": str(scoring.date()),
            "customers": len(scored),
            "customers_explained": len(scored) if explain_all else len(explained),
            "p_churn_mean": float(p_churn.mean()),
            "expected_churners": float(p_churn.sum()),
            "customers_at_p_churn_0_5_or_more": int((p_churn >= 0.5).sum()),
        },
        "attributes": attribute_counts,
        "registry": {
            "model_name": serve.model_name,
            **(serve.decision.as_dict() if serve.decision else {"alias": None, "reason": "not tracked: no registry"}),
        },
        "scored_with": serve.scored_with,
        "drift": {
            "reference_cutoff": str(reference_cutoff.date()),
            "p_churn_psi": float(drift.loc[drift[s.DRIFT_FEATURE] == s.P_CHURN, s.PSI].iloc[0]),
            "max_feature_psi": float(drift.loc[drift[s.DRIFT_FEATURE] != s.P_CHURN, s.PSI].max()),
        },
    }
    metrics = round_metrics(metrics)
    write_json(metrics, out.metrics)

    # 5. plots
    _plots(out, y_valid, probs, split.validation)
    if track:
        _track(base, fcfg, cfg, features, out, metrics, model, valid[X_cols], serve)
    m, bl = metrics["model"], metrics["baselines"]
    log.info(
        "validation %s: ROC-AUC %.4f (btyd %s, recency %.4f, rfm %.4f), ECE %.4f with %s calibration; "
        "%d customers scored as of %s, mean p_churn %.3f",
        split.validation.date(),
        m["roc_auc"],
        f"{bl['btyd']['roc_auc']:.4f}" if bl.get("btyd") else "n/a",
        bl["recency"]["roc_auc"],
        bl["rfm"]["roc_auc"],
        m["ece"],
        model.calibration_method_,
        len(scored),
        scoring.date() + dt.timedelta(days=1),
        metrics["scoring"]["p_churn_mean"],
    )
    return metrics


def drift_frame(
    model: cm.ChurnModel,
    reference: pd.DataFrame,
    score: pd.DataFrame,
    columns: Sequence[str],
    p_churn: np.ndarray,
    bins: int,
) -> pd.DataFrame:
    """PSI of ``p_churn`` and of each model feature: the ``reference`` cutoff's population against the scored one."""
    ref_p = model.calibrator_.transform(model.raw_probability(reference[list(columns)]))
    ref = reference[list(columns)].assign(**{s.P_CHURN: ref_p})
    cur = score[list(columns)].assign(**{s.P_CHURN: p_churn})
    return monitoring.drift_table(ref, cur, [s.P_CHURN, *columns], bins)


def _plots(out: Outputs, y: np.ndarray, probs: dict[str, np.ndarray], cutoff: pd.Timestamp) -> None:
    model = probs["model"]
    roc = roc_points(y, model)
    pr = pr_points(y, model)
    cal = calibration_table(y, model)
    lift = lift_table(y, model)
    out.plots.mkdir(parents=True, exist_ok=True)
    for name, frame in (("roc", roc), ("pr", pr), ("calibration", cal), ("lift", lift)):
        write_csv(frame, out.plots / f"{name}.csv")
    day = cutoff.date()
    plots.curves(
        {n: roc_points(y, p) for n, p in probs.items()},
        "fpr",
        "tpr",
        title=f"ROC on the validation cutoff {day}",
        xlabel="false positive rate",
        ylabel="true positive rate (churners found)",
        path=out.figures / "roc.png",
        diagonal=True,
    )
    plots.curves(
        {n: pr_points(y, p) for n, p in probs.items()},
        "recall",
        "precision",
        title=f"Precision-recall on the validation cutoff {day}",
        xlabel="recall",
        ylabel="precision",
        path=out.figures / "pr.png",
    )
    plots.curves(
        {n: calibration_table(y, p) for n, p in probs.items()},
        "predicted",
        "observed",
        title=f"Calibration on the validation cutoff {day} (10 bins)",
        xlabel="mean predicted churn probability",
        ylabel="observed churn rate",
        path=out.figures / "calibration.png",
        diagonal=True,
    )
    plots.bars(
        lift,
        "decile",
        ["lift"],
        title=f"Churn lift by decile of p_churn, validation cutoff {day}",
        xlabel="decile (1 = highest p_churn)",
        ylabel="churn rate / overall churn rate",
        path=out.figures / "lift.png",
    )


def _track(
    base: BaseConfig,
    fcfg: FeaturesConfig,
    cfg: ChurnConfig,
    features: Path,
    out: Outputs,
    metrics: dict[str, Any],
    model: cm.ChurnModel,
    example: pd.DataFrame,
    serve: Serving,
) -> None:
    params = {
        "churn": dataclasses.asdict(cfg),
        "base": {"seed": base.seed, "time_unit": base.time_unit},
        "features": {"horizon_days": fcfg.horizon_days},
    }
    tags = {
        **tracking.data_fingerprint(features),
        "churn.calibration": model.calibration_method_,
        "churn.validation_cutoff": str(metrics["training"]["validation_cutoff"]),
    }
    numeric = {k: v for k, v in metrics.items() if k not in ("importance", "attributes", "scored_with")}
    with tracking.stage_run(base.mlflow_experiment, "churn", params, tags, inputs=[features]):
        tracking.log_metrics(numeric)
        tracking.log_metrics({"importance": metrics["importance"]})
        tracking.log_artifacts(
            {
                "churn": out.artifacts / "model_card.json",
                "plots": out.figures,
                "plot_data": out.plots,
            }
        )
        tracking.log_artifacts({"churn": out.artifacts / "importance.csv"})
        tracking.log_artifacts({"churn": out.artifacts / CALIBRATOR})
        uri = tracking.log_churn_model(model.booster_, model.best_iteration_, example.head(20))
        if serve.decision is not None:
            tracking.register_decision(
                serve.model_name, uri, serve.decision, serve.version_tags, serve.scored_with["version"], serve.reused
            )


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.input_file(p, "--features")
    cli.output(p, "--churn")
    cli.output(p, "--artifacts", directory=True)
    cli.output(p, "--metrics")
    cli.output(p, "--plots", directory=True)
    cli.output(p, "--drift")
    cli.input_file(
        p, "--clv", required=False, help="the clv stage's table: who gets reasons past churn.max_explained_customers"
    )
    args = p.parse_args(argv)
    params = load_params(args.params)
    run(
        section(params, "base", BaseConfig),
        section(params, "features", FeaturesConfig),
        section(params, "churn", ChurnConfig),
        args.features,
        Outputs(churn=args.churn, artifacts=args.artifacts, metrics=args.metrics, plots=args.plots, drift=args.drift),
        source=ingest_source(params),
        value=args.clv,
    )


if __name__ == "__main__":
    cli.run(main)
