"""``make exp``: the experiments of this commit beside their baseline, on the key figures and the params that differ.

``dvc exp show`` prints every metric of every stage (close to 300 columns); this reads its JSON and keeps the
figures a data scientist compares by (``metrics/key.json``, written by the report stage) and the params whose
values differ between the rows shown. ``--all-commits`` / ``-A`` are passed on to ``dvc exp show``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any

KEY_FILE = "metrics/key.json"
PARAMS_FILE = "params.yaml"
# The key figures in the order a reviewer reads them; key.json's other fields follow.
FIRST = (
    "churn_roc_auc",
    "churn_scorer",
    "churn_edge_over_best_rule",
    "churn_edge_low",
    "churn_edge_high",
    "clv_model",
    "clv_gini",
    "clv_purchases_error_pct",
    "list_to_contact",
    "list_value_at_risk",
    "campaign_lift",
)


def flat(doc: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``; lists stay whole."""
    if not isinstance(doc, dict):
        return {prefix: doc}
    out: dict[str, Any] = {}
    for k, v in doc.items():
        out.update(flat(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _row(label: str, data: dict[str, Any] | None) -> dict[str, Any]:
    data = data or {}
    metrics = ((data.get("metrics") or {}).get(KEY_FILE) or {}).get("data") or {}
    params = ((data.get("params") or {}).get(PARAMS_FILE) or {}).get("data") or {}
    return {"experiment": label, "key": flat(metrics), "params": flat(params)}


def rows(shown: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per commit and per experiment of ``dvc exp show --json``, the workspace first."""
    out = []
    for commit in shown:
        rev = str(commit.get("rev", ""))
        name = commit.get("name") or (rev[:7] if len(rev) == 40 else rev)  # a commit's sha, or "workspace"
        out.append(_row(name, commit.get("data")))
        for exp in commit.get("experiments") or []:
            for rev in exp.get("revs") or []:
                label = f"  {rev.get('name') or exp.get('name') or ''} ({str(rev.get('rev', ''))[:7]})"
                out.append(_row(label, rev.get("data")))
    return out


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:,.4f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def table(found: list[dict[str, Any]]) -> str:
    """A Markdown table: experiment, the params that differ between rows, then the key figures."""
    names = sorted({k for r in found for k in r["params"]})
    changed = [k for k in names if len({json.dumps(r["params"].get(k), default=str) for r in found}) > 1]
    keys = sorted({k for r in found for k in r["key"]})
    figures = [k for k in FIRST if k in keys] + [k for k in keys if k not in FIRST]
    header = ["experiment", *changed, *figures]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in found:
        cells = [
            r["experiment"],
            *(_cell(r["params"].get(k)) for k in changed),
            *(_cell(r["key"].get(k)) for k in figures),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not keys:
        lines.append(f"\nno {KEY_FILE} in any row: run the pipeline (`make run`, `dvc exp run`) first")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-A", "--all-commits", action="store_true", help="every commit's experiments, not only HEAD's")
    args = p.parse_args(argv)
    cmd = ["dvc", "exp", "show", "--json", *(["--all-commits"] if args.all_commits else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        print(
            f"error: {' '.join(cmd)} failed: {(done.stderr.strip().splitlines() or ['no output'])[-1]}", file=sys.stderr
        )
        sys.exit(2)
    print(table(rows(json.loads(done.stdout))))


if __name__ == "__main__":
    main()
