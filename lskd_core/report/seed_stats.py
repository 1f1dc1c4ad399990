"""The report's bridge to :mod:`lskd_core.statistics`: seed-level rows from the accuracy grid and
from the eta section's per-seed tables, and the markdown of the intervals, trends and eta over seeds.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence

from lskd_core import statistics as st
from lskd_core.jsonio import num
from lskd_core.report.markdown import md_table

__all__ = ["grid_rows", "eta_rows", "eta_over_seeds", "cell_interval_table", "trend_table", "best_set_line",
           "eta_over_seeds_md"]

VARIANTS = {"eq1": ("eta_s1", "eta_s2"), "pairwise": ("eta_s1_pairwise", "eta_s2_pairwise")}


def grid_rows(grid: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """One record per finished student of the accuracy grid (value = its main score)."""
    rows = []
    for c in grid.get("cells", []):
        teachers = c.get("teacher_seeds") or [0] * len(c.get("seeds", []))
        for seed, teacher, value in zip(c.get("seeds", []), teachers, c.get("top1", [])):
            rows.append({"alpha": c["alpha"], "temperature": c["temperature"], "seed": seed,
                         "teacher_seed": teacher, "value": value})
    return rows


def eta_rows(eta: Optional[Mapping[str, Any]], sets: str = "hierarchy", split: str = "train",
             variant: str = "eq1") -> List[Dict[str, Any]]:
    """Per-run eta records (every seed whose features exist) for one choice of sets, split and variant."""
    k1, k2 = VARIANTS[variant]
    out = []
    for tab in (eta or {}).get("seed_tables", []):
        if tab["sets"] != sets or tab["split"] != split:
            continue
        for r in tab["rows"]:
            if k1 in r and k2 in r:
                out.append({"alpha": tab["alpha"], "t1": tab["t1"], "t2": tab["t2"], "seed": tab["seed"],
                            "teacher_seed": tab.get("teacher_seed", 0), "target": r["target"],
                            "eta_s1": r[k1], "eta_s2": r[k2]})
    return out


def eta_over_seeds(eta: Mapping[str, Any]) -> List[Dict[str, Any]]:
    """eta summaries over seeds for every (sets, split, variant) the section computed."""
    out = []
    combos = sorted({(t["sets"], t["split"]) for t in eta.get("seed_tables", [])})
    for sets, split in combos:
        for variant in VARIANTS:
            rows = eta_rows(eta, sets, split, variant)
            if rows:
                out.append({"sets": sets, "split": split, "variant": variant,
                            "groups": st.eta_summary(st.as_eta_observations(rows))})
    return out


# ------------------------------------------------------------------------------------------------
# markdown
# ------------------------------------------------------------------------------------------------
def _ci(est: Optional[Mapping[str, Any]], nd: int = 2, signed: bool = False) -> str:
    if est is None:
        return "—"
    f = f"{{:{'+' if signed else ''}.{nd}f}}"
    if est.get("ci") is None:
        return f.format(est["estimate"]) + " (no interval)"
    lo, hi = est["ci"]
    return f"{f.format(est['estimate'])} [{f.format(lo)}, {f.format(hi)}]"


def cell_interval_table(analysis: Mapping[str, Any]) -> str:
    """Per cell: mean and 95 % interval over the units, and n."""
    alphas, temps = analysis["alphas"], analysis["temperatures"]
    rows = []
    for t in temps:
        row = [f"T = {num(t)}"]
        for a in alphas:
            c = next((c for c in analysis["cells"] if c["alpha"] == a and c["temperature"] == t), None)
            row.append("—" if c is None else f"{_ci(c['interval'])} (n = {c['interval']['n']})")
        rows.append(row)
    return md_table(["T \\ alpha"] + [f"alpha = {num(a)}" for a in alphas], rows)


def trend_table(analysis: Mapping[str, Any], unit: str) -> str:
    """Per alpha the fitted slope on ln T (and the change over the grid), then the interaction."""
    rows = []
    for tr in analysis["trends"]:
        est = tr.get("slope_per_ln_T")
        if est is None:
            continue
        rows.append([f"alpha = {num(tr['alpha'])}", _ci(est, signed=True), _ci(tr["change_over_range"], signed=True),
                     "—" if est.get("p") is None else f"{est['p']:.3g}", f"{est['n']} {est['unit']}s", est["method"]])
    inter = analysis.get("interaction")
    if inter and inter.get("slope_difference_per_ln_T"):
        est = inter["slope_difference_per_ln_T"]
        rows.append([f"LS − plain (alpha {num(inter['alpha_ls'])} − {num(inter['alpha_plain'])})",
                     _ci(est, signed=True), _ci(inter["change_over_range"], signed=True),
                     "—" if est.get("p") is None else f"{est['p']:.3g}", f"{est['n']} {est['unit']}s", est["method"]])
    t = analysis["temperatures"]
    return md_table(["", "slope per ln T [95 %]", f"fitted change T = {num(t[0])} → {num(t[-1])} ({unit}) [95 %]",
                     "p", "n", "method"], rows)


def best_set_line(analysis: Mapping[str, Any]) -> str:
    best = analysis["best"]
    cells = ", ".join(f"(alpha = {num(c[0])}, T = {num(c[1])})" for c in best["set"])
    return f"Cells that cannot be told apart from the best: {cells}. Procedure: {best['method']}."


def _eta_group_row(sets: str, split: str, variant: str, g: Mapping[str, Any]) -> List[str]:
    s = g["summary"]
    return [sets, split, variant, num(g["alpha"]), f"{num(g['t1'])} -> {num(g['t2'])}",
            _ci(s["eta_s1"], 3, True), _ci(s["eta_s2"], 3, True),
            f"{100 * s['share_diffusion']:.0f} % of {s['runs']}", f"{s['eta_s1']['n']} {s['eta_s1']['unit']}s"]


def eta_over_seeds_md(over: Sequence[Mapping[str, Any]], names: Sequence[str], alpha_ls: Optional[float],
                      t_max: Optional[float]) -> List[str]:
    """Summary table over seeds (every sets/split/variant) and the per-target table for the LS teacher."""
    if not over:
        return []
    rows = [_eta_group_row(o["sets"], o["split"], o["variant"], g) for o in over for g in o["groups"]]
    md = ["Over every student seed whose features were exported (each run's eta averaged over the target "
          "classes first; mean [95 % interval] over the units, percent; 'diffusion' = the run's eta_S1 < 0 "
          "and eta_S2 > 0, both: Eq. 1 averages changes relative to each class's distance, so the two can "
          "share a sign):\n",
          md_table(["sets", "split", "variant", "teacher alpha", "T1 -> T2", "eta_S1", "eta_S2",
                    "runs showing diffusion", "n"], rows) + "\n"]
    main = next((o for o in over if o["sets"] == "hierarchy" and o["split"] == "train" and o["variant"] == "eq1"),
                None)
    g = next((g for g in (main or {}).get("groups", []) if g["alpha"] == alpha_ls and g["t2"] == t_max), None)
    if g is not None:
        nm = (lambda c: names[c] if c < len(names) else str(c))
        trows = [[nm(t["target"]), _ci(t["eta_s1"], 3, True), _ci(t["eta_s2"], 3, True),
                  f"{100 * t['share_diffusion']:.0f} % of {t['runs']}"] for t in g["targets"]]
        md += [f"Per target class over seeds (hierarchy sets, train split, teacher alpha = {num(g['alpha'])}, "
               f"T {num(g['t1'])} -> {num(g['t2'])}):\n",
               md_table(["target", "eta_S1 [95 %]", "eta_S2 [95 %]", "runs showing diffusion"], trows) + "\n"]
    return md
