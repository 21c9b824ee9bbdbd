"""Shared fixtures: the project's params, and paths to the shared datasets."""

from __future__ import annotations

import copy
import functools
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

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


@functools.cache
def _committed_params() -> dict[str, Any]:
    """params.yaml as committed (git HEAD), or the file itself outside a git checkout."""
    try:
        shown = subprocess.run(
            ["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError):
        return load_params(ROOT / "params.yaml")
    data = yaml.safe_load(shown.stdout)
    assert isinstance(data, dict)
    return data


def project_params() -> dict[str, Any]:
    """A fresh copy of the project's committed params, scoring as of the default date.

    The tests are written for the defaults in git, not for whatever the workspace holds: `dvc exp run -S ...` (the
    README's Online Retail override) applies its params to params.yaml, and ``make weekly`` leaves its last date
    in score.as_of.
    """
    params = copy.deepcopy(_committed_params())
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
