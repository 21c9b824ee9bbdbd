"""What every benchmark shares: one subprocess per measured step, its own peak memory, and the common flags."""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any


def ru_maxrss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def status_mb(key: str) -> float:
    """A memory figure of this process from /proc/self/status (e.g. VmHWM, VmRSS), in MB."""
    with open("/proc/self/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith(f"{key}:"))
    return round(kib / 1024, 1)


def peak() -> dict[str, float]:
    """This process's own peak RSS (VmHWM), and ru_maxrss for reference.

    Linux carries the parent's high-water RSS into a forked child's ``ru_maxrss`` across exec, so a step's
    ``ru_maxrss`` is never below the parent's peak when it was started (e.g. after generating the log).
    VmHWM belongs to the address space created by exec: the step's own peak.
    """
    return {"peak_rss_mb": status_mb("VmHWM"), "ru_maxrss_mb": ru_maxrss_mb()}


def measure(module: str, name: str, data: Path, out: Path) -> dict[str, Any]:
    """Run ``python -m module --step name`` and return the JSON line it prints last."""
    done = subprocess.run(
        [sys.executable, "-m", module, "--step", name, "--data", str(data), "--out", str(out)],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"step {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def parse_args(description: str, naive_help: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--skip-naive", action="store_true", help=naive_help)
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return p.parse_args()


def bench_base() -> Any:
    """The ``base`` section the benches run with: DuckDB with the project's default memory limit, days."""
    from pipeline.config import BaseConfig, SparkConfig

    spark = SparkConfig(master="local[2]", shuffle_partitions=8, driver_memory_mb=4096)
    return BaseConfig(
        seed=0,
        time_unit="days",
        mlflow_experiment="bench",
        currency="USD",
        duckdb_memory_limit_mb=1024,
        engine="duckdb",
        spark=spark,
    )


# The CLV path both sides compute: a 90-day horizon, 12 months discounted at 1% a month, in days.
HORIZON_DAYS = 90.0
MONTHS = 12
DISCOUNT_MONTHLY = 0.01
DAYS_PER_MONTH = 30.0  # lifetimes' customer_lifetime_value counts a month as 30 days with freq="D"


def clv_settings() -> Any:
    """The project's ``ValueSettings`` for that path (revenue, not profit: lifetimes has no margin)."""
    from models.value import ValueSettings

    return ValueSettings(
        horizon_units=HORIZON_DAYS,
        months=MONTHS,
        units_per_month=DAYS_PER_MONTH,
        discount_rate_monthly=DISCOUNT_MONTHLY,
        margin_ratio=1.0,
    )
