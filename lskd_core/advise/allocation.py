"""Adaptive allocation over the grid's (alpha, T) cells: successive halving with Optuna's pruner.

One Optuna trial per cell, enqueued (:meth:`optuna.Study.enqueue_trial`) in an order drawn from
``seed`` (the order in which the trials arrive), driven through the ask-and-tell interface. A
cell climbs a *ladder* of fidelity levels (:func:`ladder`): first more epochs of its first student
seed (``min_epochs``, ``min_epochs * eta``, ... up to the study's full schedule), then more seeds
trained to the full schedule (``eta``, ``eta ** 2``, ... seeds, up to the study's seed count). At level ``k`` the trial
reports the cell's value (the first seed's val accuracy after that many epochs, or the mean over
seeds of the final accuracy) at Optuna step ``eta ** k`` and asks
:class:`optuna.pruners.SuccessiveHalvingPruner` (``min_resource = 1``, ``reduction_factor = eta``)
whether to stop: with that step the pruner's rung ``k`` is exactly level ``k``. The pruner's rule
(asynchronous successive halving) promotes the ``j``-th trial to arrive at a rung when its value is
among the top ``max(1, j // eta)`` of the ``j`` values at that rung so far; the rounds are
breadth-first (every surviving cell reaches level ``k`` before any reaches ``k + 1``), in the
arrival order drawn from ``seed``, so no cell is favoured by its position in the grid.

Budget: the allocation never spends more than ``budget`` times the full grid's compute. Before a
round, when bringing every promoted cell to the next level would exceed it, only the cells with the
best values at the previous level that fit are trained on; the others are stopped ("budget").

Compute is counted exactly, in epoch-runs (one epoch of one student seed over the training set;
multiply by the training-set size for sample-epochs): a (cell, seed) costs the epochs trained
beyond what it had already been trained, whichever level asked for them. The grid costs
``cells * seeds * epochs``.

Pure Python + Optuna: the trainer is any callable (a real student run, or a synthetic one in the
tests), and every decision goes to ``log`` as one JSON-able dict.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["Level", "ladder", "auto_min_epochs", "Allocation", "allocate", "Trainer", "level_value", "level_cost", "grid_cost"]

Cell = Tuple[float, float]  # (alpha, T)
#: trainer(cell, seed, epochs) -> val accuracy after each of the epochs 1..epochs of that student
#: (the trainer resumes what it already trained; the allocation counts the compute itself)
Trainer = Callable[[Cell, int, int], Sequence[float]]
Log = Callable[[dict], None]


@dataclass(frozen=True)
class Level:
    """A fidelity level: ``seeds`` student seeds, the first ``seeds - 1`` trained to the full
    schedule and the last one to ``epochs`` epochs."""

    seeds: int
    epochs: int

    def to_dict(self) -> dict:
        return {"seeds": self.seeds, "epochs": self.epochs}


def ladder(epochs: int, seeds: int, eta: int, min_epochs: int = 1) -> List[Level]:
    """The levels a cell climbs: the first seed at ``min_epochs * eta ** i`` epochs (below the full
    schedule ``epochs``), the full schedule, then ``eta ** j`` seeds (below ``seeds``) and finally
    all ``seeds`` seeds at the full schedule."""
    if epochs < 1 or seeds < 1:
        raise ValueError(f"epochs and seeds must be >= 1, got epochs = {epochs}, seeds = {seeds}")
    if eta < 2:
        raise ValueError(f"eta (the reduction factor) must be >= 2, got {eta}")
    if not 1 <= min_epochs <= epochs:
        raise ValueError(f"min_epochs must be between 1 and the student's epochs ({epochs}), got {min_epochs}")
    levels = []
    e = min_epochs
    while e < epochs:
        levels.append(Level(1, e))
        e *= eta
    levels.append(Level(1, epochs))
    n = eta
    while n < seeds:  # seeds grow geometrically too: the resource of successive halving
        levels.append(Level(n, epochs))
        n *= eta
    if seeds > 1:
        levels.append(Level(seeds, epochs))
    return levels


def auto_min_epochs(epochs: int, seeds: int, n_cells: int, budget: float) -> int:
    """The default first level: three quarters of the schedule, or less when screening every cell
    that long would not fit the budget. Measured on four Fashion-MNIST grids with cosine schedules
    (docs/advise.md): a student's accuracy before the last quarter of its schedule did not rank the
    cells (Spearman with the cells' final means <= 0.45 in three of them), the last epochs did (>= 0.88)."""
    fits = int(budget * grid_cost(n_cells, seeds, epochs) // n_cells)
    return max(1, min(math.ceil(0.75 * epochs), fits, epochs))


def level_cost(level: Level, epochs: int) -> int:
    """Epoch-runs a cell has spent once it is at ``level``."""
    return (level.seeds - 1) * epochs + level.epochs


def grid_cost(n_cells: int, seeds: int, epochs: int) -> int:
    """Epoch-runs of the full grid: every cell, every seed, the full schedule."""
    return n_cells * seeds * epochs


def level_value(curves: Mapping[int, Sequence[float]], level: Level, seed_order: Sequence[int]) -> float:
    """The value a cell reports at ``level``: one seed -> its accuracy after ``level.epochs``
    epochs; several -> the mean over those seeds of the accuracy after the full schedule."""
    if level.seeds == 1:
        return float(curves[seed_order[0]][level.epochs - 1])
    finals = [float(curves[s][level.epochs - 1]) for s in seed_order[:level.seeds]]
    return sum(finals) / len(finals)


@dataclass
class CellRecord:
    """What the allocation knows about one cell at the end."""

    cell: Cell
    arrival: int  # position in the arrival order
    level: int = -1  # highest level reached (-1: never trained)
    value: Optional[float] = None  # its value at that level
    values: List[float] = field(default_factory=list)  # value at each level reached
    stopped: str = ""  # "pruned" | "budget" | "complete"
    stopped_at_level: Optional[int] = None
    curves: Dict[int, List[float]] = field(default_factory=dict)  # seed -> val acc per epoch

    def to_dict(self) -> dict:
        return {"alpha": self.cell[0], "temperature": self.cell[1], "arrival": self.arrival, "level": self.level,
                "value": self.value, "values": self.values, "stopped": self.stopped,
                "stopped_at_level": self.stopped_at_level,
                "curves": {str(s): list(v) for s, v in sorted(self.curves.items())}}


@dataclass
class Allocation:
    """The outcome: per-cell records, the ladder, and the compute spent (epoch-runs)."""

    cells: List[CellRecord]
    levels: List[Level]
    spent: int
    grid: int
    budget: float
    eta: int
    seed: int

    @property
    def fraction(self) -> float:
        return self.spent / self.grid

    def ranking(self) -> List[CellRecord]:
        """Successive halving's own order: higher level first, then higher value at that level."""
        return sorted(self.cells, key=lambda r: (-r.level, -(r.value if r.value is not None else -math.inf),
                                                 r.arrival))

    def to_dict(self) -> dict:
        return {"levels": [lv.to_dict() for lv in self.levels], "spent_epoch_runs": self.spent,
                "grid_epoch_runs": self.grid, "fraction": self.fraction, "budget": self.budget, "eta": self.eta,
                "seed": self.seed, "cells": [r.to_dict() for r in self.cells]}


class _Ledger:
    """Epochs trained per (cell, seed): the exact compute account."""

    def __init__(self, trainer: Trainer, log: Log) -> None:
        self.trainer = trainer
        self.log = log
        self.trained: Dict[Tuple[Cell, int], int] = {}
        self.spent = 0

    def train(self, rec: CellRecord, seed: int, epochs: int) -> List[float]:
        before = self.trained.get((rec.cell, seed), 0)
        if epochs > before:
            curve = [float(v) for v in self.trainer(rec.cell, seed, epochs)]
            if len(curve) < epochs:
                raise RuntimeError(f"trainer returned {len(curve)} values for {epochs} epochs of {rec.cell} seed {seed}")
            self.trained[(rec.cell, seed)] = epochs
            self.spent += epochs - before
            self.log({"event": "train", "alpha": rec.cell[0], "temperature": rec.cell[1], "seed": seed,
                      "from_epoch": before, "to_epoch": epochs, "epoch_runs": epochs - before,
                      "spent": self.spent})
            rec.curves[seed] = curve[:epochs]
        return rec.curves[seed]

    def cost_to(self, rec: CellRecord, level: Level, seeds: Sequence[int], epochs: int) -> int:
        need = 0
        for i, s in enumerate(seeds[:level.seeds]):
            target = level.epochs if i == level.seeds - 1 else epochs
            need += max(0, target - self.trained.get((rec.cell, s), 0))
        return need


def _make_study(n_cells: int, eta: int, seed: int):  # -> optuna.Study
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # enqueued trials, not a GridSampler: the grid sampler stops the study once its grid is told,
    # which the ask-and-tell interface does not allow
    pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=eta, min_early_stopping_rate=0)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed), pruner=pruner)
    for idx in random.Random(seed).sample(range(n_cells), n_cells):
        study.enqueue_trial({"cell": idx})
    return study


def _fit_budget(alive: list, ledger: _Ledger, level: Level, seeds: Sequence[int], epochs: int, cap: float,
                k: int, log: Log) -> list:
    """The promoted cells that fit the budget at level k: all, or the best by their previous value."""
    costs = [ledger.cost_to(rec, level, seeds, epochs) for _, rec in alive]
    if ledger.spent + sum(costs) <= cap:
        return alive
    if k == 0:
        raise ValueError(f"budget too small: screening all {len(alive)} cells for {level.epochs} epoch(s) needs "
                         f"{sum(costs)} epoch-runs, the budget allows {cap:g}; raise --budget or lower --min-epochs")
    order = sorted(range(len(alive)), key=lambda i: (-(alive[i][1].value or 0.0), alive[i][1].arrival))
    keep, total = set(), ledger.spent
    for i in order:
        if total + costs[i] <= cap:
            keep.add(i)
            total += costs[i]
        else:
            break  # never skip a better cell to fit a worse one
    for i, (_trial, rec) in enumerate(alive):
        if i not in keep:
            rec.stopped, rec.stopped_at_level = "budget", rec.level
            log({"event": "stop", "reason": "budget", "alpha": rec.cell[0], "temperature": rec.cell[1],
                 "level": rec.level, "value": rec.value, "would_cost": costs[i], "spent": ledger.spent,
                 "cap": cap})
    return [a for i, a in enumerate(alive) if i in keep]


def _tell_dropped(study, before: list, after: list) -> None:
    kept = {id(t) for t, _ in after}
    for trial, _ in before:
        if id(trial) not in kept:
            study.tell(trial, state=_pruned())


def allocate(cells: Sequence[Cell], trainer: Trainer, epochs: int, seeds: Sequence[int], eta: int = 3,
             min_epochs: Optional[int] = 1, budget: float = 0.25, seed: int = 0,
             log: Optional[Log] = None) -> Allocation:
    """Successive halving over ``cells`` (see the module docstring); returns the :class:`Allocation`.

    ``seeds``: the student seeds in the order they are added (the study's ``seed_list``).
    ``budget``: the largest fraction of the full grid's epoch-runs to spend (1 = no cap).
    ``min_epochs`` None: :func:`auto_min_epochs`.
    """
    if len(cells) < 2:
        raise ValueError(f"nothing to choose: {len(cells)} cell(s); give at least two alphas or two temperatures")
    if not 0 < budget <= 1:
        raise ValueError(f"budget must be a fraction in (0, 1], got {budget}")
    log = log or (lambda event: None)
    if min_epochs is None:
        min_epochs = auto_min_epochs(epochs, len(seeds), len(cells), budget)
    levels = ladder(epochs, len(seeds), eta, min_epochs)
    grid = grid_cost(len(cells), len(seeds), epochs)
    cap = budget * grid
    study = _make_study(len(cells), eta, seed)
    alive = []
    records: List[Optional[CellRecord]] = [None] * len(cells)
    for arrival in range(len(cells)):
        trial = study.ask()
        idx = trial.suggest_categorical("cell", list(range(len(cells))))
        rec = CellRecord(cell=(float(cells[idx][0]), float(cells[idx][1])), arrival=arrival)
        records[idx] = rec
        alive.append((trial, rec))
    log({"event": "plan", "levels": [lv.to_dict() for lv in levels], "eta": eta, "budget": budget,
         "grid_epoch_runs": grid, "cap_epoch_runs": cap, "seed": seed,
         "arrival_order": [[r.cell[0], r.cell[1]] for _, r in alive]})
    ledger = _Ledger(trainer, log)
    for k, level in enumerate(levels):
        fitted = _fit_budget(alive, ledger, level, seeds, epochs, cap, k, log)
        _tell_dropped(study, alive, fitted)
        alive = fitted
        promoted = []
        for trial, rec in alive:
            for i, s in enumerate(seeds[:level.seeds]):
                ledger.train(rec, s, level.epochs if i == level.seeds - 1 else epochs)
            value = level_value(rec.curves, level, seeds)
            rec.level, rec.value = k, value
            rec.values.append(value)
            trial.report(value, step=eta ** k)
            last = k == len(levels) - 1
            if not last and trial.should_prune():
                study.tell(trial, state=_pruned())
                rec.stopped, rec.stopped_at_level = "pruned", k
                log({"event": "stop", "reason": "pruned", "alpha": rec.cell[0], "temperature": rec.cell[1],
                     "level": k, "value": value, "spent": ledger.spent})
                continue
            log({"event": "promote" if not last else "complete", "alpha": rec.cell[0], "temperature": rec.cell[1],
                 "level": k, "value": value, "spent": ledger.spent})
            promoted.append((trial, rec))
        alive = promoted
        if not alive:
            break
    for trial, rec in alive:  # survivors of the last level
        study.tell(trial, rec.value)
        rec.stopped, rec.stopped_at_level = "complete", rec.level
    out = Allocation(cells=[r for r in records if r is not None], levels=levels, spent=ledger.spent, grid=grid,
                     budget=budget, eta=eta, seed=seed)
    log({"event": "done", "spent_epoch_runs": out.spent, "grid_epoch_runs": grid, "fraction": out.fraction})
    return out


def _pruned():  # -> optuna.trial.TrialState
    from optuna.trial import TrialState

    return TrialState.PRUNED
