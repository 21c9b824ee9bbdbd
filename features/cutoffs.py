"""Which snapshots to build: the training cutoffs and the scoring cutoff, resolved against the data's dates."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from features.errors import InputError


@dataclasses.dataclass(frozen=True)
class Cutoffs:
    """Training cutoffs (each with a fully observed label horizon) and the scoring cutoff (no labels)."""

    training: tuple[dt.date, ...]
    scoring: dt.date
    skipped_before_data: tuple[dt.date, ...]


def resolve_cutoffs(
    first_day: dt.date,
    last_day: dt.date,
    *,
    explicit: Sequence[dt.date],
    every_days: int,
    count: int,
    horizon_days: int,
    as_of: dt.date | None,
    as_of_key: str = "score.as_of",
) -> Cutoffs:
    """Resolve the configured cutoffs against the data.

    The scoring cutoff is the day before ``as_of`` (default: the last transaction day); a date further than one
    horizon past the data is an error (the log is stale, not the customers). A training cutoff is
    usable only if its whole label horizon lies on or before the scoring cutoff and the last transaction day:
    when back-filling an old week, no later data may train the model. ``count`` generated cutoffs step back
    ``every_days`` from the last usable one; generated cutoffs before the first transaction day are skipped
    (and reported), explicit ones that do not fit are an error. ``as_of_key`` names the setting ``as_of`` came
    from in errors (the training stages anchor on ``train.as_of``).
    """
    scoring = scoring_cutoff(first_day, last_day, horizon_days=horizon_days, as_of=as_of, as_of_key=as_of_key)
    last_usable = min(scoring, last_day) - dt.timedelta(days=horizon_days)
    for c in explicit:
        if c > last_usable:
            raise InputError(
                f"features.cutoffs: {c} + horizon_days {horizon_days} ends after the last observed day "
                f"{min(scoring, last_day)} (the labels would be incomplete); use cutoffs on or before "
                f"{last_usable}, or shorten features.horizon_days"
            )
        if c < first_day:
            raise InputError(
                f"features.cutoffs: {c} is before the first transaction day {first_day}; no customer has history"
            )
    generated = [last_usable - dt.timedelta(days=every_days * k) for k in range(count)]
    skipped = tuple(sorted(c for c in generated if c < first_day))
    training = tuple(sorted({*explicit, *(c for c in generated if c >= first_day)}))
    if not training:
        raise InputError(
            f"no training cutoff fits the data ({first_day} to {last_day}) with horizon_days {horizon_days}: "
            "set features.cutoffs or features.cutoff_schedule.count, or shorten features.horizon_days"
        )
    return Cutoffs(training=training, scoring=scoring, skipped_before_data=skipped)


def scoring_cutoff(
    first_day: dt.date, last_day: dt.date, *, horizon_days: int, as_of: dt.date | None, as_of_key: str = "score.as_of"
) -> dt.date:
    """The last day of history before ``as_of`` (default: the last transaction day), checked against the data.

    A date further than one horizon past the data is an error: every customer would look silent for want of data,
    not of purchases, and be scored as churned.
    """
    last = (as_of - dt.timedelta(days=1)) if as_of is not None else last_day
    if last < first_day:
        raise InputError(
            f"{as_of_key}={as_of} is on or before the first transaction day {first_day}: there is no history "
            f"before it; set {as_of_key} to a later date or null"
        )
    if last > last_day + dt.timedelta(days=horizon_days):
        raise InputError(
            f"{as_of_key}={as_of} is more than horizon_days {horizon_days} after the last transaction day "
            f"{last_day}: the log is missing the recent weeks; load a newer export or set {as_of_key} to "
            f"{last_day + dt.timedelta(days=1)} or earlier"
        )
    return last
