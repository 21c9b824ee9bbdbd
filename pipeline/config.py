"""Typed, frozen configuration: the only reader of params.yaml.

One dataclass per params.yaml section. Nothing has a default in code: a missing or unknown key fails at load
with its dotted name, and a bad value raises ``ConfigError`` (a ``ValueError``) naming the key and the value.
A stage loads exactly the sections it declares under ``params:`` in dvc.yaml, so DVC reruns it when they change.
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime as dt
import difflib
import io
import math
import re
import types
import typing
import zoneinfo
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from features.errors import InputError
from features.schemas import MAX_ABS_AMOUNT
from features.timeformat import format_problem
from models.gate import CHURN_GATE_METRICS, Rule


class ConfigError(InputError):
    """params.yaml is missing a key, has an unknown one, or holds a value of the wrong type or range."""


# The largest whole number a setting may hold: LightGBM's and NumPy's seeds and counts are 32-bit.
MAX_INT = 2**31 - 1
# The longest span of days a setting may name (100 years): beyond it, date arithmetic leaves the calendar.
MAX_DAYS = 36_525


def _check_days(key: str, value: int) -> None:
    if not 1 <= value <= MAX_DAYS:
        raise ConfigError(f"{key} must be between 1 and {MAX_DAYS:,} days (100 years), got {value:,}")


# Settings of the clv and churn sections that only the score stage reads: the training stages' params in
# dvc.yaml list every other key, so that changing one of these rescores the week and retrains nothing.
# Who ranks the weekly list: auto = the backtest's choice (the model only where it beats the best rule with its
# gain shown), or one named scorer.
CHURN_SCORERS = ("auto", "model", "btyd", "recency", "rfm")

SCORING_ONLY: dict[str, tuple[str, ...]] = {
    "clv": ("acquisition_cost", "value_tier_quantiles", "registry.score_version"),
    "churn": ("max_explained_customers", "drift_bins", "registry.score_version"),
}


@dataclasses.dataclass(frozen=True)
class SparkConfig:
    """Where Spark runs when ``base.engine`` is ``spark``."""

    master: str
    shuffle_partitions: int
    driver_memory_mb: int

    def __post_init__(self) -> None:
        if not self.master.strip():
            raise ConfigError("base.spark.master must name a master, e.g. local[2] or spark://host:7077")
        if self.shuffle_partitions < 1:
            raise ConfigError(f"base.spark.shuffle_partitions must be >= 1, got {self.shuffle_partitions}")
        if self.driver_memory_mb < 512:
            raise ConfigError(f"base.spark.driver_memory_mb must be >= 512, got {self.driver_memory_mb}")


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    seed: int
    time_unit: Literal["days", "weeks"]
    mlflow_experiment: str
    currency: str
    duckdb_memory_limit_mb: int
    engine: Literal["duckdb", "spark"]
    spark: SparkConfig

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ConfigError(f"base.seed must be a whole number from 0 to {MAX_INT:,}, got {self.seed}")
        if not self.mlflow_experiment.strip() or len(self.mlflow_experiment) > 500:
            raise ConfigError(
                f"base.mlflow_experiment must be a name of 1 to 500 characters, got {self.mlflow_experiment!r}"
            )
        if self.duckdb_memory_limit_mb < 256:
            raise ConfigError(f"base.duckdb_memory_limit_mb must be >= 256, got {self.duckdb_memory_limit_mb}")
        if not re.fullmatch(r"[A-Z]{3}", self.currency):
            raise ConfigError(f"base.currency must be a three-letter ISO 4217 code such as USD, got {self.currency!r}")


@dataclasses.dataclass(frozen=True)
class ColumnMap:
    """Which source column holds what. Spend is ``amount``, or ``quantity`` x ``unit_price``."""

    customer_id: str
    timestamp: str
    amount: str | None
    quantity: str | None
    unit_price: str | None
    order_id: str | None

    def __post_init__(self) -> None:
        by_amount = self.amount is not None and self.quantity is None and self.unit_price is None
        by_product = self.amount is None and self.quantity is not None and self.unit_price is not None
        if not (by_amount or by_product):
            raise ConfigError(
                "ingest.columns: set either 'amount', or both 'quantity' and 'unit_price' (and the other "
                f"null); got amount={self.amount!r}, quantity={self.quantity!r}, unit_price={self.unit_price!r}"
            )

    def source_columns(self) -> list[str]:
        """The mapped source column names, each once, in mapping order."""
        names = [self.customer_id, self.timestamp, self.amount, self.quantity, self.unit_price, self.order_id]
        return list(dict.fromkeys(n for n in names if n is not None))


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    source: str
    columns: ColumnMap
    csv_delimiter: str
    encoding: str
    timestamp_format: str
    timezone: str
    duplicate_key: tuple[str, ...]
    cancellation_prefix: str | None
    returns: Literal["net", "drop"]
    zero_amount: Literal["keep", "quarantine"]
    max_abs_amount: float
    thousands_separator: str | None

    def __post_init__(self) -> None:
        if not 0 < self.max_abs_amount <= MAX_ABS_AMOUNT:  # features sum amounts as decimals of 18 digits
            raise ConfigError(
                f"ingest.max_abs_amount must be > 0 and at most {MAX_ABS_AMOUNT:.0f}, got {self.max_abs_amount}"
            )
        if self.thousands_separator is not None and (
            len(self.thousands_separator) != 1 or self.thousands_separator in "0123456789.-+eE"
        ):
            raise ConfigError(
                "ingest.thousands_separator must be one character that cannot be part of a number, such as ',' "
                f"(amounts use '.' for decimals); got {self.thousands_separator!r}"
            )
        if self.duplicate_key and self.columns.order_id not in self.duplicate_key:
            # Without an order or line id, two identical lines may be two real purchases (CDNOW has 255).
            raise ConfigError(
                f"ingest.duplicate_key={list(self.duplicate_key)!r} must include the mapped order id column "
                f"(ingest.columns.order_id={self.columns.order_id!r}), or be [] to keep identical lines"
            )
        if self.cancellation_prefix is not None and self.columns.order_id is None:
            raise ConfigError(
                f"ingest.cancellation_prefix={self.cancellation_prefix!r} needs ingest.columns.order_id to be set"
            )
        known_zones = zoneinfo.available_timezones()  # empty if the system has no time zone database
        if known_zones and self.timezone not in known_zones:
            close = difflib.get_close_matches(self.timezone, sorted(known_zones), n=1)
            raise ConfigError(
                f"ingest.timezone {self.timezone!r} is not an IANA time zone"
                + (f" (did you mean {close[0]!r}?)" if close else "; e.g. UTC, Europe/London, America/New_York")
            )
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise ConfigError(
                f"ingest.encoding {self.encoding!r} is not an encoding Python knows; e.g. utf-8, latin-1, cp1252"
            ) from None
        try:  # codecs.lookup also knows transforms (rot13, base64, zlib, hex), which cannot decode a file to text
            b"a".decode(self.encoding, errors="ignore")
        except (LookupError, UnicodeError):  # 'undefined' raises UnicodeError whatever the errors handler
            raise ConfigError(
                f"ingest.encoding {self.encoding!r} is a codec that does not decode bytes to text; use a text "
                "encoding, e.g. utf-8, latin-1, cp1252"
            ) from None
        if len(self.csv_delimiter) != 1:
            raise ConfigError(f"ingest.csv_delimiter must be one character, got {self.csv_delimiter!r}")
        problem = format_problem(self.timestamp_format)
        if problem is not None:
            raise ConfigError(f"ingest.timestamp_format {self.timestamp_format!r}: {problem}")


@dataclasses.dataclass(frozen=True)
class CutoffSchedule:
    """Training cutoffs generated backwards from the last cutoff whose horizon is fully observed."""

    every_days: int
    count: int

    def __post_init__(self) -> None:
        _check_days("features.cutoff_schedule.every_days", self.every_days)
        if self.count < 0:
            raise ConfigError(f"features.cutoff_schedule.count must be >= 0, got {self.count}")
        if self.count * self.every_days > MAX_DAYS:
            raise ConfigError(
                f"features.cutoff_schedule: count {self.count:,} x every_days {self.every_days:,} reaches back more "
                f"than {MAX_DAYS:,} days (100 years); lower the count"
            )


@dataclasses.dataclass(frozen=True)
class FeaturesConfig:
    cutoffs: tuple[dt.date, ...]
    cutoff_schedule: CutoffSchedule
    horizon_days: int
    windows_days: tuple[int, ...]
    trend_window_days: int
    max_customers_per_training_cutoff: int

    def __post_init__(self) -> None:
        for key in ("horizon_days", "trend_window_days"):
            _check_days(f"features.{key}", getattr(self, key))
        if self.max_customers_per_training_cutoff < 1000:
            raise ConfigError(
                "features.max_customers_per_training_cutoff must be >= 1000, got "
                f"{self.max_customers_per_training_cutoff}"
            )
        if not self.windows_days or len(set(self.windows_days)) != len(self.windows_days):
            raise ConfigError(f"features.windows_days must be distinct whole days >= 1, got {list(self.windows_days)}")
        for i, days in enumerate(self.windows_days):
            _check_days(f"features.windows_days[{i}]", days)


@dataclasses.dataclass(frozen=True)
class ValueTierQuantiles:
    """CLV quantiles where the tiers start: ``high`` from the ``high`` quantile, ``mid`` from ``mid``, else low."""

    high: float
    mid: float

    def __post_init__(self) -> None:
        if not 0 < self.mid < self.high < 1:
            raise ConfigError(
                f"clv.value_tier_quantiles: need 0 < mid < high < 1, got mid={self.mid}, high={self.high}"
            )


REGISTERED_NAME = re.compile(r"[^\W_][\w .-]{0,199}")

SelectionMetric = Literal[
    "purchases_abs_pct_error", "purchases_mae", "purchases_rmse", "spend_mae", "spearman", "gini", "top_decile_capture"
]


@dataclasses.dataclass(frozen=True)
class RegistryConfig:
    """How a training stage registers its model and when the new version takes the alias ``champion``.

    ``metric`` is judged on the stage's holdout; the new version takes ``champion`` only when the lower bound of its
    paired gain over the champion on the same holdout rows, at ``evidence_level`` (``evidence_resamples`` bootstrap
    resamples of at most ``evidence_max_rows`` rows), is above zero and at least ``min_improvement`` (in the
    metric's units). ``score_version`` null scores with whichever version holds ``champion``; a number pins that
    registered version.
    """

    model_name: str
    metric: str
    min_improvement: float
    evidence_level: float
    evidence_resamples: int
    evidence_max_rows: int
    score_version: int | None

    def rule(self, seed: int) -> Rule:
        """The gate's rule, its resamples drawn with ``seed``."""
        return Rule(
            self.metric,
            self.min_improvement,
            level=self.evidence_level,
            resamples=self.evidence_resamples,
            max_rows=self.evidence_max_rows,
            seed=seed,
        )

    def check(self, where: str, metrics: tuple[str, ...]) -> None:
        if not REGISTERED_NAME.fullmatch(self.model_name):
            # MLflow refuses '/' and ':' and names that are not their own normalised path ('.', '..x')
            raise ConfigError(
                f"{where}.model_name must be letters, digits, '_', '-', '.' or spaces, starting with a letter or "
                f"digit (at most 200 characters); got {self.model_name!r}"
            )
        if self.metric not in metrics:
            raise ConfigError(f"{where}.metric must be one of {', '.join(metrics)}; got {self.metric!r}")
        if self.min_improvement < 0:
            raise ConfigError(f"{where}.min_improvement must be >= 0, got {self.min_improvement}")
        if not 0.5 <= self.evidence_level < 1:
            raise ConfigError(f"{where}.evidence_level must be in [0.5, 1), e.g. 0.95; got {self.evidence_level}")
        if self.evidence_resamples < 100:
            raise ConfigError(f"{where}.evidence_resamples must be >= 100, got {self.evidence_resamples}")
        if self.evidence_max_rows < 1000:
            raise ConfigError(f"{where}.evidence_max_rows must be >= 1000, got {self.evidence_max_rows}")
        if self.score_version is not None and self.score_version < 1:
            raise ConfigError(f"{where}.score_version must be a registered version (1, 2, ...) or null")


RankingMetric = Literal["gini", "spearman", "top_decile_capture"]


@dataclasses.dataclass(frozen=True)
class ClvServingConfig:
    """Which CLV sets the value tiers and the CLV column (``clv.model: auto``): the backtest's best by a ranking
    metric, the challenger only when the lower bound of its pooled paired gain clears zero and ``min_improvement``."""

    metric: RankingMetric
    min_improvement: float

    def __post_init__(self) -> None:
        if not 0 <= self.min_improvement < 1:
            raise ConfigError(f"clv.serving.min_improvement must be in [0, 1), got {self.min_improvement}")


@dataclasses.dataclass(frozen=True)
class ClvChallengerConfig:
    """The LightGBM CLV challenger (``models.value_booster``), judged in the backtest beside the BTYD models."""

    enabled: bool
    tweedie_variance_power: float

    def __post_init__(self) -> None:
        if not 1 < self.tweedie_variance_power < 2:
            raise ConfigError(
                "clv.challenger.tweedie_variance_power must lie strictly between 1 (Poisson) and 2 (Gamma), "
                f"got {self.tweedie_variance_power}"
            )


@dataclasses.dataclass(frozen=True)
class ClvConfig:
    model: Literal["auto", "bgnbd", "mbgnbd", "pareto_nbd"]
    selection_metric: SelectionMetric
    calibration_cutoff: dt.date | None
    penalizer_ladder: tuple[float, ...]
    clv_horizon_months: int
    discount_rate_monthly: float
    margin_ratio: float
    acquisition_cost: float | None
    value_tier_quantiles: ValueTierQuantiles
    bootstrap_samples: int
    bootstrap_processes: int
    registry: RegistryConfig
    serving: ClvServingConfig
    challenger: ClvChallengerConfig

    def __post_init__(self) -> None:
        self.registry.check("clv.registry", typing.get_args(SelectionMetric))
        ladder = list(self.penalizer_ladder)
        if not ladder or min(ladder) < 0 or ladder != sorted(set(ladder)):
            raise ConfigError(f"clv.penalizer_ladder must be distinct increasing values >= 0, got {ladder}")
        if not 1 <= self.clv_horizon_months <= 1200:
            raise ConfigError(f"clv.clv_horizon_months must be between 1 and 1,200, got {self.clv_horizon_months}")
        if not 0 <= self.discount_rate_monthly < 1:
            raise ConfigError(f"clv.discount_rate_monthly must be in [0, 1), got {self.discount_rate_monthly}")
        if not 0 < self.margin_ratio <= 1:
            raise ConfigError(f"clv.margin_ratio must be in (0, 1], got {self.margin_ratio}")
        if self.acquisition_cost is not None and self.acquisition_cost < 0:
            raise ConfigError(f"clv.acquisition_cost must be >= 0 or null, got {self.acquisition_cost}")
        if self.bootstrap_samples < 2:
            raise ConfigError(f"clv.bootstrap_samples must be >= 2, got {self.bootstrap_samples}")
        if self.bootstrap_processes < 1:
            raise ConfigError(f"clv.bootstrap_processes must be >= 1, got {self.bootstrap_processes}")


@dataclasses.dataclass(frozen=True)
class LightgbmConfig:
    """LightGBM hyper-parameters of the churn classifier (early stopping picks the number of trees)."""

    learning_rate: float
    num_leaves: int
    min_child_samples: int
    feature_fraction: float
    bagging_fraction: float
    lambda_l2: float
    max_rounds: int
    early_stopping_rounds: int
    threads: int

    def __post_init__(self) -> None:
        if not 0 < self.learning_rate <= 1:
            raise ConfigError(f"churn.lightgbm.learning_rate must be in (0, 1], got {self.learning_rate}")
        for key in ("feature_fraction", "bagging_fraction"):
            if not 0 < getattr(self, key) <= 1:
                raise ConfigError(f"churn.lightgbm.{key} must be in (0, 1], got {getattr(self, key)}")
        for key in ("num_leaves", "min_child_samples", "max_rounds", "early_stopping_rounds", "threads"):
            if getattr(self, key) < (2 if key == "num_leaves" else 1):
                raise ConfigError(f"churn.lightgbm.{key} is too small: {getattr(self, key)}")
        if self.lambda_l2 < 0:
            raise ConfigError(f"churn.lightgbm.lambda_l2 must be >= 0, got {self.lambda_l2}")


ATTRIBUTE_AGGREGATES = ("latest", "mean", "sum", "min", "max", "count")


@dataclasses.dataclass(frozen=True)
class AttributeTable:
    """An optional table of customer attributes (surveys, NPS, support tickets, demographics) joined as features.

    Each row belongs to ``customer_id`` and is known from ``timestamp`` on: a cutoff uses the rows on or before its
    day (within ``window_days`` of it when set). ``features`` lists ``column:aggregate`` pairs, aggregate one of
    latest, mean, sum, min, max, count; the feature is named ``<name>_<column>_<aggregate>``.
    """

    name: str
    path: str
    customer_id: str
    timestamp: str
    window_days: int | None
    features: tuple[str, ...]

    def __post_init__(self) -> None:
        where = f"churn.attributes[{self.name}]"
        if not self.name.isidentifier():
            raise ConfigError(f"{where}.name must be a plain identifier, got {self.name!r}")
        if self.window_days is not None:
            _check_days(f"{where}.window_days", self.window_days)
        if not self.features:
            raise ConfigError(f"{where}.features: list at least one column:aggregate")
        for item in self.features:
            column, _, how = item.rpartition(":")
            if not column or how not in ATTRIBUTE_AGGREGATES:
                raise ConfigError(
                    f"{where}.features: {item!r} is not column:aggregate with aggregate one of "
                    f"{', '.join(ATTRIBUTE_AGGREGATES)}"
                )

    def pairs(self) -> list[tuple[str, str]]:
        return [(item.rpartition(":")[0], item.rpartition(":")[2]) for item in self.features]


@dataclasses.dataclass(frozen=True)
class ChurnConfig:
    population_lookback_days: int
    campaign_list_size: int
    btyd_features: bool
    penalizer_ladder: tuple[float, ...]
    calibration: Literal["auto", "isotonic", "sigmoid"]
    lightgbm: LightgbmConfig
    attributes: tuple[AttributeTable, ...]
    drift_bins: int
    importance_rows: int
    max_training_rows: int
    max_validation_rows: int
    max_explained_customers: int
    registry: RegistryConfig

    def __post_init__(self) -> None:
        self.registry.check("churn.registry", CHURN_GATE_METRICS)
        if not 2 <= self.drift_bins <= 100:
            raise ConfigError(f"churn.drift_bins must be in [2, 100], got {self.drift_bins}")
        if self.max_training_rows < 1000:
            raise ConfigError(f"churn.max_training_rows must be >= 1000, got {self.max_training_rows}")
        if self.max_validation_rows < 1000:
            raise ConfigError(f"churn.max_validation_rows must be >= 1000, got {self.max_validation_rows}")
        if self.max_explained_customers < 1:
            raise ConfigError(f"churn.max_explained_customers must be >= 1, got {self.max_explained_customers}")
        if self.importance_rows < 100:
            raise ConfigError(f"churn.importance_rows must be >= 100, got {self.importance_rows}")
        _check_days("churn.population_lookback_days", self.population_lookback_days)
        if self.campaign_list_size < 1:
            raise ConfigError(f"churn.campaign_list_size must be >= 1, got {self.campaign_list_size}")
        ladder = list(self.penalizer_ladder)
        if not ladder or min(ladder) < 0 or ladder != sorted(set(ladder)):
            raise ConfigError(f"churn.penalizer_ladder must be distinct increasing values >= 0, got {ladder}")
        names = [a.name for a in self.attributes]
        if len(set(names)) != len(names):
            raise ConfigError(f"churn.attributes: names must be distinct, got {names}")


@dataclasses.dataclass(frozen=True)
class RiskTierThresholds:
    """Calibrated ``p_churn`` where a risk tier starts: ``high`` from ``high``, ``medium`` from ``medium``, else low."""

    high: float
    medium: float

    def __post_init__(self) -> None:
        if not 0 < self.medium < self.high < 1:
            raise ConfigError(
                f"score.risk_tier_thresholds: need 0 < medium < high < 1, got medium={self.medium}, high={self.high}"
            )


@dataclasses.dataclass(frozen=True)
class Segment:
    """One cell of the value x risk grid: the name marketing sees and the retention action it gets."""

    name: str
    action: str

    def __post_init__(self) -> None:
        if not self.name.strip() or not self.action.strip():
            raise ConfigError(f"score.segments: every segment needs a name and an action, got {self!r}")


@dataclasses.dataclass(frozen=True)
class RiskRow:
    """The segments of one value tier, by risk tier."""

    high: Segment
    medium: Segment
    low: Segment


@dataclasses.dataclass(frozen=True)
class SegmentGrid:
    """Value tier (rows) x risk tier (columns) -> segment."""

    high: RiskRow
    mid: RiskRow
    low: RiskRow

    def cell(self, value_tier: str, risk_tier: str) -> Segment:
        return typing.cast(Segment, getattr(getattr(self, value_tier), risk_tier))

    def __post_init__(self) -> None:
        names = [getattr(getattr(self, v), r).name for v in ("high", "mid", "low") for r in ("high", "medium", "low")]
        if len(set(names)) != len(names):
            raise ConfigError(f"score.segments: the nine segment names must be distinct, got {names}")


@dataclasses.dataclass(frozen=True)
class ScoreConfig:
    as_of: dt.date | None
    churn_scorer: str
    risk_tier_thresholds: RiskTierThresholds
    segments: SegmentGrid
    summary_top_customers: int
    drift_warning_psi: float
    pseudonymise_ids: bool

    def __post_init__(self) -> None:
        if self.churn_scorer not in CHURN_SCORERS:
            raise ConfigError(
                f"score.churn_scorer must be one of {', '.join(CHURN_SCORERS)}; got {self.churn_scorer!r}"
            )
        if self.summary_top_customers < 1:
            raise ConfigError(f"score.summary_top_customers must be >= 1, got {self.summary_top_customers}")
        if self.drift_warning_psi <= 0:
            raise ConfigError(f"score.drift_warning_psi must be > 0, got {self.drift_warning_psi}")


@dataclasses.dataclass(frozen=True)
class BacktestConfig:
    """The backtest stage: how many evaluation origins, how many customers per cutoff, and the paired intervals
    (``evidence_level``, ``evidence_resamples`` bootstrap resamples of at most ``evidence_max_rows`` pooled rows)."""

    origins: int
    max_rows_per_cutoff: int
    evidence_level: float
    evidence_resamples: int
    evidence_max_rows: int

    def __post_init__(self) -> None:
        if not 1 <= self.origins <= 200:
            raise ConfigError(f"backtest.origins must be between 1 and 200, got {self.origins}")
        if self.max_rows_per_cutoff < 1000:
            raise ConfigError(f"backtest.max_rows_per_cutoff must be >= 1000, got {self.max_rows_per_cutoff}")
        if not 0.5 <= self.evidence_level < 1:
            raise ConfigError(f"backtest.evidence_level must be in [0.5, 1), e.g. 0.95; got {self.evidence_level}")
        if self.evidence_resamples < 100:
            raise ConfigError(f"backtest.evidence_resamples must be >= 100, got {self.evidence_resamples}")
        if self.evidence_max_rows < 1000:
            raise ConfigError(f"backtest.evidence_max_rows must be >= 1000, got {self.evidence_max_rows}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """When the models are trained: on history before ``as_of`` (null: all of the log), and how old the serving
    models may grow before ``make weekly`` retrains them."""

    as_of: dt.date | None
    max_model_age_days: int

    def __post_init__(self) -> None:
        _check_days("train.max_model_age_days", self.max_model_age_days)


@dataclasses.dataclass(frozen=True)
class CampaignAction:
    """What one retention action of ``score.segments`` costs per contact, and the reduction in the probability of
    churning it is assumed to bring until a measured one replaces it (``models.campaign``)."""

    action: str
    cost_per_contact: float
    assumed_effect: float

    def __post_init__(self) -> None:
        if not self.action.strip():
            raise ConfigError("campaign.actions: every entry needs an action name")
        if self.cost_per_contact < 0:
            raise ConfigError(f"campaign.actions: cost_per_contact of {self.action!r} must be >= 0")
        if not 0 <= self.assumed_effect <= 1:
            raise ConfigError(
                f"campaign.actions: assumed_effect of {self.action!r} is a reduction in p_churn, in [0, 1]; "
                f"got {self.assumed_effect}"
            )


@dataclasses.dataclass(frozen=True)
class UpliftConfig:
    """When an uplift model is fitted on the assignment log, and the evidence it needs to rank the list."""

    min_customers: int
    holdout_weeks: int
    min_improvement: float
    evidence_resamples: int

    def __post_init__(self) -> None:
        if self.min_customers < 500:
            raise ConfigError(f"campaign.uplift.min_customers must be >= 500, got {self.min_customers}")
        if self.holdout_weeks < 1:
            raise ConfigError(f"campaign.uplift.holdout_weeks must be >= 1, got {self.holdout_weeks}")
        if self.min_improvement < 0:
            raise ConfigError(f"campaign.uplift.min_improvement must be >= 0, got {self.min_improvement}")
        if self.evidence_resamples < 100:
            raise ConfigError(f"campaign.uplift.evidence_resamples must be >= 100, got {self.evidence_resamples}")


@dataclasses.dataclass(frozen=True)
class CampaignConfig:
    """The campaign loop: the control group held out of each weekly list, what contacts cost and are worth, how
    lift is measured, and when an uplift model ranks the list."""

    control_share: float
    min_control_per_segment: int
    budget: float | None
    no_contact_actions: tuple[str, ...]
    actions: tuple[CampaignAction, ...]
    evidence_level: float
    power: float
    contacts: str | None
    uplift: UpliftConfig

    def __post_init__(self) -> None:
        if self.contacts is not None and not self.contacts.strip():
            raise ConfigError("campaign.contacts: a file path, or null")
        if not 0 < self.control_share < 1:
            raise ConfigError(f"campaign.control_share must be in (0, 1), got {self.control_share}")
        if self.min_control_per_segment < 0:
            raise ConfigError(f"campaign.min_control_per_segment must be >= 0, got {self.min_control_per_segment}")
        if self.budget is not None and self.budget <= 0:
            raise ConfigError(f"campaign.budget must be > 0 (or null: no cap), got {self.budget}")
        if not 0.5 <= self.evidence_level < 1:
            raise ConfigError(f"campaign.evidence_level must be in [0.5, 1), e.g. 0.95; got {self.evidence_level}")
        if not 0.5 <= self.power < 1:
            raise ConfigError(f"campaign.power must be in [0.5, 1), e.g. 0.8; got {self.power}")
        names = [a.action for a in self.actions]
        twice = sorted({n for n in names if names.count(n) > 1} | (set(names) & set(self.no_contact_actions)))
        if twice:
            raise ConfigError(f"campaign.actions: listed twice or also under no_contact_actions: {twice}")

    def action(self, name: str) -> CampaignAction | None:
        return next((a for a in self.actions if a.action == name), None)

    def check_against(self, grid_actions: Iterable[str]) -> None:
        """Every action of ``score.segments`` must be priced here or named as no contact, and nothing else."""
        used = set(grid_actions)
        known = {a.action for a in self.actions} | set(self.no_contact_actions)
        missing, unused = sorted(used - known), sorted(known - used)
        if missing:
            raise ConfigError(
                f"campaign.actions: no cost and effect for the action(s) {missing} of score.segments; add them "
                "to campaign.actions, or to campaign.no_contact_actions if nobody is contacted"
            )
        if unused:
            raise ConfigError(f"campaign: the action(s) {unused} are in no cell of score.segments (misspelt?)")


def ingest_source(params: dict[str, Any]) -> str:
    """``ingest.source`` alone, for the stages that name their registered models after the data they learn from."""
    source = params.get("ingest", {}).get("source") if isinstance(params.get("ingest"), dict) else None
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"ingest.source: expected a path or a builtin log name, got {source!r}")
    return source


def _date_setting(params: dict[str, Any], key: str, meaning: str) -> dt.date | None:
    name, field = key.split(".")
    raw = params.get(name)
    if not isinstance(raw, dict) or field not in raw:
        raise ConfigError(f"params.yaml: {key} is missing (null {meaning})")
    return typing.cast(dt.date | None, _coerce(raw[field], dt.date | None, key))


def scoring_as_of(params: dict[str, Any]) -> dt.date | None:
    """``score.as_of`` alone: the snapshot stage needs the scoring date but none of the other score settings."""
    return _date_setting(params, "score.as_of", "scores as of the day after the last purchase")


def training_as_of(params: dict[str, Any]) -> dt.date | None:
    """``train.as_of`` alone: the training date the features and training stages anchor on."""
    return _date_setting(params, "train.as_of", "trains on the whole log")


AS_OF_KEYS = ("score.as_of", "train.as_of")


def set_as_of(path: str | Path, key: str, as_of: dt.date | None) -> None:
    """Set ``key`` (``score.as_of`` or ``train.as_of``) in ``path`` in place, written the way ``dvc exp run -S``
    writes a value back (ruamel.yaml's round trip, as DVC uses it): params.yaml is kept in that form, so either
    way one value changes one line, and every other line and comment stays as it was.
    """
    if key not in AS_OF_KEYS:
        raise ConfigError(f"set_as_of: {key} is not one of {AS_OF_KEYS}")
    from ruamel.yaml import YAML
    from ruamel.yaml.error import YAMLError

    name, field = key.split(".")
    p = Path(path)
    rt = YAML()  # round trip, block style: DVC's writer (dvc.utils.serialize._yaml)
    rt.default_flow_style = False
    try:
        doc = rt.load(p.read_text(encoding="utf-8"))
    except YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get(name), dict) or field not in doc[name]:
        raise ConfigError(f"{p}: no {key} line to set; add `{field}:` under `{name}:`")
    doc[name][field] = None if as_of is None else as_of.isoformat()
    out = io.StringIO()
    rt.dump(doc, out)
    text = out.getvalue()
    if _date_setting(yaml.safe_load(text), key, "") != as_of:  # never leave a file that says something else
        raise ConfigError(f"{p}: could not set {key} to {as_of}")
    p.write_text(text, encoding="utf-8")


def set_scoring_as_of(path: str | Path, as_of: dt.date | None) -> None:
    set_as_of(path, "score.as_of", as_of)


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.config --set-as-of YYYY-MM-DD|null``: what ``make weekly`` runs before each week."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(description="Set score.as_of in params.yaml, keeping the file's layout.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set-as-of", required=True, metavar="YYYY-MM-DD|null")
    args = parser.parse_args(argv)
    try:
        day = None if args.set_as_of == "null" else _coerce(args.set_as_of, dt.date, "AS_OF")
        set_scoring_as_of(args.params, day)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


SECTIONS: dict[str, type] = {
    "base": BaseConfig,
    "ingest": IngestConfig,
    "features": FeaturesConfig,
    "clv": ClvConfig,
    "churn": ChurnConfig,
    "score": ScoreConfig,
    "train": TrainConfig,
    "backtest": BacktestConfig,
    "campaign": CampaignConfig,
}

C = TypeVar("C")


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, except that a key given twice in one mapping is an error instead of the last one winning."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise ConfigError(
                    f"params: key {key!r} is given twice in one mapping (lines {seen[key].start_mark.line + 1} and "
                    f"{key_node.start_mark.line + 1}); YAML would silently keep the last one: delete one of them"
                )
            if isinstance(key, typing.Hashable):
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def parse_params(text: str, where: str) -> dict[str, Any]:
    """params.yaml's text as a mapping of known sections: a duplicate key or an unknown section is an error.

    A misspelt section (``scroe:``) would otherwise be ignored, and the pipeline would run without the setting the
    user wrote there (say ``pseudonymise_ids: true``).
    """
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds no objects
    except ConfigError as exc:
        raise ConfigError(f"{where}: {str(exc).removeprefix('params: ')}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of sections at the top level")
    unknown = [k for k in data if k not in SECTIONS]
    if unknown:
        name = str(unknown[0])
        close = difflib.get_close_matches(name, list(SECTIONS), n=1)
        raise ConfigError(
            f"{where}: unknown section {name!r}"
            + (f" (did you mean {close[0]!r}?)" if close else "")
            + f"; the sections are {', '.join(SECTIONS)}"
        )
    return data


def load_params(path: str | Path) -> dict[str, Any]:
    """Read params.yaml as a mapping, with a one-line error when it is missing, unreadable or not a mapping."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a params file; pass --params <file>")
    if not p.is_file():
        raise ConfigError(f"{p}: params file not found; run from the project root or pass --params")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from exc
    except OSError as exc:
        raise ConfigError(f"{p}: cannot be read ({exc.strerror or exc}); check its permissions") from exc
    return parse_params(text, str(p))


def section(params: dict[str, Any], name: str, cls: type[C]) -> C:
    """Build the dataclass ``cls`` from ``params[name]``, strictly."""
    if name not in params:
        raise ConfigError(f"params.yaml: section '{name}' is missing")
    return typing.cast(C, _build(cls, params[name], name))


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(f'{where}.{k}' for k in unknown)}")
    missing = [n for n in names if n not in raw]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(f'{where}.{k}' for k in missing)}")
    values = {n: _coerce(raw[n], hints[n], f"{where}.{n}") for n in names}
    return cls(**values)


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], key)
    if value is None:
        raise ConfigError(f"{key}: must be set (got null)")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, args))}; got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(typing.cast(type, tp), value, key)
    if tp is dt.date:
        if isinstance(value, dt.datetime):
            return value.date()
        if isinstance(value, dt.date):
            return value
        if isinstance(value, str):
            try:
                return dt.date.fromisoformat(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a date YYYY-MM-DD, got {value!r}")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected a whole number, got {value!r}")
        if abs(value) > MAX_INT:  # beyond what LightGBM, NumPy seeds and date arithmetic take
            raise ConfigError(f"{key}: {value} is out of range (at most {MAX_INT:,} in size)")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if not math.isfinite(value):  # .nan passes every range check written as a comparison
            raise ConfigError(f"{key}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected text, got {value!r}")
        return value
    raise TypeError(f"config type {tp!r} for {key} is not supported")  # a bug in this module, not user input


if __name__ == "__main__":
    main()
