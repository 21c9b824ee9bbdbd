"""Stage ``train_churn``: train a calibrated LightGBM churn classifier on stacked cutoffs, judge it, register it.
It scores no customer: the ``score`` stage does, every week, with the serving model.

1. The labelled cutoffs of the features table (all before the training date ``train.as_of``) are split in time
   (``models.churn.split_cutoffs``): the latest validates; training uses those whose label horizon ends by it.
   Rows are the customers with a purchase within ``churn.population_lookback_days`` of their cutoff.
2. With ``churn.btyd_features`` a BG/NBD model is fitted at every cutoff on the history up to that cutoff (with
   the clv stage's remedy ladder when a fit fails) and adds P(alive), expected purchases and P(no purchase).
3. Optional attribute tables (``churn.attributes``) are joined as of each cutoff.
4. LightGBM stops early on the validation cutoff and is calibrated on it; metrics for the model and for the
   ``btyd``, ``recency`` and ``rfm`` baselines go to ``metrics/churn.json``, curves to ``plots/churn``.
5. Registry (``pipeline.registry``): the alias ``champion`` moves to this run's model only if, re-scoring the
   champion on the same validation rows, the lower bound of the paired gain (``models.paired``) clears zero and
   ``churn.registry.min_improvement``; a back-fill takes no alias.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pandera.pandas as pandera
import pyarrow.parquet as pq

from features import attributes as attr
from features import schemas as s
from features.behaviour import DAYS_PER_UNIT
from features.errors import InputError
from features.sampling import cutoff_seed
from features.schemas import validate
from models import churn as cm
from models import gate
from models.clv_base import ClvFitError
from models.evaluation import calibration_table, churn_metrics, lift_table, pr_points, roc_points, round_metrics
from models.purchases import PurchaseModel
from pipeline import cli, plots, registry, tracking
from pipeline.config import (
    AttributeTable,
    BaseConfig,
    ChurnConfig,
    FeaturesConfig,
    ingest_source,
    load_params,
    section,
    training_as_of,
)
from pipeline.features import history_end
from pipeline.io import (
    atomic_path,
    finite_json,
    read_stage_json,
    read_table,
    read_user_table,
    write_csv,
    write_json,
)
from pipeline.progress import Progress

log = logging.getLogger("churn")

BASELINES = cm.RULES


@dataclasses.dataclass(frozen=True)
class Outputs:
    """Where the stage writes: the model folder, the metrics file and the plot data."""

    artifacts: Path
    metrics: Path
    plots: Path

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
    frame = read_table(path, _schema(fcfg))
    frame[s.CUTOFF] = frame[s.CUTOFF].astype("datetime64[us]")
    return frame


def _schema(fcfg: FeaturesConfig) -> pandera.DataFrameSchema:
    return s.feature_schema(fcfg.windows_days, fcfg.trend_window_days)


def read_cutoffs(path: Path, fcfg: FeaturesConfig) -> tuple[list[pd.Timestamp], list[pd.Timestamp]]:
    """The labelled cutoffs and the scoring cutoff(s) of the features table, reading two columns only."""
    marks = read_table(path, _schema(fcfg), columns=[s.CUTOFF, s.IS_SCORING]).drop_duplicates()
    labelled = sorted(pd.Timestamp(c) for c in marks.loc[~marks[s.IS_SCORING], s.CUTOFF].unique())
    scoring = sorted(pd.Timestamp(c) for c in marks.loc[marks[s.IS_SCORING], s.CUTOFF].unique())
    return labelled, scoring


def snapshots(
    features: pd.DataFrame | Path,
    cutoffs: Sequence[pd.Timestamp],
    fcfg: FeaturesConfig,
    columns: Sequence[str] | None = None,
) -> Iterator[tuple[pd.Timestamp, pd.DataFrame]]:
    """Each cutoff's rows in date order: from a loaded table, or read from the Parquet file one cutoff at a time
    (so the whole stack of cutoffs is never in memory at once), its ``columns`` only when given."""
    for cutoff in sorted(pd.Timestamp(c) for c in cutoffs):
        if isinstance(features, Path):
            snapshot = read_table(features, _schema(fcfg), columns=columns, filters=[(s.CUTOFF, "=", cutoff)])
            snapshot[s.CUTOFF] = snapshot[s.CUTOFF].astype("datetime64[us]")
        else:
            rows = (features[s.CUTOFF] == cutoff).to_numpy()
            snapshot = features if rows.all() else features[rows]  # a scoring snapshot is one cutoff: no copy
        if not snapshot.empty:
            yield cutoff, snapshot.reset_index(drop=True)


def read_attribute_table(spec: AttributeTable) -> tuple[pd.DataFrame, dict[str, int]]:
    """Load one configured attribute table (.csv, .csv.gz or .parquet) and prepare it."""
    where = f"churn.attributes[{spec.name}] {spec.path}"
    raw = read_user_table(spec.path, where, text_columns=[spec.customer_id])
    columns = [c for c, _ in spec.pairs()]
    table, rejected = attr.prepare(
        raw, where=where, customer_id=spec.customer_id, timestamp=spec.timestamp, columns=columns
    )
    table = validate(table, s.attribute_schema(columns), where)
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
    btyd_fits: dict[pd.Timestamp, tuple[pd.DataFrame, BtydFit]] | None = None,
    columns: Sequence[str] | None = None,
) -> tuple[pd.DataFrame, list[BtydFit]]:
    """The rows of ``cutoffs`` in the population, with BTYD, attribute and derived features added. ``columns``: the
    features file's columns to read, when it is a path and not all are needed (they must hold the ids, the
    population filter and what the BTYD and derived features are made of).

    ``btyd_fits``, when given, holds each cutoff's BG/NBD columns and fit once computed, so a second table of the
    same cutoffs (the score stage's CLV challenger inputs of every customer, then its churn population) reuses them.

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
    for i, (cutoff, snapshot) in enumerate(snapshots(features, cutoffs, fcfg, columns), start=1):
        cap, what = None, ""
        if cutoff in train_cutoffs:
            cap, what = per_cutoff, "for training (churn.max_training_rows)"
        elif validation is not None and cutoff == pd.Timestamp(validation):
            cap, what = cfg.max_validation_rows, "for validation (churn.max_validation_rows)"
        step = f"({i} of {len(cutoffs)})"
        part, fit = _cutoff_rows(snapshot, cutoff, step, base, cfg, horizon_units, btyd_fits, cap, what)
        del snapshot  # the cutoff's whole snapshot is not held while the next one is read
        parts.append(part)
        if fit is not None:
            fits.append(fit)
    # the one copy of the kept rows: each part is freed as soon as it is copied in
    table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
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


def _cutoff_rows(
    snapshot: pd.DataFrame,
    cutoff: pd.Timestamp,
    step: str,
    base: BaseConfig,
    cfg: ChurnConfig,
    horizon_units: float,
    btyd_fits: dict[pd.Timestamp, tuple[pd.DataFrame, BtydFit]] | None,
    cap: int | None,
    what: str,
) -> tuple[pd.DataFrame, BtydFit | None]:
    """One cutoff's rows of the modelling table: its population, with the BTYD columns, at most ``cap`` of them
    (a seeded draw). The BTYD model is fitted on the whole snapshot, before the population filter."""
    fit = None
    if cfg.btyd_features:
        if btyd_fits is not None and cutoff in btyd_fits:
            cols, fit = btyd_fits[cutoff]
        else:
            log.info("BG/NBD features at cutoff %s %s", cutoff.date(), step)
            cols, fit = btyd_columns(snapshot, horizon_units, cfg.penalizer_ladder)
            if btyd_fits is not None:
                btyd_fits[cutoff] = cols, fit
    keep = cm.in_population(snapshot, cfg.population_lookback_days)
    if cap is not None and int(keep.sum()) > cap:
        positions = np.flatnonzero(keep)
        seed = cutoff_seed(base.seed, cutoff.date())
        drawn = np.sort(np.random.default_rng(seed).choice(positions, size=cap, replace=False))
        log.info("cutoff %s: %d of %d customers kept %s", cutoff.date(), cap, len(snapshot), what)
        keep = np.zeros(len(snapshot), dtype=bool)
        keep[drawn] = True
    rows = snapshot[keep]
    if cfg.btyd_features:
        rows = pd.concat([rows, cols[keep].set_axis(rows.index)], axis=1)
    return rows, fit


# --- registry: loading a version, the champion's figure on this run's holdout -----------------------------------


CALIBRATOR = "calibrator.json"
RULES = "rules.json"  # each rule and its calibrator, fitted on the validation cutoff (models.churn.RuleScorer)
# each feature's median among the validation cutoff's customers who stayed, and who churned: what reasons compare with
TYPICAL = "typical.json"


def version_json(version: tracking.RegisteredVersion, name: str, advice: str) -> tuple[Any, str]:
    """The JSON file churn/``name`` that a registered version's training run logged, and how errors name it; a
    one-line error ending in ``advice`` when it is missing or not JSON."""
    where = f"churn: registered version {version.version} of {version.name}"
    with tempfile.TemporaryDirectory(prefix="churn-artifact-") as tmp:
        try:
            path = tracking.run_artifact(version.run_id, f"churn/{name}", Path(tmp))
            return json.loads(path.read_text(encoding="utf-8")), f"{where}, churn/{name}"
        except (OSError, ValueError, tracking.MissingArtifact) as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InputError(f"{where} has no readable churn/{name} ({reason}): {advice}") from exc


def load_version(version: tracking.RegisteredVersion) -> cm.ChurnModel:
    """A registered churn model ready to score: its booster, and the calibrator (plain numbers, JSON) logged by its
    source run. Nothing is unpickled from the store."""
    booster = tracking.load_lightgbm(version.name, version.version)
    data, where = version_json(
        version,
        CALIBRATOR,
        "versions registered before calibrators were stored as JSON are not loaded (a pickle can run code); "
        "move the champion alias to a newer version (make ui) or set churn.registry.score_version",
    )
    return cm.ChurnModel.restore(booster, cm.Calibrator.from_dict(data, where))


def rule_from(doc: Any, name: str, where: str) -> cm.RuleScorer:
    """Rule ``name`` from a rules.json document; a one-line error naming ``where`` when it holds none."""
    if not isinstance(doc, dict) or name not in doc:
        held = ", ".join(sorted(doc)) if isinstance(doc, dict) else "nothing"
        raise InputError(
            f"{where} holds no churn rule {name!r} (it holds {held or 'none'}): btyd needs churn.btyd_features and "
            "a BG/NBD fit at the validation cutoff; rerun the train_churn stage"
        )
    return cm.RuleScorer.from_dict(doc[name], f"{where}, {name}")


def load_version_rule(version: tracking.RegisteredVersion, name: str) -> cm.RuleScorer:
    """Rule ``name`` as the training run of a registered churn version calibrated it (its churn/rules.json)."""
    doc, where = version_json(
        version, RULES, "it was registered before rules could serve; retrain (make train), or set score.churn_scorer"
    )
    return rule_from(doc, name, where)


def load_trained_rule(artifacts: Path, name: str) -> cm.RuleScorer:
    """Rule ``name`` as the training stage calibrated it (``artifacts``/rules.json)."""
    return rule_from(read_stage_json(artifacts / RULES, "train_churn"), name, str(artifacts / RULES))


def typical_document(data: Training) -> dict[str, Any]:
    """The typical values reasons compare with (``models.churn.typical_values``): every feature's median among
    the validation cutoff's customers who stayed and among those who churned, the latest labelled population
    before the training date, and the one every rule is calibrated on."""
    medians = cm.typical_values(data.valid[data.columns], data.y_valid.astype(bool))
    return finite_json(
        {
            "cutoff": str(data.split.validation.date()),
            "customers_stayed": int((data.y_valid == 0).sum()),
            "customers_churned": int(data.y_valid.sum()),
            **medians,
        }
    )


def typical_from(doc: Any, where: str) -> tuple[dict[str, float], dict[str, float]]:
    """The stayed and churned medians of a typical.json document; a one-line error naming ``where`` otherwise."""
    sides = []
    for side in ("stayed", "churned"):
        values = doc.get(side) if isinstance(doc, dict) else None
        if not isinstance(values, dict) or not all(
            v is None or (isinstance(v, int | float) and not isinstance(v, bool)) for v in values.values()
        ):
            raise InputError(f"{where}: no {side!r} medians (feature: number or null); rerun the train_churn stage")
        sides.append({str(k): float("nan") if v is None else float(v) for k, v in values.items()})
    return sides[0], sides[1]


def load_trained_typical(artifacts: Path) -> tuple[dict[str, float], dict[str, float]]:
    """The typical values the training stage wrote (``artifacts``/typical.json)."""
    return typical_from(read_stage_json(artifacts / TYPICAL, "train_churn"), str(artifacts / TYPICAL))


def load_version_typical(version: tracking.RegisteredVersion) -> tuple[dict[str, float], dict[str, float]] | None:
    """The typical values a registered version's training run logged, or None for a version registered before
    they were stored."""
    with tempfile.TemporaryDirectory(prefix="churn-artifact-") as tmp:
        try:
            path = tracking.run_artifact(version.run_id, f"churn/{TYPICAL}", Path(tmp))
        except tracking.MissingArtifact:
            return None
        where = f"churn: registered version {version.version} of {version.name}, churn/{TYPICAL}"
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{where} is not readable JSON ({exc}); rerun the train_churn stage") from exc
        return typical_from(doc, where)


def load_trained(artifacts: Path) -> cm.ChurnModel:
    """The model the training stage wrote to ``artifacts`` (model.txt and calibrator.json)."""
    for name in ("model.txt", CALIBRATOR):
        if not (artifacts / name).is_file():
            raise InputError(f"{artifacts / name}: file not found; run the train_churn stage first (`dvc repro`)")
    try:
        booster = lgb.Booster(model_file=str(artifacts / "model.txt"))
        data = json.loads((artifacts / CALIBRATOR).read_text(encoding="utf-8"))
    except (lgb.basic.LightGBMError, OSError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"{artifacts}: the trained model cannot be read ({first}); rerun the train_churn stage"
        ) from exc
    return cm.ChurnModel.restore(booster, cm.Calibrator.from_dict(data, str(artifacts / CALIBRATOR)))


def champion_figure(
    version: tracking.RegisteredVersion,
    rule: gate.Rule,
    valid: pd.DataFrame,
    y_valid: np.ndarray,
    new_score: np.ndarray,
    validation: pd.Timestamp,
    holdout_sha: str,
) -> gate.ChampionFigure:
    """The champion re-scored on this run's validation rows: its ``rule.metric`` there, and the paired gain of the
    new model's ``new_score`` over it on the same rows.

    Not judged when it was validated on a later cutoff (its labels then reach into this holdout) or lacks features.
    """
    its_cutoff = version.tags.get("holdout.cutoff")
    if its_cutoff and pd.Timestamp(its_cutoff) > validation:
        why = f"it was validated on {its_cutoff}, after this holdout's cutoff {validation.date()}"
        return gate.ChampionFigure(version.version, None, why_not=why)
    trees = tracking.load_lightgbm(version.name, version.version)  # ranking metrics need no calibrator
    features = list(trees.feature_name())
    missing = [c for c in features if c not in valid.columns]
    if missing:
        why = f"it needs feature(s) {missing[:5]} that this run's features table lacks"
        return gate.ChampionFigure(version.version, None, why_not=why)
    score = np.asarray(trees.predict(valid[features]), dtype=np.float64)
    if not np.all(np.isfinite(score)):
        why = f"its scores of {int((~np.isfinite(score)).sum())} of these rows are not numbers"
        return gate.ChampionFigure(version.version, None, why_not=why)
    paired = rule.evidence(y_valid, new_score, score)
    how = (
        "re-scored on the same holdout" if version.tags.get("holdout.sha") == holdout_sha else "re-scored on these rows"
    )
    return gate.ChampionFigure(version.version, paired.reference, how=how, paired=paired)


def model_fingerprint(model: cm.ChurnModel) -> str:
    """SHA-256 of what scores: the trees, the calibrator and the feature list."""
    return gate.content_fingerprint(
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


def judge(
    cfg: ChurnConfig,
    model: cm.ChurnModel,
    figures: dict[str, float],
    valid: pd.DataFrame,
    y_valid: np.ndarray,
    validation: pd.Timestamp,
    as_of: dt.date,
    name: str,
    seed: int,
) -> registry.Judgement:
    """This run's model against the registered champion, on the validation cutoff (``pipeline.registry``)."""
    rule = cfg.registry.rule(seed)
    holdout_sha = gate.holdout_fingerprint(validation, valid[s.CUSTOMER_ID], {s.CHURNED: y_valid})
    return registry.judge(
        name,
        as_of=as_of,
        model_sha=model_fingerprint(model),
        holdout_sha=holdout_sha,
        figures={m: figures[m] for m in gate.CHURN_GATE_METRICS},
        rule=rule,
        champion_figure=lambda v: champion_figure(v, rule, valid, y_valid, model.valid_raw_, validation, holdout_sha),
        tags={"holdout.cutoff": str(validation.date())},
    )


# --- the stage ----------------------------------------------------------------------------------------------------


def baseline_scores(valid: pd.DataFrame) -> dict[str, np.ndarray | None]:
    """Churn scores of the three baselines (higher = likelier to churn)."""
    return {name: cm.rule_score(name, valid) for name in cm.RULES}


def fit_rules(model: cm.ChurnModel, data: Training) -> dict[str, cm.RuleScorer]:
    """Every rule with a calibrator fitted on the validation cutoff with the model's calibration method: what the
    score stage serves when the backtest shows the model does not beat the best rule. A rule with no finite score
    there (btyd where that cutoff's BG/NBD fit failed) is left out."""
    out = {}
    for name, score in baseline_scores(data.valid).items():
        if score is not None and np.all(np.isfinite(score)):
            out[name] = cm.RuleScorer.fit(name, data.valid, data.y_valid, model.calibration_method_)
    return out


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
    for name, score in baseline_scores(valid).items():
        if score is None or not np.all(np.isfinite(score)):
            baselines[name] = None  # the BTYD fit at the validation cutoff failed (see btyd_fits)
            continue
        p = score if name == "btyd" else cm.cross_fit(score, y, model.calibration_method_, model.folds_)
        probs[name] = p
        baselines[name] = churn_metrics(y, score, p, k)
    out["baselines"] = baselines
    return out, probs


@dataclasses.dataclass
class Training:
    """The split modelling rows and what was fitted on them."""

    split: cm.CutoffSplit
    train: pd.DataFrame
    valid: pd.DataFrame
    y_valid: np.ndarray
    columns: list[str]
    fits: list[BtydFit]
    attributes: dict[str, Any]
    model: cm.ChurnModel | None = None


def read_attributes(cfg: ChurnConfig) -> tuple[dict[str, pd.DataFrame], dict[str, Any]]:
    """Every configured attribute table, prepared, and its row counts."""
    tables: dict[str, pd.DataFrame] = {}
    counts: dict[str, Any] = {}
    for spec in cfg.attributes:
        tables[spec.name], counts[spec.name] = read_attribute_table(spec)
    return tables, counts


def training_rows(features: Path, base: BaseConfig, fcfg: FeaturesConfig, cfg: ChurnConfig) -> Training:
    """The training and validation rows of the features table, with BTYD, attribute and derived features."""
    check_features(features, fcfg)
    labelled, _ = read_cutoffs(features, fcfg)
    split = cm.split_cutoffs(labelled, fcfg.horizon_days)
    tables, counts = read_attributes(cfg)
    table, fits = modelling_table(
        features,
        [*split.training, split.validation],
        base,
        fcfg,
        cfg,
        tables,
        training=split.training,
        validation=split.validation,
    )
    columns = cm.feature_columns(table)
    # The table holds the cutoffs in date order, and validation is after every training cutoff: the two are its
    # head and tail, taken as views (copy-on-write), not as copies of a table of millions of rows.
    n_train = int(table[s.CUTOFF].isin(list(split.training)).sum())
    train, valid = table.iloc[:n_train], table.iloc[n_train:]
    if not (valid[s.CUTOFF] == split.validation).all():  # pragma: no cover - modelling_table's order
        raise AssertionError("churn: the modelling table is not in cutoff order")
    del table
    if train.empty or valid.empty:
        raise InputError(
            f"churn: no customers in the population at the {'training' if train.empty else 'validation'} cutoffs; "
            "raise churn.population_lookback_days"
        )
    y_valid = valid[s.CHURNED].astype(bool).to_numpy(np.int64)
    return Training(split, train, valid, y_valid, columns, fits, counts)


def booster_settings(base: BaseConfig, cfg: ChurnConfig) -> cm.BoosterSettings:
    """``churn.lightgbm`` with the seed: the churn model's settings, shared by the CLV challenger."""
    return cm.BoosterSettings(
        **{f.name: getattr(cfg.lightgbm, f.name) for f in dataclasses.fields(cfg.lightgbm)}, seed=base.seed
    )


def fit(base: BaseConfig, cfg: ChurnConfig, data: Training) -> cm.ChurnModel:
    """LightGBM on the training rows, stopped early and calibrated on the validation rows."""
    settings = booster_settings(base, cfg)
    y_train = data.train[s.CHURNED].astype(bool).to_numpy(np.int64)
    log.info("LightGBM on %d training rows, early stopping on %d validation rows", len(data.train), len(data.valid))
    with Progress("churn: boosting rounds (until early stopping)", unit="rounds") as shown:
        model = cm.ChurnModel(settings, cfg.calibration).fit(
            data.train[data.columns], y_train, data.valid[data.columns], data.y_valid, on_round=shown.advance
        )
    log.info(
        "%d trees (early-stopped) on %d rows from %d cutoffs; validated on %d rows at %s",
        model.best_iteration_,
        len(data.train),
        len(data.split.training),
        len(data.valid),
        data.split.validation.date(),
    )
    return model


def write_model(out: Outputs, model: cm.ChurnModel, data: Training, importance: pd.DataFrame, as_of: dt.date) -> None:
    """The model folder: trees, calibrator (JSON), importance and a model card."""
    out.artifacts.mkdir(parents=True, exist_ok=True)
    with atomic_path(out.artifacts / "model.txt") as tmp:
        model.booster_.save_model(str(tmp), num_iteration=model.best_iteration_)
    write_json(model.calibrator_.to_dict(), out.artifacts / CALIBRATOR)
    write_json({n: r.to_dict() for n, r in fit_rules(model, data).items()}, out.artifacts / RULES)
    write_json(typical_document(data), out.artifacts / TYPICAL)
    write_csv(importance, out.artifacts / "importance.csv")
    split = data.split
    card = {
        "trained_as_of": str(as_of),
        "features": data.columns,
        "best_iteration": model.best_iteration_,
        "lightgbm_params": model.settings.params(),
        "calibration": model.calibrator_.to_dict(),
        "training_cutoffs": [str(c.date()) for c in split.training],
        "validation_cutoff": str(split.validation.date()),
        "cutoffs_excluded_for_overlap": [str(c.date()) for c in split.excluded],
        "btyd_fits": {f.cutoff: f.report if f.report else {"error": f.error} for f in data.fits},
    }
    write_json(finite_json(card), out.artifacts / "model_card.json")


def stage_metrics(
    evaluation: dict[str, Any],
    model: cm.ChurnModel,
    data: Training,
    importance: pd.DataFrame,
    judgement: registry.Judgement,
    as_of: dt.date,
) -> dict[str, Any]:
    split, fits = data.split, data.fits
    evaluation["model"].update(
        n_train=float(len(data.train)), n_valid=float(len(data.valid)), positive_rate=float(data.y_valid.mean())
    )
    return round_metrics(
        {
            **evaluation,
            "calibration": {
                "method": model.calibration_method_,
                **{f"log_loss_{k}": v for k, v in model.calibration_log_loss_.items()},
            },
            "training": {
                "trained_as_of": str(as_of),
                "training_cutoffs": len(split.training),
                "first_training_cutoff": str(split.training[0].date()),
                "last_training_cutoff": str(split.training[-1].date()),
                "validation_cutoff": str(split.validation.date()),
                "cutoffs_excluded_for_overlap": len(split.excluded),
                "best_iteration": model.best_iteration_,
                "features": len(data.columns),
            },
            "btyd_fits": {
                "fitted": sum(f.error is None for f in fits),
                "failed": sum(f.error is not None for f in fits),
                "remedy_applied": sum(bool(f.report and f.report["remedy_applied"]) for f in fits),
            },
            "importance": {r.feature: r.share for r in importance.head(10).itertuples()},
            "attributes": data.attributes,
            "registry": judgement.as_dict(),
        }
    )


def run(
    base: BaseConfig,
    fcfg: FeaturesConfig,
    cfg: ChurnConfig,
    features: Path,
    out: Outputs,
    *,
    source: str,
    as_of: dt.date,
    track: bool = True,
) -> dict[str, Any]:
    """Train and judge the model trained as of ``as_of`` (the training date); write its folder, metrics and
    plots, and register it. Returns the metrics."""
    data = training_rows(features, base, fcfg, cfg)
    model = fit(base, cfg, data)
    evaluation, probs = evaluate(model, data.valid, data.y_valid, cfg.campaign_list_size)
    sample = data.valid.sample(n=min(len(data.valid), cfg.importance_rows), random_state=base.seed)
    importance = model.importance(sample[data.columns])
    name = tracking.registered_name(cfg.registry.model_name, source)
    judgement = (
        judge(cfg, model, evaluation["model"], data.valid, data.y_valid, data.split.validation, as_of, name, base.seed)
        if track
        else registry.untracked(name)
    )
    write_model(out, model, data, importance, as_of)
    metrics = stage_metrics(evaluation, model, data, importance, judgement, as_of)
    write_json(metrics, out.metrics)
    _plots(out, data.y_valid, probs, data.split.validation)
    if track:
        _track(base, fcfg, cfg, features, out, metrics, model, data.valid[data.columns], judgement, source=source)
    m, bl = metrics["model"], metrics["baselines"]
    log.info(
        "validation %s: ROC-AUC %.4f (btyd %s, recency %.4f, rfm %.4f), ECE %.4f with %s calibration; trained as of %s",
        data.split.validation.date(),
        m["roc_auc"],
        f"{bl['btyd']['roc_auc']:.4f}" if bl.get("btyd") else "n/a",
        bl["recency"]["roc_auc"],
        bl["rfm"]["roc_auc"],
        m["ece"],
        model.calibration_method_,
        as_of,
    )
    return metrics


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
    judgement: registry.Judgement,
    *,
    source: str,
) -> None:
    as_of = str(metrics["training"]["trained_as_of"])
    params = {
        "churn": dataclasses.asdict(cfg),
        "base": {"seed": base.seed, "time_unit": base.time_unit},
        "features": {"horizon_days": fcfg.horizon_days},
        "train": {"as_of": as_of},
    }
    tags = {
        **tracking.data_fingerprint(features),
        "churn.calibration": model.calibration_method_,
        "churn.validation_cutoff": str(metrics["training"]["validation_cutoff"]),
        "run.kind": "training",
        registry.TRAINED_AS_OF: as_of,
    }
    numeric = {k: v for k, v in metrics.items() if k not in ("importance", "attributes")}
    validation = str(metrics["training"]["validation_cutoff"])
    with tracking.stage_run(
        base.mlflow_experiment, "churn", params, tags, inputs=[features], source=source, holdout=validation
    ):
        tracking.log_metrics(numeric)
        tracking.log_key_figures({"churn": {"roc_auc": metrics["model"]["roc_auc"]}})
        tracking.log_metrics({"importance": metrics["importance"]})
        tracking.log_artifacts(
            {"churn": out.artifacts / "model_card.json", "plots": out.figures, "plot_data": out.plots}
        )
        tracking.log_artifacts({"churn": out.artifacts / "importance.csv"})
        tracking.log_artifacts({"churn": out.artifacts / CALIBRATOR})
        tracking.log_artifacts({"churn": out.artifacts / RULES})
        tracking.log_artifacts({"churn": out.artifacts / TYPICAL})
        registry.record(judgement, tracking.log_churn_model(model.booster_, model.best_iteration_, example.head(20)))


def main(argv: Sequence[str]) -> None:
    p = cli.parser(__doc__.splitlines()[0])
    cli.input_file(p, "--transactions")
    cli.input_file(p, "--features")
    cli.output(p, "--artifacts", directory=True)
    cli.output(p, "--metrics")
    cli.output(p, "--plots", directory=True)
    args = p.parse_args(argv)
    params = load_params(args.params)
    base, fcfg = section(params, "base", BaseConfig), section(params, "features", FeaturesConfig)
    run(
        base,
        fcfg,
        section(params, "churn", ChurnConfig),
        args.features,
        Outputs(artifacts=args.artifacts, metrics=args.metrics, plots=args.plots),
        source=ingest_source(params),
        as_of=history_end(args.transactions, base, fcfg, training_as_of(params)) + dt.timedelta(days=1),
    )


if __name__ == "__main__":
    cli.run(main)
