"""Shared fixtures: the project's params, and paths to the shared datasets."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from pipeline.config import load_params

ROOT = Path(__file__).resolve().parents[1]
ONLINE_RETAIL = ROOT.parent / "shared" / "data" / "online_retail" / "online_retail_2010-12-01_2011-12-09.csv.gz"

# The README's override for the UCI Online Retail log.
ONLINE_RETAIL_INGEST: dict[str, Any] = {
    "source": str(ONLINE_RETAIL),
    "columns": {
        "customer_id": "CustomerID",
        "timestamp": "InvoiceDate",
        "amount": None,
        "quantity": "Quantity",
        "unit_price": "UnitPrice",
        "order_id": "InvoiceNo",
    },
    "csv_delimiter": ",",
    "encoding": "utf-8",
    "timestamp_format": "%Y-%m-%d %H:%M:%S",
    "timezone": "UTC",
    "duplicate_key": [
        "InvoiceNo",
        "StockCode",
        "Description",
        "Quantity",
        "InvoiceDate",
        "UnitPrice",
        "CustomerID",
        "Country",
    ],
    "cancellation_prefix": "C",
    "returns": "net",
    "zero_amount": "quarantine",
    "max_abs_amount": 1000000,
    "thousands_separator": None,
}


def project_params() -> dict[str, Any]:
    """A fresh copy of the project's params.yaml, scoring as of the default date.

    ``make weekly`` leaves its last date in score.as_of; the tests are written for the default (null).
    """
    params = copy.deepcopy(load_params(ROOT / "params.yaml"))
    params["score"]["as_of"] = None
    return params


@pytest.fixture
def params() -> dict[str, Any]:
    """The project's params (``project_params``), safe to modify."""
    return project_params()


@pytest.fixture
def online_retail() -> Path:
    if not ONLINE_RETAIL.is_file():
        pytest.skip(f"the shared Online Retail log is not at {ONLINE_RETAIL}")
    return ONLINE_RETAIL
