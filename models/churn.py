"""Churn model: a LightGBM classifier on stacked cutoffs, calibrated on held-out rows, with reasons per customer.

Pure code: frames and arrays in, new objects out; no files, no MLflow.

Honest validation
-----------------
Training rows come from cutoffs whose label horizon ends on or before the validation cutoff
(``split_cutoffs``). A cutoff 28 days before the validation cutoff would have labels that look 62 days into the
validation horizon, for the same customers: its label is then nearly the answer being validated, and the
measured ROC-AUC says more about that overlap than about the model. At scoring time the same rule holds by
construction (the features stage only labels cutoffs whose horizon is observed), so validation mimics use.

Calibration is fitted on the validation cutoff's rows, which the trees never saw. The metrics of the calibrated
probabilities are *cross-fitted*: the validation customers are split in two folds by a seeded draw, each fold's
probabilities come from a calibrator fitted on the other fold, so no row is judged by a calibrator that saw its
own label. The calibrator that is shipped is then refitted on all of them (the validation cutoff's rows, a seeded
draw of ``churn.max_validation_rows`` beyond that many).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Self

import lightgbm as lgb
import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss

from features import schemas as s
from features.errors import InputError

Array = npt.NDArray[np.float64]
CalibrationMethod = Literal["isotonic", "sigmoid"]
CALIBRATION_METHODS: tuple[CalibrationMethod, ...] = ("isotonic", "sigmoid")

# --- columns added by this module -------------------------------------------------------------------------------
OVERDUE_RATIO = "overdue_ratio"
PURCHASE_DAYS_PER_YEAR = "purchase_days_per_year"
SILENCE_SHARE = "silence_share"
BTYD_P_ALIVE = "btyd_p_alive"
BTYD_EXPECTED_PURCHASES = "btyd_expected_purchases"
BTYD_P_NO_PURCHASE = "btyd_p_no_purchase"
BTYD_COLUMNS = (BTYD_P_ALIVE, BTYD_EXPECTED_PURCHASES, BTYD_P_NO_PURCHASE)
RANK_SUFFIX = "_rank_in_cutoff"
# Customers are ranked against the others at the same cutoff on these: the rank keeps its meaning as the whole
# customer base ages (on CDNOW every customer is older at the validation cutoff than at any training cutoff, and
# trees cannot extrapolate a raw age or count past the largest value they were trained on).
RANKED = (s.DAYS_SINCE_LAST_PURCHASE, s.PURCHASE_DAYS, s.TOTAL_SPEND, BTYD_EXPECTED_PURCHASES)
NOT_FEATURES = frozenset({s.CUTOFF, s.IS_SCORING, s.CUSTOMER_ID, *s.LABELS})

_EPS = 1e-6


# --- population and cutoffs -------------------------------------------------------------------------------------


def in_population(frame: pd.DataFrame, lookback_days: int) -> npt.NDArray[np.bool_]:
    """Customers who bought on or before the cutoff and within ``lookback_days`` of it (the active file)."""
    return (frame[s.DAYS_SINCE_LAST_PURCHASE] <= lookback_days).to_numpy()


@dataclasses.dataclass(frozen=True)
class CutoffSplit:
    """Which labelled cutoffs train the trees and which one validates them."""

    training: tuple[pd.Timestamp, ...]
    validation: pd.Timestamp
    excluded: tuple[pd.Timestamp, ...]  # labels overlap the validation horizon


def split_cutoffs(cutoffs: Sequence[pd.Timestamp], horizon_days: int) -> CutoffSplit:
    """Validate on the latest labelled cutoff; train on those whose horizon ends on or before it."""
    ordered = sorted(pd.Timestamp(c) for c in cutoffs)
    if len(ordered) < 2:
        raise InputError(
            f"churn needs at least two labelled cutoffs (training and validation), got {len(ordered)}; "
            "raise features.cutoff_schedule.count"
        )
    validation = ordered[-1]
    limit = validation - pd.Timedelta(days=horizon_days)
    training = tuple(c for c in ordered[:-1] if c <= limit)
    excluded = tuple(c for c in ordered[:-1] if c > limit)
    if not training:
        raise InputError(
            f"no labelled cutoff ends its {horizon_days}-day horizon by the validation cutoff {validation.date()}; "
            "raise features.cutoff_schedule.count so the schedule reaches further back"
        )
    return CutoffSplit(training=training, validation=validation, excluded=excluded)


# --- features ---------------------------------------------------------------------------------------------------


def btyd_no_purchase(params: Mapping[str, float], frequency: Array, T: Array, p_alive: Array, horizon: float) -> Array:
    """BG/NBD probability of no purchase in the next ``horizon`` time units given the history.

    The customer is either gone already, or alive and makes no purchase in the window:
    (1 - P(alive)) + P(alive) ((alpha + T) / (alpha + T + h))^(r + x), the gamma-Poisson zero probability with the
    rate's posterior (Fader, Hardie & Lee 2005a, the posterior of eq. 3; dropout inside the window only makes no
    purchase likelier and is ignored, as in the lifetimes' P(alive)).
    """
    r, alpha = params["r"], params["alpha"]
    zero = ((alpha + T) / (alpha + T + horizon)) ** (r + frequency)
    return np.clip((1.0 - p_alive) + p_alive * zero, 0.0, 1.0)


def add_derived(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with the ratio features and each ``RANKED`` column's percentile rank in its cutoff added to it (in
    place: at millions of rows a copy of the table is gigabytes)."""
    out = frame
    days = out[s.DAYS_SINCE_LAST_PURCHASE].astype("float64")
    out[OVERDUE_RATIO] = days / out[s.GAP_MEAN_DAYS].where(out[s.GAP_MEAN_DAYS] > 0)
    out[PURCHASE_DAYS_PER_YEAR] = out[s.PURCHASE_DAYS] / (out[s.TENURE_DAYS] + 1.0) * 365.25
    out[SILENCE_SHARE] = days / (out[s.TENURE_DAYS] + 1.0)
    by_cutoff = out.groupby(s.CUTOFF, sort=False)
    for col in RANKED:
        if col in out.columns:
            out[col + RANK_SUFFIX] = by_cutoff[col].rank(pct=True, method="average")
    return out


def feature_columns(frame: pd.DataFrame) -> list[str]:
    """The model's inputs: every numeric column that is not an identifier, a cutoff flag or a label."""
    return [
        c
        for c in frame.columns
        if c not in NOT_FEATURES
        and pd.api.types.is_numeric_dtype(frame[c])
        and not pd.api.types.is_bool_dtype(frame[c])
    ]


def rfm_score(frame: pd.DataFrame) -> Array:
    """The classic RFM score, 3 (worst) to 15 (best): quintiles of recency, frequency and spend, summed.

    Quintiles are taken within the frame (one cutoff) from percentile ranks, so ties share a quintile.
    """
    parts = rfm_parts(frame)
    return parts[s.DAYS_SINCE_LAST_PURCHASE] + parts[s.PURCHASE_DAYS] + parts[s.TOTAL_SPEND]


# --- the rules: one-line churn scorers that can serve in the model's place ----------------------------------------

# Each rule's score (higher = likelier to churn) and the columns it reads. ``btyd`` needs ``churn.btyd_features``.
RULES = ("btyd", "recency", "rfm")
RULE_INPUTS: dict[str, tuple[str, ...]] = {
    "btyd": (BTYD_P_NO_PURCHASE, BTYD_P_ALIVE, s.FREQUENCY),
    "recency": (s.DAYS_SINCE_LAST_PURCHASE,),
    "rfm": (s.DAYS_SINCE_LAST_PURCHASE, s.PURCHASE_DAYS, s.TOTAL_SPEND),
}
RULE_WORDS = {
    "btyd": "BG/NBD rule (its P(no purchase in the horizon))",
    "recency": "recency rule (days since the last purchase)",
    "rfm": "RFM rule (recency, frequency and spend quintiles, summed)",
}
# An RFM part at or below this quintile (of 5) is a reason for risk: the customer is in the bottom 40% on it.
RFM_REASON_QUINTILE = 2


def rule_score(name: str, frame: pd.DataFrame) -> Array | None:
    """Rule ``name``'s churn score of each row (higher = likelier to churn); None when its input is absent (btyd
    without BTYD features). RFM quintiles are taken within ``frame``: pass one cutoff's whole population."""
    if name == "btyd":
        return frame[BTYD_P_NO_PURCHASE].to_numpy(np.float64) if BTYD_P_NO_PURCHASE in frame else None
    if name == "recency":
        return frame[s.DAYS_SINCE_LAST_PURCHASE].to_numpy(np.float64)
    if name == "rfm":
        return -rfm_score(frame)
    raise ValueError(f"no churn rule {name!r}; the rules are {', '.join(RULES)}")


def rfm_parts(frame: pd.DataFrame) -> dict[str, Array]:
    """Each RFM part's quintile (1 worst to 5 best) within ``frame``, by the column it comes from."""

    def quintile(values: pd.Series) -> Array:
        return np.ceil(values.rank(pct=True, method="average").to_numpy() * 5).clip(1, 5)

    return {
        s.DAYS_SINCE_LAST_PURCHASE: quintile(-frame[s.DAYS_SINCE_LAST_PURCHASE].astype("float64")),
        s.PURCHASE_DAYS: quintile(frame[s.PURCHASE_DAYS].astype("float64")),
        s.TOTAL_SPEND: quintile(frame[s.TOTAL_SPEND].astype("float64")),
    }


def _rfm_candidates(frame: pd.DataFrame, guide: ReasonGuide) -> list[npt.NDArray[np.object_]]:
    """RFM's reasons in the order a customer gets them: the parts in the bottom quintiles, weakest first (ties in
    the order recency, frequency, spend), each as its quintile and its value in words."""
    parts = rfm_parts(frame)
    names = {s.DAYS_SINCE_LAST_PURCHASE: "recency", s.PURCHASE_DAYS: "frequency", s.TOTAL_SPEND: "spend"}
    n = len(frame)
    texts = np.full((n, len(parts)), None, dtype=object)
    weakness = np.full((n, len(parts)), np.inf)
    for k, (column, quintile) in enumerate(parts.items()):
        values = frame[column].to_numpy(np.float64)
        for q in np.unique(quintile[quintile <= RFM_REASON_QUINTILE]):
            in_q = quintile == q
            prefix = f"{names[column]} in the bottom {q * 20:.0f}% of customers: "
            texts[in_q, k] = reason_texts(column, values[in_q], guide, prefix)
            weakness[in_q, k] = q
    order = np.argsort(weakness, axis=1, kind="stable")  # a weak part first; equal ones keep the parts' order
    every = np.arange(n)
    return [texts[every, order[:, j]] for j in range(len(parts))]  # a part that is not weak has no text


class RuleScorer:
    """A rule serving as the churn scorer: its score, mapped to a probability by a calibrator fitted on the
    training stage's validation cutoff (as the model's is), and reasons that are the rule's own inputs in words.

    Unlike the model's, a rule's score is not a function of one row alone: RFM quintiles are taken within the
    scored population, so ``score`` and ``reasons`` get the whole population at once (a rule costs next to nothing).
    """

    def __init__(self, name: str, calibrator: Calibrator) -> None:
        if name not in RULES:
            raise InputError(f"no churn rule {name!r}; the rules are {', '.join(RULES)}")
        self.name = name
        self.calibrator_ = calibrator
        self.features_ = list(RULE_INPUTS[name])

    def raw_score(self, frame: pd.DataFrame) -> Array:
        missing = [c for c in self.features_ if c not in frame.columns]
        if missing:
            raise InputError(f"churn rule {self.name} needs column(s) {missing}: set churn.btyd_features to true")
        score = rule_score(self.name, frame)
        assert score is not None
        return score

    def raw_probability(self, frame: pd.DataFrame) -> Array:
        """An uncalibrated churn score in [0, 1]: btyd's own probability; for recency and RFM, the score's
        percentile rank among ``frame``'s rows (it keeps their order; only the calibrated value is a probability)."""
        score = self.raw_score(frame)
        if self.name == "btyd":
            return np.clip(score, 0.0, 1.0)
        return pd.Series(score).rank(pct=True, method="average").to_numpy(np.float64)

    def predict_proba(self, frame: pd.DataFrame) -> Array:
        return self.calibrator_.transform(self.raw_score(frame))

    def reasons(self, frame: pd.DataFrame, guide: ReasonGuide, p_churn: npt.ArrayLike, top: int = 3) -> pd.DataFrame:
        """Up to ``top`` reasons per row (None past the last): the rule's inputs in words, each where the rule's
        own direction calls it a risk and the customer is on the risky side of the typical value of those who
        stayed (``reason_text``). Recency: a silence longer than typical. RFM: each part in the customer base's
        bottom 40%, weakest first. btyd: its P(no purchase) above typical, then P(alive) and repeat purchases
        below it. A row below the medium risk tier (``p_churn``) gets ``NO_WARNING``; one above it with no input on
        its risky side ``NO_SINGLE_SIGN``."""
        n = len(frame)
        calm = _no_warning(np.asarray(p_churn, dtype=np.float64), guide)
        if calm.shape != (n,):
            raise ValueError(f"reasons: {calm.size} probabilities for {n} customers")
        # Each input's text is made once per distinct value (customers share recencies and BTYD histories), and the
        # texts are placed by array operations: a rule explains millions of customers in seconds.
        if self.name == "rfm":
            candidates = _rfm_candidates(frame, guide)
        else:
            columns = (s.DAYS_SINCE_LAST_PURCHASE,) if self.name == "recency" else RULE_INPUTS["btyd"]
            candidates = [reason_texts(c, frame[c].to_numpy(np.float64), guide) for c in columns]
        out = [np.full(n, None, dtype=object) for _ in range(top)]
        found = np.zeros(n, dtype=np.int64)
        for texts in candidates:  # in the order they are given: the first found is reason_1
            has = ~calm & ~pd.isna(texts)
            for k in range(top):
                slot = has & (found == k)
                out[k][slot] = texts[slot]
            found += has
        out[0][~calm & (found == 0)] = NO_SINGLE_SIGN
        out[0][calm] = NO_WARNING
        # object columns that point at the texts made once per value: as pandas' own text type each row would hold
        # its own copy of its text (1.5 GB for three reasons of 10M customers); written, they are text like any
        return pd.DataFrame({f"reason_{k + 1}": pd.Series(out[k], index=frame.index, dtype=object) for k in range(top)})

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.name, "inputs": self.features_, "calibrator": self.calibrator_.to_dict()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> RuleScorer:
        if not isinstance(data, Mapping) or data.get("rule") not in RULES:
            raise InputError(f"{where}: not a churn rule written by this project")
        return cls(str(data["rule"]), Calibrator.from_dict(data.get("calibrator", {}), f"{where}, calibrator"))

    @classmethod
    def fit(cls, name: str, frame: pd.DataFrame, y: npt.NDArray[np.int_], method: CalibrationMethod) -> RuleScorer:
        """The rule with its calibrator fitted on ``frame``'s rows (one cutoff's population) and their labels."""
        score = rule_score(name, frame)
        if score is None or not np.all(np.isfinite(score)):
            raise InputError(f"churn rule {name}: no finite score on the calibration rows (a BTYD fit failed?)")
        return cls(name, Calibrator(method).fit(score, y))


# --- calibration ------------------------------------------------------------------------------------------------


class Calibrator:
    """Maps a score to a probability: isotonic regression, or Platt's sigmoid on the score's log-odds.

    A score in [0, 1] is read as a probability (its log-odds feed the sigmoid); any other score (days since the
    last purchase, an RFM score) is standardised first. Fitting uses scikit-learn; the fitted mapping is then a
    handful of plain numbers (isotonic: its steps, interpolated linearly; sigmoid: slope and intercept), which is
    what ``transform`` applies and what ``to_dict`` / ``from_dict`` store, as JSON and never as a pickle.
    """

    def __init__(self, method: CalibrationMethod) -> None:
        self.method = method

    def _design(self, score: Array) -> Array:
        if self.probability_input_:
            p = np.clip(score, _EPS, 1 - _EPS)
            return np.log(p / (1 - p))
        return (score - self.center_) / self.scale_

    def fit(self, score: Array, y: npt.NDArray[np.int_]) -> Self:
        score = np.asarray(score, dtype=np.float64)
        if self.method not in CALIBRATION_METHODS:
            raise InputError(f"calibration must be one of {', '.join(CALIBRATION_METHODS)}; got {self.method!r}")
        if len(np.unique(y)) < 2:
            raise InputError("calibration needs both churned and retained customers in the held-out rows")
        self.probability_input_ = bool(score.min() >= 0 and score.max() <= 1)
        self.center_ = float(score.mean())
        self.scale_ = float(score.std()) or 1.0
        if self.method == "isotonic":
            iso = IsotonicRegression(out_of_bounds="clip", y_min=_EPS, y_max=1 - _EPS).fit(score, y)
            self.x_ = np.asarray(iso.X_thresholds_, dtype=np.float64)
            self.y_ = np.asarray(iso.y_thresholds_, dtype=np.float64)
        else:
            sigmoid = LogisticRegression(C=1e6, max_iter=1000).fit(self._design(score).reshape(-1, 1), y)
            self.slope_ = float(sigmoid.coef_[0, 0])
            self.intercept_ = float(sigmoid.intercept_[0])
        return self

    def _fitted(self) -> bool:
        return hasattr(self, "x_") or hasattr(self, "slope_")

    def transform(self, score: Array) -> Array:
        if not self._fitted():
            raise RuntimeError("this Calibrator is not fitted yet; call fit() first")
        score = np.asarray(score, dtype=np.float64)
        if self.method == "isotonic":
            out = np.interp(score, self.x_, self.y_)  # beyond the first and last step: their value (clip)
        else:
            out = 1.0 / (1.0 + np.exp(-(self.slope_ * self._design(score) + self.intercept_)))
        return np.clip(out, _EPS, 1 - _EPS)

    def to_dict(self) -> dict[str, Any]:
        """The fitted mapping in plain numbers: what ``from_dict`` restores, and what a reviewer reads."""
        if not self._fitted():
            raise RuntimeError("this Calibrator is not fitted yet; call fit() first")
        common = {
            "method": self.method,
            "input": "probability" if self.probability_input_ else "standardised score",
            "center": self.center_,
            "scale": self.scale_,
        }
        if self.method == "isotonic":
            return {**common, "x": self.x_.tolist(), "y": self.y_.tolist()}
        return {**common, "slope": self.slope_, "intercept": self.intercept_}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> Calibrator:
        """A fitted calibrator from ``to_dict``'s numbers; a one-line error naming ``where`` if they are not that."""

        def number(key: str) -> float:
            value = data.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
                raise InputError(f"{where}: {key!r} must be a finite number, got {value!r}")
            return float(value)

        method = data.get("method") if isinstance(data, Mapping) else None
        if method not in CALIBRATION_METHODS or data.get("input") not in ("probability", "standardised score"):
            raise InputError(f"{where}: not a calibrator written by this project (method {method!r})")
        out = cls(method)
        out.probability_input_ = data["input"] == "probability"
        out.center_, out.scale_ = number("center"), number("scale")
        if method == "isotonic":
            try:
                x, y = (np.asarray(data.get(k), dtype=np.float64) for k in "xy")
            except (TypeError, ValueError):
                x = y = np.empty(0)
            if x.ndim != 1 or len(x) == 0 or x.shape != y.shape:
                raise InputError(f"{where}: 'x' and 'y' must be lists of the same, non-zero length")
            if not (np.isfinite(x).all() and np.isfinite(y).all() and (np.diff(x) > 0).all()):
                raise InputError(f"{where}: 'x' must be finite and increasing and 'y' finite")
            if y.min() < 0 or y.max() > 1:
                raise InputError(f"{where}: 'y' must hold probabilities in [0, 1]")
            out.x_, out.y_ = x, y
        else:
            out.slope_, out.intercept_ = number("slope"), number("intercept")
        return out


def fold_of(n: int, seed: int) -> npt.NDArray[np.int_]:
    """A seeded, balanced split of ``n`` rows in two folds."""
    folds = np.arange(n) % 2
    return np.random.default_rng(seed).permutation(folds)


def cross_fit(score: Array, y: npt.NDArray[np.int_], method: CalibrationMethod, folds: npt.NDArray[np.int_]) -> Array:
    """Calibrated probabilities where each fold's come from a calibrator fitted on the other fold."""
    out = np.empty(len(score))
    for k in (0, 1):
        held = folds == k
        out[held] = Calibrator(method).fit(score[~held], y[~held]).transform(score[held])
    return out


def choose_calibration(
    score: Array, y: npt.NDArray[np.int_], folds: npt.NDArray[np.int_], method: CalibrationMethod | Literal["auto"]
) -> tuple[CalibrationMethod, Array, dict[str, float]]:
    """The method (``auto``: lower cross-fitted log loss), its cross-fitted probabilities and every log loss."""
    methods = CALIBRATION_METHODS if method == "auto" else (method,)
    probs = {m: cross_fit(score, y, m, folds) for m in methods}
    losses: dict[str, float] = {m: float(log_loss(y, p, labels=[0, 1])) for m, p in probs.items()}
    best = min(methods, key=lambda m: (losses[m], m))
    return best, probs[best], losses


# --- the classifier -----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BoosterSettings:
    """LightGBM settings from ``churn.lightgbm`` plus the seed and thread count."""

    learning_rate: float
    num_leaves: int
    min_child_samples: int
    feature_fraction: float
    bagging_fraction: float
    lambda_l2: float
    max_rounds: int
    early_stopping_rounds: int
    seed: int
    threads: int

    def params(self) -> dict[str, Any]:
        return {
            "objective": "binary",
            "metric": "binary_logloss",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "bagging_freq": 1 if self.bagging_fraction < 1 else 0,
            "lambda_l2": self.lambda_l2,
            # same data + settings -> the same trees: fixed seeds, deterministic histogram construction
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": self.threads,
            "verbosity": -1,
        }


class ChurnModel:
    """LightGBM churn classifier, early-stopped on a later cutoff, then calibrated on that cutoff's rows.

    Parameters
    ----------
    settings
        Booster settings.
    calibration
        ``isotonic``, ``sigmoid`` or ``auto`` (the lower cross-fitted log loss on the validation rows).
    """

    def __init__(self, settings: BoosterSettings, calibration: CalibrationMethod | Literal["auto"] = "auto") -> None:
        self.settings = settings
        self.calibration = calibration

    def fit(
        self,
        X_train: pd.DataFrame,
        y_train: Any,
        X_valid: pd.DataFrame,
        y_valid: Any,
        on_round: Callable[[], None] | None = None,
    ) -> Self:
        """Grow trees on the training cutoffs, stop early on the validation cutoff, calibrate on it.

        ``on_round`` is called after each boosting round (e.g. to show progress).
        """
        y_tr = np.asarray(y_train, dtype=np.int64)
        y_va = np.asarray(y_valid, dtype=np.int64)
        for name, y in (("training", y_tr), ("validation", y_va)):
            if len(np.unique(y)) < 2:
                raise InputError(f"churn: the {name} rows are all {'churned' if y.all() else 'retained'}; no model")
        if list(X_train.columns) != list(X_valid.columns):
            raise InputError("churn: training and validation features have different columns")
        train = lgb.Dataset(X_train, y_tr, free_raw_data=True)
        valid = lgb.Dataset(X_valid, y_va, reference=train)
        self.booster_ = lgb.train(
            self.settings.params(),
            train,
            num_boost_round=self.settings.max_rounds,
            valid_sets=[valid],
            callbacks=[
                lgb.early_stopping(self.settings.early_stopping_rounds, verbose=False),
                *([] if on_round is None else [lambda _env: on_round()]),
            ],
        )
        self.best_iteration_ = int(self.booster_.best_iteration or self.settings.max_rounds)
        self.features_ = list(X_train.columns)
        raw = self.raw_probability(X_valid)
        self.folds_ = fold_of(len(y_va), self.settings.seed)
        method, oof, losses = choose_calibration(raw, y_va, self.folds_, self.calibration)
        self.calibration_method_ = method
        self.calibration_log_loss_ = losses
        self.valid_raw_ = raw
        self.valid_calibrated_ = oof  # cross-fitted: what the metrics are computed on
        self.calibrator_ = Calibrator(method).fit(raw, y_va)
        return self

    @classmethod
    def restore(cls, booster: lgb.Booster, calibrator: Calibrator) -> ChurnModel:
        """A fitted model from its saved parts (e.g. a registered version): it scores and explains, never refits.

        The booster must hold only the early-stopped trees, as saved models do.
        """
        if not calibrator._fitted():
            raise InputError("churn: the saved calibrator is not fitted")
        model = cls.__new__(cls)
        model.booster_ = booster
        model.best_iteration_ = int(booster.current_iteration())
        model.features_ = list(booster.feature_name())
        model.calibrator_ = calibrator
        model.calibration_method_ = calibrator.method
        return model

    def _check(self, X: pd.DataFrame) -> None:
        if not hasattr(self, "booster_"):
            raise RuntimeError("this ChurnModel is not fitted yet; call fit() first")
        missing = [c for c in self.features_ if c not in X.columns]
        if missing:
            raise InputError(f"churn model input lacks feature column(s) {missing}")

    def raw_probability(self, X: pd.DataFrame) -> Array:
        """The trees' probability of churn, before calibration."""
        self._check(X)
        out = self.booster_.predict(X[self.features_], num_iteration=self.best_iteration_)
        return np.asarray(out, dtype=np.float64)

    def predict_proba(self, X: pd.DataFrame) -> Array:
        """Calibrated probability of churn over the horizon."""
        raw = self.raw_probability(X)
        return self.calibrator_.transform(raw)

    def contributions(self, X: pd.DataFrame) -> pd.DataFrame:
        """Each feature's contribution to the log-odds of churn (TreeSHAP); the row sum plus ``bias`` is the score."""
        self._check(X)
        values = self.booster_.predict(X[self.features_], num_iteration=self.best_iteration_, pred_contrib=True)
        return pd.DataFrame(np.asarray(values), columns=[*self.features_, "bias"], index=X.index)

    def importance(self, X: pd.DataFrame) -> pd.DataFrame:
        """Global importance: mean |contribution| to the log-odds per feature, and the share of the total."""
        contrib = self.contributions(X).drop(columns="bias").abs().mean()
        total = float(contrib.sum()) or 1.0
        out = pd.DataFrame({"feature": contrib.index, "mean_abs_contribution": contrib.to_numpy()})
        out["share"] = out["mean_abs_contribution"] / total
        return out.sort_values("mean_abs_contribution", ascending=False, ignore_index=True)


# --- reasons --------------------------------------------------------------------------------------------------------

# The whole text of a customer's reasons below the medium risk tier: nothing about them raises a flag worth reading.
NO_WARNING = "no warning signs"
# The whole text of the reasons of a customer at risk none of whose inputs, on its own, is on the risky side of
# those who stayed: the score comes from how the inputs combine.
NO_SINGLE_SIGN = "no single warning sign: the risk comes from the pattern as a whole"
TYPICAL_WORDS = "typical of those who stayed"
Risky = Literal["higher", "lower"]


@dataclasses.dataclass(frozen=True)
class ReasonGuide:
    """What each customer's reasons are compared with, and how they are printed.

    ``typical`` is each feature's median among the customers who stayed (bought within the horizon) at the
    training stage's validation cutoff, ``churned`` its median among those who did not: the reasons say how far a
    customer is from customers like them who stayed, whatever this week's crowd looks like. A customer whose
    ``p_churn`` is below ``medium_risk`` (the medium risk tier) gets ``NO_WARNING`` alone.
    """

    typical: Mapping[str, float]
    churned: Mapping[str, float]
    medium_risk: float
    currency: str
    horizon_days: int

    def check(self, features: Sequence[str], where: str) -> None:
        """A one-line error when the stored typical values lack a feature the scorer reads."""
        missing = [f for f in features if f not in self.typical or f not in self.churned]
        if missing:
            raise InputError(
                f"{where}: no typical value of feature(s) {missing[:5]}; rerun the train_churn stage so its "
                "typical values match the serving churn scorer"
            )


def typical_values(frame: pd.DataFrame, churned: npt.ArrayLike) -> dict[str, dict[str, float]]:
    """Each numeric column's median among the rows that stayed (``churned`` false) and among those that churned.

    Missing values are left out of a median (a one-time buyer has no gap between purchases); a column with no
    value on one side has NaN there.
    """
    gone = np.asarray(churned, dtype=bool)
    if gone.shape != (len(frame),):
        raise ValueError(f"typical_values: {gone.size} labels for {len(frame)} rows")
    if gone.all() or not gone.any():
        raise InputError("churn: typical values need both customers who stayed and customers who churned")
    numeric = frame[feature_columns(frame)].astype("float64")
    return {
        "stayed": {str(k): float(v) for k, v in numeric[~gone].median().items()},
        "churned": {str(k): float(v) for k, v in numeric[gone].median().items()},
    }


@dataclasses.dataclass(frozen=True)
class Reading:
    """How one feature reads in a reason.

    ``concept`` groups the features that say the same thing (days since the last purchase, its rank, the share of
    the customer's life spent silent): their TreeSHAP contributions add up to the concept's push (contributions
    are additive), and one reason at most is given per concept. ``risky`` is the side of the typical value that
    reads as a risk to a person; None for a feature that pushes its concept but is never the text (a rank, the
    BTYD age at the last purchase in ``base.time_unit``). ``unit`` says how a value prints. A trend reads as a
    reason only when it is falling (``decline``).
    """

    concept: str
    risky: Risky | None
    template: str = ""  # "{v}" is the customer's value as printed, with its unit
    unit: str = "plain"  # days | money | share | times | purchases | per_year | plain
    decline: bool = False


_READINGS: dict[str, Reading] = {
    s.DAYS_SINCE_LAST_PURCHASE: Reading("silence", "higher", "no purchase for {v}", "days"),
    SILENCE_SHARE: Reading("silence", "higher", "silent for {v} of their time as a customer", "share"),
    OVERDUE_RATIO: Reading("silence", "higher", "silent for {v} their average gap between purchases", "times"),
    s.DAYS_SINCE_LAST_PURCHASE + RANK_SUFFIX: Reading("silence", None),
    s.RECENCY: Reading("silence", None),
    s.TENURE_DAYS: Reading("tenure", "lower", "a customer for only {v}", "days"),
    s.T: Reading("tenure", None),
    s.PURCHASE_DAYS: Reading("frequency", "lower", "bought on {v} in all", "days"),
    s.FREQUENCY: Reading("frequency", "lower", "repeat purchases on {v}", "days"),
    PURCHASE_DAYS_PER_YEAR: Reading("frequency", "lower", "buys on {v}", "per_year"),
    s.GAP_MEAN_DAYS: Reading("frequency", "higher", "buys every {v} on average", "days"),
    s.PURCHASE_DAYS + RANK_SUFFIX: Reading("frequency", None),
    s.GAP_STD_DAYS: Reading("regularity", "higher", "irregular buyer: gaps between purchases vary by {v}", "days"),
    s.LAST_GAP_DAYS: Reading("slowing", "higher", "waited {v} between their last two purchases", "days"),
    s.TOTAL_SPEND: Reading("spend", "lower", "total spend {v}", "money"),
    s.AVG_SPEND_PER_DAY: Reading("spend", "lower", "spends {v} per purchase day", "money"),
    # 0 for a one-time buyer, who has no repeat order: never the text, lest "average repeat order 0.00" mislead
    s.MONETARY_VALUE: Reading("spend", None),
    s.TOTAL_SPEND + RANK_SUFFIX: Reading("spend", None),
    s.RETURNS_SHARE: Reading("returns", "higher", "returned {v} of their spend", "share"),
    BTYD_P_ALIVE: Reading("purchase model", "lower", "purchase model: {v} likely to be still active", "share"),
    BTYD_EXPECTED_PURCHASES: Reading(
        "purchase model", "lower", "purchase model expects {v} in the next {h} days", "purchases"
    ),
    BTYD_P_NO_PURCHASE: Reading(
        "purchase model", "higher", "purchase model: {v} chance of no purchase in the next {h} days", "share"
    ),
    BTYD_EXPECTED_PURCHASES + RANK_SUFFIX: Reading("purchase model", None),
}


def _window(feature: str, prefix: str) -> int | None:
    rest = feature.removeprefix(prefix)
    if rest != feature and rest.endswith("d") and rest[:-1].isdigit():
        return int(rest[:-1])
    return None


def reading(feature: str) -> Reading:
    """How ``feature`` reads: from the table above, the activity windows and trends by their names, else (an
    attribute such as a survey score) a concept of its own, its risky side the churners' (``ReasonGuide``)."""
    if feature in _READINGS:
        return _READINGS[feature]
    if (w := _window(feature, "purchase_days_")) is not None:
        return Reading("recent activity", "lower", f"bought on {{v}} in the last {w} days", "days")
    if (w := _window(feature, "spend_")) is not None:
        return Reading("recent activity", "lower", f"spent {{v}} in the last {w} days", "money")
    for prefix, what in (("purchase_trend_", "purchase days"), ("spend_trend_", "spend")):
        if (w := _window(feature, prefix)) is not None:
            # the trend (recent - prior) / (recent + prior) prints as the recent window's share of both: (1 + t) / 2
            text = f"only {{v}} of their {what} in the last {2 * w} days came in the last {w}"
            return Reading("recent activity", "lower", text, "trend_share", decline=True)
    return Reading(feature, None, f"{feature.replace('_', ' ')} {{v}}", "plain")


# How a value prints in each unit of ``Reading``, given the currency code.
_UNITS: dict[str, Callable[[float, str], str]] = {
    "days": lambda v, _: "1 day" if round(v) == 1 else f"{v:,.0f} days",
    "money": lambda v, currency: f"{currency} {v:,.2f}",
    "share": lambda v, _: f"{v:.0%}",
    "trend_share": lambda v, _: f"{(1.0 + v) / 2.0:.0%}",
    "times": lambda v, _: f"{v:.1f} times",
    "purchases": lambda v, _: f"{v:.2f} purchases",
    "per_year": lambda v, _: f"{v:.1f} days a year",
}


def printed(value: float, unit: str, currency: str) -> str:
    """``value`` as a reason prints it, with its unit (``plain``: three significant digits)."""
    return _UNITS[unit](value, currency) if unit in _UNITS else f"{value:,.3g}"


@dataclasses.dataclass(frozen=True)
class _ReasonRule:
    """How ``feature`` gives its reason under ``guide``: its reading, its risky side, the typical value and how that
    prints."""

    how: Reading
    risky: str
    typical: float
    printed_typical: str


def _reason_rule(feature: str, guide: ReasonGuide) -> _ReasonRule | None:
    how = reading(feature)
    typical = float(guide.typical.get(feature, np.nan))
    risky = how.risky
    if risky is None and how.concept == feature:  # a feature with no fixed meaning: risky on the churners' side
        churned = float(guide.churned.get(feature, np.nan))
        risky = "higher" if churned > typical else "lower" if churned < typical else None
    if risky is None or not how.template or not np.isfinite(typical):
        return None
    return _ReasonRule(how, risky, typical, printed(typical, how.unit, guide.currency))


def _said(rule: _ReasonRule, value: float, guide: ReasonGuide) -> str | None:
    """The text of a finite ``value`` on the risky side, unless it prints as the typical value does."""
    v = printed(value, rule.how.unit, guide.currency)
    if v == rule.printed_typical:
        return None
    return rule.how.template.format(v=v, h=guide.horizon_days) + f" ({TYPICAL_WORDS}: {rule.printed_typical})"


def _on_risky_side(rule: _ReasonRule, values: Array) -> npt.NDArray[np.bool_]:
    side = values > rule.typical if rule.risky == "higher" else values < rule.typical
    return np.isfinite(values) & side & ~(rule.how.decline & (values >= 0))


def reason_text(feature: str, value: float, guide: ReasonGuide) -> str | None:
    """The reason ``feature`` at ``value`` gives, or None where it gives none: a value missing or on the safe side
    of the typical value of those who stayed, or the same as it once printed (never "40 days (typical: 40 days)")."""
    rule = _reason_rule(feature, guide)
    if rule is None or not _on_risky_side(rule, np.array([value], dtype=np.float64))[0]:
        return None
    return _said(rule, value, guide)


def reason_texts(feature: str, values: Array, guide: ReasonGuide, prefix: str = "") -> npt.NDArray[np.object_]:
    """``reason_text`` of each of ``values`` (after ``prefix``), None where it gives none: the sides compared as
    arrays, each text made once per distinct value (customers share recencies and BTYD histories)."""
    values = np.asarray(values, dtype=np.float64)
    made = np.full(len(values), None, dtype=object)
    rule = _reason_rule(feature, guide)
    if rule is None:
        return made
    risky = _on_risky_side(rule, values)
    distinct, where = np.unique(values[risky], return_inverse=True)
    texts = [_said(rule, float(v), guide) for v in distinct]
    made[risky] = np.array([None if t is None else prefix + t for t in texts], dtype=object)[where.reshape(-1)]
    return made


def _no_warning(p_churn: Array, guide: ReasonGuide) -> npt.NDArray[np.bool_]:
    return np.asarray(p_churn, dtype=np.float64) < guide.medium_risk


def _as_columns(texts: Sequence[Sequence[str]], index: pd.Index, top: int) -> pd.DataFrame:
    out = {f"reason_{k + 1}": [t[k] if k < len(t) else None for t in texts] for k in range(top)}
    return pd.DataFrame(out, index=index)


def top_reasons(
    contributions: pd.DataFrame, X: pd.DataFrame, guide: ReasonGuide, p_churn: npt.ArrayLike, top: int = 3
) -> pd.DataFrame:
    """Up to ``top`` reasons per customer, as text; None past the last.

    ``contributions`` is ``ChurnModel.contributions(X)``. The features' contributions are summed by concept
    (``Reading``); the concepts pushing the churn score up the most come first, and each gives the text of its
    feature with the largest contribution that reads as a risk (``reason_text``); a concept with no such feature,
    or one that pushes the score down, gives none. A customer below the medium risk tier gets ``NO_WARNING``, one
    above it whose concepts give no text ``NO_SINGLE_SIGN``.
    """
    contrib = contributions.drop(columns="bias")
    names = [str(c) for c in contrib.columns]
    values = contrib.to_numpy(np.float64)
    xs = X[names].to_numpy(dtype=np.float64)
    groups: dict[str, list[int]] = {}
    for j, name in enumerate(names):
        groups.setdefault(reading(name).concept, []).append(j)
    members = list(groups.values())
    pushes = np.column_stack([values[:, idx].sum(axis=1) for idx in members])
    order = np.argsort(-pushes, axis=1, kind="stable")
    calm = _no_warning(np.asarray(p_churn, dtype=np.float64), guide)
    if calm.shape != (len(contrib),):
        raise ValueError(f"top_reasons: {calm.size} probabilities for {len(contrib)} customers")
    texts: list[list[str]] = []
    for row in range(len(contrib)):
        found: list[str] = []
        if calm[row]:
            texts.append([NO_WARNING])
            continue
        for k in order[row]:
            if len(found) == top or pushes[row, k] <= 0:
                break
            for j in sorted(members[k], key=lambda j: -values[row, j]):
                text = reason_text(names[j], float(xs[row, j]), guide)
                if text is not None:
                    found.append(text)
                    break
        texts.append(found or [NO_SINGLE_SIGN])
    return _as_columns(texts, contributions.index, top)


def score_customers(
    model: ChurnModel, frame: pd.DataFrame, guide: ReasonGuide, *, explain: bool = True
) -> pd.DataFrame:
    """``customer_id``, ``cutoff``, ``p_churn``, ``p_churn_raw`` and the reasons for each row of ``frame``.

    ``frame`` holds the model's feature columns and the two ids. Every value depends on its own row only (the
    typical values the reasons compare with were stored at training, ``guide``), so any slice of the customers,
    such as a Spark partition, gets the values it would get in one piece. With ``explain=False`` the
    reasons are left empty (None): TreeSHAP is nearly all of the cost of scoring.
    """
    X = frame[model.features_]
    raw = model.raw_probability(X)
    out = pd.DataFrame(
        {
            s.CUSTOMER_ID: frame[s.CUSTOMER_ID].array,
            s.CUTOFF: frame[s.CUTOFF].array,
            s.P_CHURN: model.calibrator_.transform(raw),
            s.P_CHURN_RAW: raw,
        }
    )
    if not explain:
        return out.assign(**{name: pd.Series([None] * len(out), dtype=object) for name in s.REASONS})
    reasons = top_reasons(model.contributions(X), X, guide, out[s.P_CHURN].to_numpy()).reset_index(drop=True)
    return pd.concat([out, reasons], axis=1)
