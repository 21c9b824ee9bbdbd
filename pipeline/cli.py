"""What every stage's ``main`` shares: argument parsing, logging set-up and one-line errors."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from features.errors import InputError

DEBUG_ENV = "CHURN_CLV_DEBUG"


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every stage takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    p.add_argument(
        "--debug", action="store_true", help=f"show the full traceback of a data error (or set {DEBUG_ENV}=1)"
    )
    return p


def run(main: Callable[[Sequence[str]], None], argv: Sequence[str] | None = None) -> None:
    """Call a stage's ``main``; a data or settings problem prints one line and exits with status 2."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        main(args)
    except InputError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
