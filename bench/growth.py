"""How each stage's peak memory and wall time grow with the customers, from the runs ``make bench`` wrote.

``python -m bench.growth`` (``make bench-growth``) reads every ``reports/bench/<N>.json`` and prints one markdown
table: a row per stage and run (training, weekly, pipeline), a column per size with its wall time and peak RSS,
and the growth of the peak from the smallest size to the largest beside the growth of the customers. A stage whose
peak grows as fast as its customers holds them all in memory; one whose peak stays flat streams or draws.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from bench.pipeline import RUNS, STAGES

ROOT = Path(__file__).resolve().parent.parent


def runs(folder: Path) -> list[dict[str, Any]]:
    """The whole-pipeline reports in ``folder`` (``<N>.json``), smallest first."""
    found = []
    for path in folder.glob("*.json"):
        if not path.stem.isdigit():  # features_<N>.json and the like are other benches
            continue
        report = json.loads(path.read_text(encoding="utf-8"))
        if "ingest" in report.get("project", {}):
            found.append(report)
    return sorted(found, key=lambda r: r["n_customers"])


def _size(n: int) -> str:
    return f"{n / 1e6:g}M" if n >= 1_000_000 else f"{n:,}"


def table(reports: list[dict[str, Any]]) -> str:
    """The markdown table of ``reports`` (at least one)."""
    sizes = [r["n_customers"] for r in reports]
    grown = len(reports) > 1
    head = ["step", *(f"{_size(n)}: wall s, peak MB" for n in sizes)]
    if grown:
        head.append(f"peak growth, {_size(sizes[0])} to {_size(sizes[-1])} ({sizes[-1] / sizes[0]:g}x the customers)")
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for step in [*STAGES, *RUNS, "pipeline", "clv_path"]:
        cells = [r["project"].get(step) for r in reports]
        if all(c is None for c in cells):
            continue
        row = [step, *(f"{c['wall_s']:.1f}, {c['peak_rss_mb']:,.0f}" if c else "-" for c in cells)]
        if grown:
            first, last = cells[0], cells[-1]
            row.append(f"{last['peak_rss_mb'] / first['peak_rss_mb']:.1f}x" if first and last else "-")
        lines.append("| " + " | ".join(row) + " |")
    ratios = [f"{_size(r['n_customers'])}: {r['ratio_clv']}x" for r in reports if r.get("ratio_clv")]
    if ratios:
        lines.append("")
        lines.append("CLV path against plain lifetimes: " + ", ".join(ratios))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, default=ROOT / "reports" / "bench")
    args = p.parse_args()
    reports = runs(args.folder)
    if not reports:
        raise SystemExit(f"no whole-pipeline runs in {args.folder}: run `make bench N=1000000` first")
    print(table(reports))


if __name__ == "__main__":
    main()
