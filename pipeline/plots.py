"""Render the stages' plots to PNG with matplotlib's object API (no pyplot state, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.io import atomic_path


def _save(fig: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def lines(frame: pd.DataFrame, x: str, ys: Sequence[str], *, title: str, xlabel: str, ylabel: str, path: Path) -> None:
    """One line per column of ``ys`` against ``x``; an ``x`` of text (such as dates as "1998-04-01") is evenly
    spaced in its rows' order, each row labelled, rather than left to matplotlib's guess at categories."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    numeric = pd.api.types.is_numeric_dtype(frame[x])
    at = frame[x] if numeric else np.arange(len(frame))
    for y in ys:
        ax.plot(at, frame[y], marker="o" if len(frame) <= 20 else None, label=y)
    if not numeric:
        ax.set_xticks(at, [str(v) for v in frame[x]], rotation=30, ha="right")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)


def bars(frame: pd.DataFrame, x: str, ys: Sequence[str], *, title: str, xlabel: str, ylabel: str, path: Path) -> None:
    """Grouped bars, one group per row of ``frame``."""
    fig = Figure(figsize=(7, 4.2))
    ax = fig.add_subplot()
    pos = np.arange(len(frame))
    width = 0.8 / len(ys)
    for i, y in enumerate(ys):
        ax.bar(pos + i * width - 0.4 + width / 2, frame[y], width=width, label=y)
    ax.set_xticks(pos, [str(v) for v in frame[x]])
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    _save(fig, path)


def heatmap(
    values: np.ndarray, *, x: np.ndarray, y: np.ndarray, title: str, xlabel: str, ylabel: str, path: Path
) -> None:
    """``values[i, j]`` at (``x[j]``, ``y[i]``), with a colour bar."""
    fig = Figure(figsize=(6.5, 5))
    ax = fig.add_subplot()
    mesh = ax.pcolormesh(x, y, values, shading="nearest", cmap="viridis", vmin=0, vmax=1)
    fig.colorbar(mesh, ax=ax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    _save(fig, path)


def curves(
    series: dict[str, pd.DataFrame],
    x: str,
    y: str,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    path: Path,
    diagonal: bool = False,
) -> None:
    """One line per named frame, each with its own ``x`` points (ROC, precision-recall, calibration curves)."""
    fig = Figure(figsize=(6.5, 5))
    ax = fig.add_subplot()
    for name, frame in series.items():
        ax.plot(frame[x], frame[y], label=name, marker="o" if len(frame) <= 12 else None)
    if diagonal:
        ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="_diagonal")
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    _save(fig, path)
