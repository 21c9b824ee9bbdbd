from __future__ import annotations

import datetime as dt

import pytest

from features.cutoffs import resolve_cutoffs
from features.errors import InputError

D = dt.date
FIRST, LAST = D(1997, 1, 1), D(1998, 6, 30)


def test_schedule_steps_back_from_last_observed_day() -> None:
    c = resolve_cutoffs(FIRST, LAST, explicit=[D(1997, 9, 30)], every_days=28, count=3, horizon_days=90, as_of=None)
    assert c.scoring == LAST
    # 1998-06-30 - 90 days = 1998-04-01, then every 28 days back; the explicit date joins them.
    assert c.training == (D(1997, 9, 30), D(1998, 2, 4), D(1998, 3, 4), D(1998, 4, 1))


def test_backfill_uses_only_labels_known_at_as_of() -> None:
    c = resolve_cutoffs(FIRST, LAST, explicit=[], every_days=7, count=1, horizon_days=30, as_of=D(1998, 3, 2))
    assert c.scoring == D(1998, 3, 1)
    assert c.training == (D(1998, 1, 30),)  # 1998-01-30 + 30 days = 1998-03-01, the last day known


def test_explicit_cutoff_with_unobserved_horizon_is_rejected() -> None:
    with pytest.raises(InputError, match=r"1998-05-01 \+ horizon_days 90 ends after the last observed day"):
        resolve_cutoffs(FIRST, LAST, explicit=[D(1998, 5, 1)], every_days=28, count=0, horizon_days=90, as_of=None)


def test_cutoff_before_data_is_rejected() -> None:
    with pytest.raises(InputError, match=r"1996-12-31 is before the first transaction day 1997-01-01"):
        resolve_cutoffs(FIRST, LAST, explicit=[D(1996, 12, 31)], every_days=28, count=0, horizon_days=90, as_of=None)


def test_generated_cutoffs_before_data_are_skipped_and_reported() -> None:
    c = resolve_cutoffs(FIRST, LAST, explicit=[], every_days=100, count=6, horizon_days=90, as_of=None)
    assert c.training == (D(1997, 2, 25), D(1997, 6, 5), D(1997, 9, 13), D(1997, 12, 22), D(1998, 4, 1))
    assert c.skipped_before_data == (D(1996, 11, 17),)


def test_horizon_longer_than_data() -> None:
    with pytest.raises(InputError, match=r"no training cutoff fits the data"):
        resolve_cutoffs(FIRST, LAST, explicit=[], every_days=28, count=3, horizon_days=600, as_of=None)


def test_as_of_before_data() -> None:
    with pytest.raises(InputError, match=r"as_of=1997-01-01 is on or before the first transaction day"):
        resolve_cutoffs(FIRST, LAST, explicit=[], every_days=28, count=3, horizon_days=90, as_of=D(1997, 1, 1))
