"""Fig. 1-style grid of projected penultimate features (rows: models, columns: alpha).

The math (basis, projection, PCA, statistics) is in :mod:`lskd_core.projection`, which re-exports
:func:`projection_grid_figure` and :func:`plot_projection_grid`. matplotlib is imported only when a
figure is drawn.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from lskd_core.atomic import atomic_savefig
from lskd_core.checks import check_labels

__all__ = ["projection_grid_figure", "plot_projection_grid"]

# Colour-blind-safe (Okabe-Ito) first, so the similar pair is told apart without red/green.
_PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


def _class_name(class_names: Any, label: int) -> str:
    if class_names is None:
        return str(label)
    if isinstance(class_names, Mapping):
        if label not in class_names:
            raise ValueError(f"class_names has no entry for label {label} (keys {sorted(class_names)})")
        return str(class_names[label])
    if not 0 <= label < len(class_names):
        raise ValueError(f"label {label} out of range for class_names ({len(class_names)} names, indexed by label); "
                         f"pass a dict {{label: name}} to name only some classes")
    return str(class_names[label])


def _check_panels(panels: Any) -> list:
    if isinstance(panels, Mapping) or not isinstance(panels, Sequence) or len(panels) == 0:
        raise ValueError("panels must be a non-empty list of rows (lists of panel dicts or None)")
    rows = []
    for r, row in enumerate(panels):
        if isinstance(row, Mapping) or not isinstance(row, Sequence):
            raise ValueError(f"panels[{r}] must be a list of panel dicts (or None), got {type(row).__name__}")
        checked: list = []
        for c, panel in enumerate(row):
            if panel is None:
                checked.append(None)
                continue
            if not isinstance(panel, Mapping):
                raise ValueError(f"panels[{r}][{c}] must be a dict with points2d and labels, got {type(panel).__name__}")
            for key in ("points2d", "labels"):
                if key not in panel:
                    raise ValueError(f"panels[{r}][{c}] is missing key {key!r}")
            pts = np.asarray(panel["points2d"], dtype=np.float64)
            if pts.ndim != 2 or pts.shape[1] != 2:
                raise ValueError(f"panels[{r}][{c}]['points2d'] must have shape [N, 2], got {tuple(pts.shape)}")
            if not np.isfinite(pts).all():
                raise ValueError(f"panels[{r}][{c}]['points2d'] contains NaN or inf")
            lab = check_labels(panel["labels"], pts.shape[0], name=f"panels[{r}][{c}]['labels']")
            checked.append({"points2d": pts, "labels": lab, "title": panel.get("title"), "note": panel.get("note")})
        rows.append(checked)
    if not any(p is not None for row in rows for p in row):
        raise ValueError("panels holds no panel dicts (all cells are None)")
    return rows


def _class_order(rows: list) -> list:
    """Labels in order of first appearance across the panels (one colour each)."""
    order: list = []
    for row in rows:
        for p in row:
            if p is not None:
                for c in p["labels"].tolist():
                    if c not in order:
                        order.append(c)
    return order


def _draw_panel(ax: Any, panel: dict, order: list, colours: dict, names: dict, point_size: float) -> None:
    for cls in order:
        sel = panel["labels"] == cls
        if sel.any():
            pts = panel["points2d"][sel]
            ax.scatter(pts[:, 0], pts[:, 1], s=point_size, color=colours[cls], alpha=0.6,
                       linewidths=0, label=names[cls])
    ax.set_aspect("equal", adjustable="datalim")  # keep distances comparable within a panel
    if panel["note"]:
        ax.text(0.02, 0.02, str(panel["note"]), transform=ax.transAxes, fontsize=7, va="bottom",
                ha="left", bbox=dict(boxstyle="round", facecolor="white", alpha=0.7, linewidth=0))


def projection_grid_figure(panels: Sequence[Sequence[Optional[Mapping]]], class_names: Any,
                           row_labels: Optional[Sequence[str]] = None, col_labels: Optional[Sequence[str]] = None,
                           panel_size: float = 3.0, point_size: float = 6.0):
    """Build (do not save) the Fig. 1-style grid as a ``matplotlib.figure.Figure``.

    ``panels[r][c]``: dict with ``points2d`` [N, 2], ``labels`` [N] and optional ``title`` and
    ``note`` (small text in the panel corner, e.g. centroid distances), or None for an empty cell.
    Rows may be ragged; the grid is ``len(panels)`` x longest row. Each class gets one colour in
    every panel (by first appearance order across panels) and one shared legend.
    ``class_names``: list indexed by label, dict ``{label: name}``, or None (labels as text).
    """
    from matplotlib.figure import Figure  # Figure + Agg canvas: no pyplot global state, no display

    rows = _check_panels(panels)
    n_rows = len(rows)
    n_cols = max(len(r) for r in rows)
    if n_cols == 0:
        raise ValueError("panels has only empty rows")
    if row_labels is not None and len(row_labels) != n_rows:
        raise ValueError(f"row_labels has {len(row_labels)} entries for {n_rows} rows of panels")
    if col_labels is not None and len(col_labels) != n_cols:
        raise ValueError(f"col_labels has {len(col_labels)} entries for {n_cols} columns of panels")
    order = _class_order(rows)
    # Resolve names up front so a missing name fails before any drawing.
    names = {c: _class_name(class_names, c) for c in order}
    colours = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(order)}

    fig = Figure(figsize=(panel_size * n_cols + (0.6 if row_labels else 0.0), panel_size * n_rows + 0.7),
                 dpi=100, layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            panel = rows[r][c] if c < len(rows[r]) else None
            title = panel["title"] if panel is not None else None
            if r == 0 and col_labels is not None:
                title = f"{col_labels[c]}\n{title}" if title else str(col_labels[c])
            if title:
                ax.set_title(str(title), fontsize=9)
            if row_labels is not None and c == 0:
                ax.set_ylabel(str(row_labels[r]), fontsize=9)
            if panel is None:
                # Blank cell: keep the Axes (so row/column labels still show) but draw nothing.
                ax.set_facecolor("none")
                for spine in ax.spines.values():
                    spine.set_visible(False)
                continue
            _draw_panel(ax, panel, order, colours, names, point_size)
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], marker="o", linestyle="", markersize=6, color=colours[c], label=names[c])
               for c in order]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(order), 4), fontsize=9, frameon=False)
    return fig


def plot_projection_grid(panels: Sequence[Sequence[Optional[Mapping]]], class_names: Any,
                         out_png: Union[str, os.PathLike], row_labels: Optional[Sequence[str]] = None,
                         col_labels: Optional[Sequence[str]] = None, **kwargs: Any) -> Path:
    """Draw a Fig. 1-style grid (rows: teacher and students at several T; columns: alpha) to PNG.

    See :func:`projection_grid_figure` for ``panels``/``class_names``. The PNG is written to a
    temporary file in the same directory and moved into place with ``os.replace``, so a reader
    never sees a half-written image. Returns the output path.
    """
    out = Path(out_png)
    if out.suffix.lower() != ".png":
        raise ValueError(f"out_png must end in .png, got {str(out_png)!r}")
    if not out.parent.is_dir():
        raise ValueError(f"out_png's directory {str(out.parent)!r} does not exist")
    fig = projection_grid_figure(panels, class_names, row_labels=row_labels, col_labels=col_labels, **kwargs)
    return atomic_savefig(fig, out)
