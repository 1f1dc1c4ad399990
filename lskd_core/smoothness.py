"""Smoothness of teacher targets (paper App. H) and soft-output profiles (Fig. 2, App. E).

* ``mean_entropy``: average entropy (nats) of ``softmax(z / T)`` over a set of logits, the
  paper's measure of target smoothness (App. H, Table H.1; maximum ``ln K``).
* ``entropy_table``: the same at several temperatures, in one pass over the logits.
* ``match_temperature``: the T' at which a teacher's mean entropy equals a given value (Table
  H.1's pairs, e.g. the alpha = 0 teacher at T = 1.481375 matches the alpha = 0.1 teacher at T = 1).
* ``class_mean_probs`` / ``soft_output_profile``: the mean soft output of one class's samples,
  restricted to the true class, its most similar classes and a few random dissimilar ones
  (Fig. 2; at most ``MAX_PROFILE_OTHERS`` of them, so the figure stays readable at any K).
* ``count_negligible``: App. E's count of classes at least 100x less likely than the runner-up.
* ``plot_soft_output_profiles``: Fig. 2-style bar charts (matplotlib, Agg canvas, PNG).

Logits may be torch tensors (any device, any float dtype) or numpy arrays, including
``np.memmap``; they are processed in row chunks in float64, so ImageNet-sized inputs
(1.3M x 1000) never need more than one chunk's worth of float64 temporaries.
"""

from __future__ import annotations

import math
import os
from typing import Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch

from lskd_core.atomic import atomic_savefig
from lskd_core.checks import check_temperature

__all__ = [
    "mean_entropy",
    "entropy_table",
    "match_temperature",
    "class_mean_probs",
    "soft_output_profile",
    "count_negligible",
    "plot_soft_output_profiles",
    "MAX_PROFILE_OTHERS",
    "MAX_PLOT_BARS",
]

# Fig. 2 shows the true class, its similar classes and "randomly-chosen semantically dissimilar
# classes": a handful, not the other 997 (a 132,000-pixel-wide PNG at K = 1000). More random
# others than this are never drawn, and a panel never shows more bars than MAX_PLOT_BARS.
MAX_PROFILE_OTHERS = 12
MAX_PLOT_BARS = 24

ArrayLike = Union[torch.Tensor, np.ndarray]

# Upper bound on elements per chunk (32 MiB per float64 temporary), whatever chunk_size says.
_MAX_CHUNK_ELEMENTS = 1 << 22

_GROUP_COLORS = {"true": "tab:green", "similar": "tab:orange", "other": "tab:gray"}


# ----------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------
def _check_logits(logits, name: str = "logits"):
    """Return a 2-D tensor or ndarray view of ``logits`` (no copy of the data)."""
    if not isinstance(logits, (torch.Tensor, np.ndarray)):
        try:
            logits = np.asarray(logits)
        except Exception:  # noqa: BLE001 - anything numpy cannot read is a bad argument
            raise ValueError(f"{name} must be a torch.Tensor or numpy array, got {type(logits).__name__}") from None
    if logits.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, K], got shape {tuple(logits.shape)}")
    if logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"{name} must have at least one row and one class, got shape {tuple(logits.shape)}")
    if isinstance(logits, torch.Tensor):
        if logits.is_complex() or logits.dtype == torch.bool:
            raise ValueError(f"{name} must be real-valued, got dtype {logits.dtype}")
    elif not (np.issubdtype(logits.dtype, np.floating) or np.issubdtype(logits.dtype, np.integer)):
        raise ValueError(f"{name} must be real-valued, got dtype {logits.dtype}")
    return logits


def _chunk_rows(num_classes: int, chunk_size: int) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size <= 0:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size!r}")
    return max(1, min(int(chunk_size), _MAX_CHUNK_ELEMENTS // num_classes))


def _chunks(logits: ArrayLike, chunk_size: int) -> Iterator[tuple]:
    """Yield ``(start, stop, float64 tensor)`` row chunks.

    Non-finite values are not checked here (that would cost two extra passes): they turn the
    row's result into NaN, and the consumers check their per-row results with ``_check_rows``.
    """
    rows = _chunk_rows(logits.shape[1], chunk_size)
    for start in range(0, logits.shape[0], rows):
        stop = min(start + rows, logits.shape[0])
        part = logits[start:stop]
        if isinstance(part, torch.Tensor):
            x = part.detach().to(torch.float64)
        else:
            x = torch.from_numpy(np.asarray(part, dtype=np.float64))
        yield start, stop, x


def _check_rows(result: torch.Tensor, x: torch.Tensor, row_ids: np.ndarray, name: str = "logits") -> None:
    """Raise if ``result`` holds NaN/inf, naming the first row of ``x`` (logits row ``row_ids[i]``)
    with NaN or inf."""
    if bool(torch.isfinite(result).all()):
        return
    bad = (~torch.isfinite(x)).any(dim=1).nonzero()
    where = f"row {int(row_ids[int(bad[0, 0])])}" if bad.numel() else f"rows {int(row_ids[0])}-{int(row_ids[-1])}"
    raise ValueError(f"{name} must be finite, got NaN or inf in {where}")


def _labels_array(labels, num_rows: int) -> np.ndarray:
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != num_rows:
        raise ValueError(f"labels must be 1-D with one entry per logits row ({num_rows}), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must hold integer class ids, got dtype {labels.dtype}")
    return labels


def _class_id(value, num_classes: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_floating_point:
            value = int(value)
        else:
            raise ValueError(f"{name} must be an integer class id, got {value!r}")
    if not 0 <= int(value) < num_classes:
        raise ValueError(f"{name} must lie in [0, {num_classes}), got {int(value)}")
    return int(value)


# ----------------------------------------------------------------------------------------------
# entropy
# ----------------------------------------------------------------------------------------------
def _entropy_and_slope(x: torch.Tensor, temperature: float, slope: bool = False):
    """Per-row entropy of ``softmax(x / T)`` (float64) and, optionally, ``dH / d log T``.

    ``H = lse(z) - E_p[z]`` with ``z = x / T``; ``dH/dlog T = Var_p(z) >= 0`` (hence the entropy
    is non-decreasing in T, which ``match_temperature`` relies on). ``x`` is not modified.
    """
    z = x.mul(1.0 / temperature)
    z.sub_(z.amax(dim=1, keepdim=True))  # shift: exp never overflows, the largest term is 1
    e = torch.exp(z)
    total = e.sum(dim=1)
    mean_z = torch.linalg.vecdot(e, z) / total
    entropy = (torch.log(total) - mean_z).clamp_min(0.0)
    if not slope:
        return entropy, None
    # Var_p(z) = E_p[z^2] - E_p[z]^2; only steers Newton steps, so the plain formula will do.
    second = torch.linalg.vecdot(e.mul_(z), z) / total
    return entropy, (second - mean_z * mean_z).clamp_min(0.0)


def _entropy_sums(logits: ArrayLike, temperatures: Sequence[float], chunk_size: int, slope: bool = False):
    """One pass over ``logits``: mean entropy (and mean slope) at every temperature."""
    h_sums = [0.0] * len(temperatures)
    s_sums = [0.0] * len(temperatures)
    for start, stop, x in _chunks(logits, chunk_size):
        for i, t in enumerate(temperatures):
            h, s = _entropy_and_slope(x, t, slope=slope)
            if i == 0:
                _check_rows(h, x, np.arange(start, stop))
            h_sums[i] += float(h.sum())
            if slope:
                s_sums[i] += float(s.sum())
    n = logits.shape[0]
    return [h / n for h in h_sums], [s / n for s in s_sums]


def mean_entropy(logits: ArrayLike, temperature: float, chunk_size: int = 65536) -> float:
    """Mean entropy (nats) of the targets ``softmax(logits / T)`` (paper App. H, Table H.1).

    ``logits`` is ``[N, K]`` (torch or numpy, any float dtype); rows are processed ``chunk_size``
    at a time (and at most ~4M elements per chunk) in float64. The result lies in ``[0, ln K]``.
    """
    return entropy_table(logits, [temperature], chunk_size=chunk_size)[check_temperature(temperature)]


def entropy_table(
    logits: ArrayLike, temperatures: Sequence[float], chunk_size: int = 65536
) -> Dict[float, float]:
    """``{T: mean_entropy(logits, T)}`` for every T, computed in a single pass over ``logits``
    (Table H.1 is one column of this per teacher)."""
    logits = _check_logits(logits)
    if isinstance(temperatures, (int, float)):
        raise ValueError(f"temperatures must be a sequence of numbers, got {temperatures!r}")
    temps = [check_temperature(t) for t in temperatures]
    if not temps:
        raise ValueError("temperatures must not be empty")
    means, _ = _entropy_sums(logits, temps, chunk_size)
    return dict(zip(temps, means))


def _target_and_tol(target_entropy: float, tol: float) -> tuple:
    """``(float(target_entropy), float(tol))``, or ValueError naming the bad argument."""
    try:
        target = float(target_entropy)
    except (TypeError, ValueError):
        raise ValueError(f"target_entropy must be a finite number, got {target_entropy!r}") from None
    if not math.isfinite(target):
        raise ValueError(f"target_entropy must be a finite number, got {target_entropy!r}")
    try:
        tol_f = float(tol)
    except (TypeError, ValueError):
        raise ValueError(f"tol must be a positive number, got {tol!r}") from None
    if not (tol_f > 0 and math.isfinite(tol_f)):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    return target, tol_f


def match_temperature(
    logits: ArrayLike,
    target_entropy: float,
    t_min: float = 1e-2,
    t_max: float = 1e4,
    tol: float = 1e-6,
    chunk_size: int = 65536,
) -> float:
    """The temperature T' in ``[t_min, t_max]`` at which ``mean_entropy(logits, T') == target_entropy``.

    This is how Table H.1's pairs are found (App. H.1): with ``target_entropy =
    mean_entropy(ls_teacher_logits, 1.0)``, ``match_temperature(plain_teacher_logits, target)``
    gives the plain teacher's equally smooth temperature (1.481375 in the paper's CUB example).

    The mean entropy is non-decreasing in T (its slope in log T is a variance), so the root is
    bracketed and found by bisection on ``log T``, accelerated by Newton steps (the slope comes
    from the same pass) whenever they stay inside the bracket. ``tol`` is the tolerance on
    ``log T``, i.e. a relative tolerance on T. Raises ValueError if ``target_entropy`` lies
    outside ``[mean_entropy(t_min), mean_entropy(t_max)]``.
    """
    logits = _check_logits(logits)
    t_min = check_temperature(t_min, "t_min")
    t_max = check_temperature(t_max, "t_max")
    if not t_min < t_max:
        raise ValueError(f"t_min must be smaller than t_max, got t_min={t_min!r}, t_max={t_max!r}")
    target, tol = _target_and_tol(target_entropy, tol)

    lo, hi = math.log(t_min), math.log(t_max)
    x = 0.5 * (lo + hi)
    # One pass for both ends of the bracket and the first iterate.
    (h_lo, h_hi, h), (_, _, slope) = _entropy_sums(logits, [t_min, t_max, math.exp(x)], chunk_size, slope=True)
    # Entropies are computed to ~1e-12; allow that much slack at the ends of the bracket.
    slack = 1e-12 * max(1.0, abs(target))
    if not (h_lo - slack <= target <= h_hi + slack):
        raise ValueError(
            f"target_entropy={target!r} is unreachable: the mean entropy ranges over "
            f"[{h_lo:.6g}, {h_hi:.6g}] for temperatures in [{t_min:g}, {t_max:g}] "
            f"(maximum possible ln K = {math.log(logits.shape[1]):.6g})"
        )
    if target <= h_lo:
        return t_min
    if target >= h_hi:
        return t_max

    for iteration in range(200):
        if iteration:
            (h,), (slope,) = _entropy_sums(logits, [math.exp(x)], chunk_size, slope=True)
        f = h - target
        if f == 0.0:
            return math.exp(x)
        if f < 0:
            lo = x
        else:
            hi = x
        if hi - lo < tol:
            break
        step_ok = slope > 0 and math.isfinite(slope)
        x_new = x - f / slope if step_ok else 0.5 * (lo + hi)
        if not (lo < x_new < hi):
            x_new = 0.5 * (lo + hi)  # Newton left the bracket: bisect instead
        if abs(x_new - x) < 0.5 * tol:
            x = x_new
            break
        x = x_new
    return math.exp(x)


# ----------------------------------------------------------------------------------------------
# soft-output profiles (Fig. 2) and App. E
# ----------------------------------------------------------------------------------------------
def class_mean_probs(
    logits: ArrayLike, labels, target_class: int, temperature: float, chunk_size: int = 65536
) -> np.ndarray:
    """Mean of ``softmax(logits / T)`` over the rows labelled ``target_class`` (float64 ``[K]``).

    This is the averaged soft output of Fig. 2 (1300 standard_poodle training images) and the
    input to ``count_negligible`` (App. E).
    """
    logits = _check_logits(logits)
    temperature = check_temperature(temperature)
    num_rows, num_classes = logits.shape
    labels = _labels_array(labels, num_rows)
    target_class = _class_id(target_class, num_classes, "target_class")
    selected = labels == target_class
    count = int(selected.sum())
    if count == 0:
        raise ValueError(f"target_class {target_class} has no samples in labels")
    total: Optional[torch.Tensor] = None
    for start, stop, x in _chunks(logits, chunk_size):
        local = np.flatnonzero(selected[start:stop])
        if local.size == 0:
            continue
        selected_x = x.index_select(0, torch.from_numpy(local).to(x.device))
        # Checked on the input: softmax would silently map a -inf logit to probability 0.
        _check_rows(selected_x, selected_x, start + local)
        probs = torch.softmax(selected_x / temperature, dim=1).sum(dim=0)
        total = probs if total is None else total + probs
    assert total is not None  # count > 0 rows were selected
    return (total / count).cpu().numpy()


def soft_output_profile(
    logits: ArrayLike,
    labels,
    target_class: int,
    temperature: float,
    similar: Optional[Sequence[int]] = None,
    num_similar: int = 2,
    num_others: int = 8,
    seed: int = 0,
    chunk_size: int = 65536,
    dissimilar: Optional[Sequence[int]] = None,
) -> dict:
    """Fig. 2's soft-output profile of ``target_class`` at temperature T.

    Returns ``{"classes", "probs", "groups", "temperature", "target_class", "num_samples"}``:
    ``classes`` lists the target, then the ``similar`` classes (default: the ``num_similar`` most
    probable wrong classes at this T), then ``min(num_others, MAX_PROFILE_OTHERS)`` classes drawn at
    random (seeded, sorted) from ``dissimilar`` (e.g. the target's S2) or, without it, from all
    remaining classes; ``probs`` are their mean probabilities; ``groups`` is "true"/"similar"/"other"
    per entry. Pass ``similar`` explicitly (and the same ``seed``) to compare several T on the
    same classes, as Fig. 2's two panels do.
    """
    logits = _check_logits(logits)
    num_classes = logits.shape[1]
    target_class = _class_id(target_class, num_classes, "target_class")
    for name, value in (("num_similar", num_similar), ("num_others", num_others)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    mean_probs = class_mean_probs(logits, labels, target_class, temperature, chunk_size=chunk_size)

    if similar is None:
        order = np.argsort(-mean_probs, kind="stable")
        similar_ids = [int(c) for c in order if c != target_class][: int(num_similar)]
    else:
        similar_ids = [_class_id(c, num_classes, "similar") for c in similar]
        if target_class in similar_ids:
            raise ValueError(f"similar must not contain target_class {target_class}, got {list(similar)}")
        if len(set(similar_ids)) != len(similar_ids):
            raise ValueError(f"similar must not repeat a class, got {list(similar)}")

    taken = set(similar_ids) | {target_class}
    pool = range(num_classes) if dissimilar is None else \
        [_class_id(c, num_classes, "dissimilar") for c in dissimilar]
    rest = np.array(sorted({c for c in pool if c not in taken}), dtype=np.int64)
    count = min(int(num_others), MAX_PROFILE_OTHERS, rest.size)
    rng = np.random.default_rng(seed)
    others = sorted(int(c) for c in rng.choice(rest, size=count, replace=False)) if count else []

    classes = [target_class] + similar_ids + others
    groups = ["true"] + ["similar"] * len(similar_ids) + ["other"] * len(others)
    return {
        "classes": classes,
        "probs": [float(mean_probs[c]) for c in classes],
        "groups": groups,
        "temperature": float(check_temperature(temperature)),
        "target_class": target_class,
        "num_samples": int(np.sum(_labels_array(labels, logits.shape[0]) == target_class)),
    }


def count_negligible(mean_probs, true_class: int, factor: float = 100.0) -> int:
    """App. E's count: wrong classes whose mean probability is at least ``factor`` times smaller
    than the runner-up's (the most probable wrong class, ``p_2`` in the paper).

    The true class and the runner-up itself are not counted, so the result lies in
    ``[0, K - 2]`` (the paper: standard_poodle's ``p_2`` is >= 100x larger than 976 of the other
    999 probabilities). A class counts when ``p_runner_up >= factor * p_c``.
    """
    if isinstance(mean_probs, torch.Tensor):
        mean_probs = mean_probs.detach().cpu().numpy()
    probs = np.asarray(mean_probs, dtype=np.float64)
    if probs.ndim != 1 or probs.size < 2:
        raise ValueError(f"mean_probs must be 1-D with at least 2 classes, got shape {probs.shape}")
    if not np.all(np.isfinite(probs)) or np.any(probs < 0):
        raise ValueError("mean_probs must be finite and non-negative")
    true_class = _class_id(true_class, probs.size, "true_class")
    try:
        factor = float(factor)
    except (TypeError, ValueError):
        raise ValueError(f"factor must be a positive finite number, got {factor!r}") from None
    if not (factor > 0 and math.isfinite(factor)):
        raise ValueError(f"factor must be a positive finite number, got {factor!r}")
    wrong = np.delete(np.arange(probs.size), true_class)
    runner_up = int(wrong[np.argmax(probs[wrong])])
    others = np.delete(np.arange(probs.size), [true_class, runner_up])
    return int(np.count_nonzero(probs[runner_up] >= factor * probs[others]))


def _bounded(profile: dict) -> dict:
    """At most MAX_PLOT_BARS bars: the true and similar classes first, then evenly spaced others.

    Guards profiles built elsewhere (e.g. with every class as "other"), so the PNG width is
    bounded at any K; the panel title then says how many classes are shown.
    """
    n = len(profile["classes"])
    if n <= MAX_PLOT_BARS:
        return profile
    keep_head = [i for i, g in enumerate(profile["groups"]) if g in ("true", "similar")][:MAX_PLOT_BARS]
    rest = [i for i in range(n) if i not in set(keep_head)]
    room = MAX_PLOT_BARS - len(keep_head)
    picked = [rest[int(j)] for j in np.linspace(0, len(rest) - 1, room).round()] if room > 0 else []
    keep = keep_head + sorted(set(picked))
    out = dict(profile)
    for key in ("classes", "probs", "groups"):
        out[key] = [profile[key][i] for i in keep]
    out["shown_of"] = n
    return out


def plot_soft_output_profiles(
    profiles: List[dict],
    class_names: Optional[Sequence[str]],
    out_png: Union[str, os.PathLike],
    log_scale: bool = False,
) -> str:
    """Draw Fig. 2-style bar charts, one panel per profile (e.g. T = 1 and T = 2), to ``out_png``.

    Bars are coloured by group (true / similar / other) and numbered 1..n as in the paper, with
    the class names underneath; a profile's optional ``"title"`` entry replaces the default
    panel title ``"T = ..."``. Uses matplotlib's Agg canvas directly (no global backend
    switch); the PNG is written atomically. Returns the path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if not profiles:
        raise ValueError("profiles must contain at least one profile")
    for i, prof in enumerate(profiles):
        missing = [k for k in ("classes", "probs", "groups", "temperature") if k not in prof]
        if missing:
            raise ValueError(f"profiles[{i}] lacks keys {missing}")

    def name_of(c: int) -> str:
        if class_names is None:
            return f"class {c}"
        if not 0 <= c < len(class_names):
            raise ValueError(f"class_names has {len(class_names)} entries, no name for class {c}")
        return str(class_names[c])

    profiles = [_bounded(p) for p in profiles]
    fig = Figure(figsize=(max(4.0, 0.55 * len(profiles[0]["classes"])) * len(profiles), 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(profiles), squeeze=False)[0]
    for ax, prof in zip(axes, profiles):
        positions = np.arange(1, len(prof["classes"]) + 1)
        colors = [_GROUP_COLORS.get(g, "tab:blue") for g in prof["groups"]]
        ax.bar(positions, prof["probs"], color=colors)
        ax.set_xticks(positions)
        ax.set_xticklabels(
            [f"{i} {name_of(c)}" for i, c in zip(positions, prof["classes"])], rotation=60, ha="right", fontsize=7
        )
        if log_scale:
            ax.set_yscale("log")
        ax.set_ylabel("mean soft output")
        title = prof.get("title") or f"T = {prof['temperature']:g}"
        if prof.get("shown_of"):
            title += f" ({len(prof['classes'])} of {prof['shown_of']} classes shown)"
        ax.set_title(title, fontsize=9)
    handles = [Patch(color=c, label=g) for g, c in _GROUP_COLORS.items()]
    axes[-1].legend(handles=handles, fontsize=8)
    fig.tight_layout()

    out_png = os.fspath(out_png)
    atomic_savefig(fig, out_png, dpi=120)
    return out_png
