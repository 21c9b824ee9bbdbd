"""Ingest on each engine: the ingest stage with ``base.engine: duckdb`` and with ``spark`` (``local[2]``) on the
same synthetic log, their wall time and peak memory, and whether they wrote the same outputs.

``python -m bench.ingest --customers N`` (``make bench-ingest N=...``) generates the log of ``make bench`` (Parquet)
and, with ``--csv``, a CSV copy of it too, so that the CSV path (read on the driver into a staged copy, then
classified on the executors) is measured beside the Parquet one (read by the executors). Each run is a child
process; its peak is the sum of the resident memory of its process tree (Spark's JVM is a child of the stage),
sampled every 0.2 s, beside the stage's own Python peak (``ru_maxrss``). Writes ``reports/bench/ingest_<N>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml

from bench.pipeline import ROOT, bench_params, child, run_child, stage_commands

ENGINES = ("duckdb", "spark")
SAMPLE_S = 0.2


def tree_rss_mb(pid: int) -> float:
    """The resident memory of a process and all its descendants, in MB (0 once it is gone)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


class TreePeak:
    """The largest ``tree_rss_mb`` of this process's children seen while it runs (sampled)."""

    def __init__(self) -> None:
        self.mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(SAMPLE_S):
            for kid in me.children():
                self.mb = max(self.mb, tree_rss_mb(kid.pid))

    def __enter__(self) -> TreePeak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def to_csv_step(data: Path, out: Path) -> dict[str, Any]:
    """The Parquet log written as CSV, batch by batch (the timestamps in ISO 8601 with their offset)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(data)
    schema = pa.schema(
        [
            f.with_type(pa.timestamp("us", tz="UTC")) if pa.types.is_timestamp(f.type) else f
            for f in parquet.schema_arrow
        ]
    )  # microseconds, which %f reads
    with pacsv.CSVWriter(out, schema) as writer:
        for batch in parquet.iter_batches(batch_size=1 << 20):
            writer.write_table(pa.Table.from_batches([batch]).cast(schema))
    return {"bytes": out.stat().st_size}


def same_step(a: Path, b: Path) -> dict[str, Any]:
    """Whether two ingest folders hold equal outputs: both tables (values, order, types) and the metrics."""
    import pyarrow.parquet as pq

    same = {
        name: pq.read_table(a / f"data/{name}.parquet").equals(pq.read_table(b / f"data/{name}.parquet"))
        for name in ("transactions", "quarantine")
    }
    metrics = [json.loads((d / "metrics/ingest.json").read_text()) for d in (a, b)]
    return {**same, "metrics": metrics[0] == metrics[1], "rows_in": metrics[0]["rows_in"]}


def params_for(source: Path, engine: str, csv: bool) -> dict[str, Any]:
    params = bench_params(source)
    params["base"]["engine"] = engine
    params["base"]["spark"]["master"] = "local[2]"
    if csv:
        params["ingest"]["timestamp_format"] = "%Y-%m-%d %H:%M:%S.%f%z"  # as Arrow writes them
    return params


def run_engine(engine: str, source: Path, folder: Path, csv: bool) -> dict[str, Any]:
    folder.mkdir()
    (folder / "params.yaml").write_text(yaml.safe_dump(params_for(source, engine, csv)), encoding="utf-8")
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{folder}/mlflow.db"}
    env.pop("SPARK_MASTER", None)
    with TreePeak() as tree:
        r = run_child(stage_commands()["ingest"], folder, env, log=folder / "ingest.log")
    return {"wall_s": r["wall_s"], "python_peak_mb": r["peak_rss_mb"], "tree_peak_mb": round(tree.mb, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--customers", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--csv", action="store_true", help="also ingest a CSV copy of the log on both engines")
    p.add_argument("--report", type=Path, help="where to write the JSON (default: reports/bench/ingest_<N>.json)")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--other", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step == "to_csv":
        print(json.dumps(to_csv_step(args.data, args.out)))
        return
    if args.step == "same":
        print(json.dumps(same_step(args.data, args.other)))
        return

    out = args.report or ROOT / "reports" / "bench" / f"ingest_{args.customers}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"n_customers": args.customers, "seed": args.seed, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as tmp:
        d = Path(tmp)
        sources = {"parquet": d / "log.parquet"}
        run_child(
            child(
                "generate",
                "--customers",
                str(args.customers),
                "--seed",
                str(args.seed),
                "--out",
                str(sources["parquet"]),
            ),
            ROOT,
        )
        if args.csv:
            sources["csv"] = d / "log.csv"
            me = [sys.executable, "-m", "bench.ingest"]
            run_child([*me, "--step", "to_csv", "--data", str(sources["parquet"]), "--out", str(sources["csv"])], ROOT)
        print(f"{'source':<9}{'engine':<8}{'wall s':>9}{'python peak MB':>16}{'tree peak MB':>14}")
        for kind, source in sources.items():
            folders = {}
            for engine in ENGINES:
                folders[engine] = d / f"{kind}-{engine}"
                r = run_engine(engine, source, folders[engine], csv=kind == "csv")
                report["runs"][f"{kind}/{engine}"] = r
                print(
                    f"{kind:<9}{engine:<8}{r['wall_s']:>9.1f}{r['python_peak_mb']:>16,.0f}{r['tree_peak_mb']:>14,.0f}"
                )
                time.sleep(1)
            compared = run_child(
                [
                    sys.executable,
                    "-m",
                    "bench.ingest",
                    "--step",
                    "same",
                    "--data",
                    str(folders["duckdb"]),
                    "--other",
                    str(folders["spark"]),
                ],
                ROOT,
            )
            same = json.loads(compared["stdout"])
            report["runs"][f"{kind}/same_outputs"] = same
            report["n_transactions"] = same["rows_in"]
            ratio = report["runs"][f"{kind}/spark"]["wall_s"] / report["runs"][f"{kind}/duckdb"]["wall_s"]
            print(
                f"{kind:<9}spark/duckdb wall {ratio:.2f}x; same transactions {same['transactions']}, "
                f"quarantine {same['quarantine']}, metrics {same['metrics']}"
            )
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
