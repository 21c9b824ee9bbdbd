from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import (
    BaseConfig,
    ConfigError,
    FeaturesConfig,
    IngestConfig,
    load_params,
    scoring_as_of,
    section,
    set_scoring_as_of,
)

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_load(params: dict[str, Any]) -> None:
    base = section(params, "base", BaseConfig)
    ingest = section(params, "ingest", IngestConfig)
    feats = section(params, "features", FeaturesConfig)
    assert base.time_unit == "weeks"
    assert ingest.source == "cdnow"
    assert feats.cutoffs == (dt.date(1997, 9, 30),)
    assert feats.windows_days == (30, 90, 180, 365)


def test_missing_key_is_named(params: dict[str, Any]) -> None:
    del params["features"]["horizon_days"]
    with pytest.raises(ConfigError, match=r"missing key\(s\) features\.horizon_days"):
        section(params, "features", FeaturesConfig)


def test_unknown_key_is_named(params: dict[str, Any]) -> None:
    params["ingest"]["colums"] = {}
    with pytest.raises(ConfigError, match=r"unknown key\(s\) ingest\.colums"):
        section(params, "ingest", IngestConfig)


def test_nested_missing_key_is_named(params: dict[str, Any]) -> None:
    del params["ingest"]["columns"]["order_id"]
    with pytest.raises(ConfigError, match=r"ingest\.columns\.order_id"):
        section(params, "ingest", IngestConfig)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("horizon_days", "90", r"features\.horizon_days: expected a whole number, got '90'"),
        ("horizon_days", 1.5, r"features\.horizon_days: expected a whole number, got 1\.5"),
        ("horizon_days", True, r"features\.horizon_days: expected a whole number"),
        ("horizon_days", 0, r"features\.horizon_days must be >= 1, got 0"),
        ("windows_days", [30, 30], r"features\.windows_days must be distinct"),
        ("windows_days", 30, r"features\.windows_days: expected a list, got 30"),
    ],
)
def test_bad_feature_values(params: dict[str, Any], key: str, value: object, message: str) -> None:
    params["features"][key] = value
    with pytest.raises(ConfigError, match=message):
        section(params, "features", FeaturesConfig)


def test_bad_literal(params: dict[str, Any]) -> None:
    params["base"]["time_unit"] = "months"
    with pytest.raises(ConfigError, match=r"base\.time_unit: must be one of days, weeks; got 'months'"):
        section(params, "base", BaseConfig)


def test_amount_and_quantity_are_exclusive(params: dict[str, Any]) -> None:
    params["ingest"]["columns"]["quantity"] = "number_of_cds"
    with pytest.raises(ConfigError, match=r"set either 'amount', or both 'quantity' and 'unit_price'"):
        section(params, "ingest", IngestConfig)


@pytest.mark.parametrize("value", [0, -5.0, 1e12])
def test_max_abs_amount_is_bounded(params: dict[str, Any], value: float) -> None:
    params["ingest"]["max_abs_amount"] = value  # amounts are summed as exact decimals: 12 digits before the point
    with pytest.raises(ConfigError, match=r"ingest\.max_abs_amount must be > 0 and at most 999999999999, got"):
        section(params, "ingest", IngestConfig)


def test_duplicate_key_needs_order_id(params: dict[str, Any]) -> None:
    params["ingest"]["duplicate_key"] = ["customer_id", "date"]
    with pytest.raises(ConfigError, match=r"must include the mapped order id column"):
        section(params, "ingest", IngestConfig)


def test_missing_section(params: dict[str, Any]) -> None:
    del params["base"]
    with pytest.raises(ConfigError, match=r"section 'base' is missing"):
        section(params, "base", BaseConfig)


def test_set_scoring_as_of_changes_one_line(tmp_path: Path) -> None:
    target = tmp_path / "params.yaml"
    target.write_text((ROOT / "params.yaml").read_text(encoding="utf-8"), encoding="utf-8")
    set_scoring_as_of(target, None)  # the project's file may hold the last `make weekly` date
    original = target.read_text(encoding="utf-8")
    set_scoring_as_of(target, dt.date(1998, 3, 2))
    changed = target.read_text(encoding="utf-8")
    diff = [(a, b) for a, b in zip(original.splitlines(), changed.splitlines(), strict=True) if a != b]
    assert diff == [("  as_of: null", "  as_of: '1998-03-02'")]
    assert scoring_as_of(load_params(target)) == dt.date(1998, 3, 2)
    set_scoring_as_of(target, None)
    assert target.read_text(encoding="utf-8") == original


def test_set_scoring_as_of_needs_the_line(tmp_path: Path) -> None:
    target = tmp_path / "params.yaml"
    target.write_text("features:\n  as_of: null\nscore:\n  summary_top_customers: 25\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"no score\.as_of line to set"):
        set_scoring_as_of(target, dt.date(1998, 3, 2))
    assert "1998" not in target.read_text(encoding="utf-8")  # features.as_of was not touched


def test_set_scoring_as_of_after_dvc_rewrote_the_file(tmp_path: Path) -> None:
    # `dvc exp run -S` writes a null as an empty value; the next line must stay on its own line
    target = tmp_path / "params.yaml"
    target.write_text("score:\n  as_of:\n  summary_top_customers: 25\n", encoding="utf-8")
    set_scoring_as_of(target, dt.date(2011, 9, 1))
    assert target.read_text(encoding="utf-8") == "score:\n  as_of: '2011-09-01'\n  summary_top_customers: 25\n"


def test_bad_scoring_date_is_named(params: dict[str, Any]) -> None:
    params["score"]["as_of"] = "next monday"
    with pytest.raises(ConfigError, match=r"score\.as_of: expected a date YYYY-MM-DD, got 'next monday'"):
        scoring_as_of(params)
    del params["score"]["as_of"]
    with pytest.raises(ConfigError, match=r"score\.as_of is missing"):
        scoring_as_of(params)
