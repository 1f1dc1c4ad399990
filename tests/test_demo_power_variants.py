"""scripts/demo_power_variants.py (issue 21): the variant arms' units, half-widths, CPU and pair
variance against values computed here by hand and scipy's t; the CLI prices arms from a pilot."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from scipy import stats

_SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
_SPEC = importlib.util.spec_from_file_location("demo_power", _SCRIPTS / "demo_power.py")
assert _SPEC and _SPEC.loader
dp = importlib.util.module_from_spec(_SPEC)
sys.modules["demo_power"] = dp
_SPEC.loader.exec_module(dp)  # puts scripts/ on sys.path
import demo_power_variants as dv  # noqa: E402

T2 = stats.t.ppf(0.975, 2)  # 4.303: 3 teachers


def test_arm_units_follow_seed_i_to_teacher_i_mod_n():
    assert dv.arm_units(6, 3) == (3, 2.0)  # seeds 0..5 -> teachers 0, 1, 2, 0, 1, 2
    assert dv.arm_units(3, 3) == (3, 1.0)
    assert dv.arm_units(2, 3) == (2, 1.0)  # teachers 0 and 1 only
    assert dv.arm_units(1, 3) == (1, 1.0)  # one teacher covered: the student seed is the unit
    assert dv.arm_units(10, 1) == (10, 1.0)


def test_arm_halfwidth_by_hand():
    # 3 teachers x 2 pairs: unit sd sqrt(tau^2 + sigma^2 / 2)
    assert dv.arm_halfwidth(1.0, 0.5, 6, 3) == pytest.approx(T2 * math.sqrt(0.25 + 0.5) / math.sqrt(3))
    # 1 pair per teacher: the unit's sd is sqrt(tau^2 + sigma^2) (with pair_components' total sd, tau = 0)
    assert dv.arm_halfwidth(1.2, 0.5, 3, 3) == pytest.approx(T2 * math.sqrt(0.25 + 1.44) / math.sqrt(3))
    assert dv.arm_halfwidth(1.2, 0.0, 3, 3) == pytest.approx(T2 * 1.2 / math.sqrt(3))
    # one teacher per alpha: t over the 8 student seeds
    assert dv.arm_halfwidth(1.0, 0.0, 8, 1) == pytest.approx(stats.t.ppf(0.975, 7) / math.sqrt(8))
    assert dv.arm_halfwidth(1.0, 0.0, 1, 3) == math.inf


def test_arm_cpu_counts_students_and_their_val_exports():
    cost = {"student": (4.0, 0.0, 0.0), "export": (1.5, 0.0, 0.0)}
    got = dv.arm_cpu(arms=2, variant_seeds=6, alphas=2, temperatures=2, cost=cost, train=6000, val=10000,
                     student_epochs=2, export_images=4000)
    assert got == {"student": 48 * 4.0, "export": 48 * 1.5}


def _recs(diffs, name="ttm"):
    """Grid records at 70 and one arm's records at 70 + diff, keyed (alpha, T, teacher, seed) -> diff."""
    grid = [dp.Rec(a, t, s, k, 70.0) for (a, t, k, s) in diffs]
    arm = [dp.Rec(a, t, s, k, 70.0 + d) for (a, t, k, s), d in diffs.items()]
    return grid, {name: arm}


def test_pair_components_one_pair_per_teacher_is_the_total_sd():
    # cell A: diffs 1, 2, 3 (mean 2, SS 2); cell B: 10, 10, 13 (mean 11, SS 6): the cell's own mean
    # is removed (the arm's effect may differ by cell), pooled SS 8 over 4 df
    diffs = {(0.0, 1.0, k, k): v for k, v in enumerate((1.0, 2.0, 3.0))}
    diffs.update({(0.0, 64.0, k, k): v for k, v in enumerate((10.0, 10.0, 13.0))})
    got = dv.pair_components(*_recs(diffs))
    assert not got["split"] and got["df"] == 4 and got["tau_pair"] == 0.0
    assert got["sigma_pair"] == pytest.approx(math.sqrt(8 / 4))
    assert got["cell_means"] == {"ttm 0,1": pytest.approx(2.0), "ttm 0,64": pytest.approx(11.0)}


def test_pair_components_keep_two_arms_of_one_cell_apart():
    # arm x: diffs 0, 2 at seeds 0, 1; arm y: 10, 10. Pooled around each arm's own cell mean: SS 2
    # over 2 df (were the arms merged into one cell, y would overwrite x, or inflate the sd)
    grid = [dp.Rec(0.0, 1.0, s, s, 70.0) for s in (0, 1)]
    x = [dp.Rec(0.0, 1.0, 0, 0, 70.0), dp.Rec(0.0, 1.0, 1, 1, 72.0)]
    y = [dp.Rec(0.0, 1.0, 0, 0, 80.0), dp.Rec(0.0, 1.0, 1, 1, 80.0)]
    got = dv.pair_components(grid, {"x": x, "y": y})
    assert got["pairs"] == 4 and got["cells"] == 2 and got["df"] == 2
    assert got["sigma_pair"] == pytest.approx(1.0)


def test_pair_components_two_pairs_per_teacher_split_within_and_teacher():
    # one cell, teachers 0, 1, 2 with pairs (0, 2), (3, 5), (1, 3): within SS 2 + 2 + 2 over 3 df ->
    # sd sqrt(2); teacher means 1, 4, 2 (var 7/3) minus within^2 / 2 = 1 -> tau sqrt(4/3)
    values = {0: (0.0, 2.0), 1: (3.0, 5.0), 2: (1.0, 3.0)}
    diffs = {(0.1, 1.0, k, k + 3 * i): v for k, pair in values.items() for i, v in enumerate(pair)}
    got = dv.pair_components(*_recs(diffs))
    assert got["split"] and got["df"] == 3
    assert got["sigma_pair"] == pytest.approx(math.sqrt(2.0))
    assert got["tau_pair"] == pytest.approx(math.sqrt(7 / 3 - 1))


def _pilot_with_arm(tmp_path: Path) -> Path:
    study = tmp_path / "pilot"
    for a in (0.0, 0.1):
        for t in (1.0, 64.0):
            for s in range(6):
                for arm, tag in ((None, ""), ("teacher_only_T", "_ttm")):
                    run = study / "runs" / f"student_a{a}_T{t}_s{s}{tag}"
                    run.mkdir(parents=True)
                    info = {"alpha": a, "temperature": t, "seed": s, "teacher_seed": s % 3}
                    if arm:
                        info["arm"] = arm
                    (run / "run_config.json").write_text(json.dumps({"kind": "student", "info": info}))
                    value = 80.0 - (0.5 if a else 0.2) * math.log(t) + 0.3 * ((s * 7 + int(t)) % 3)
                    value += (1.0 + 0.5 * (s % 2)) if arm else 0.0  # arm - grid: 1 or 1.5 by seed
                    (run / "result.json").write_text(json.dumps({"val_acc1": value}))
    return study


def test_the_grid_never_reads_an_arms_students(tmp_path):
    study = _pilot_with_arm(tmp_path)
    assert len(dp.read_students(study)) == 24 and len(dp.read_students(study, arm="teacher_only_T")) == 24
    assert dp.read_students(study, arm="logit_standardization") == []


def test_cli_prices_the_arms_from_the_pilots_arm_students(tmp_path, capsys):
    study = _pilot_with_arm(tmp_path)
    out = tmp_path / "power.json"
    costs = ["--cost", "teacher=60", "--cost", "cache=10", "--cost", "student=4", "--cost", "export=1.5"]
    assert dp.main([str(study), *costs, "--variant-arms", "teacher_only_T", "--variant-seeds", "3", "6",
                    "--variant-base-wall", "300", "--json", str(out)]) == 0
    got = json.loads(out.read_text())["variants"]
    # pairs 1.0 (even seeds) and 1.5 (odd): teacher k holds seeds k and k + 3, one of each -> within
    # SS 0.125 per teacher, 3 df per cell, 12 df over the 4 cells; sd sqrt(0.125); teachers agree
    pair = got["pair"]["teacher_only_T"]
    assert pair["split"] and pair["df"] == 12
    assert pair["sigma_pair"] == pytest.approx(math.sqrt(0.125)) and pair["tau_pair"] == pytest.approx(0)
    rows = {r["variant_seeds"]: r for r in got["rows"]}
    assert rows[6]["added_cpu_s"] == pytest.approx(24 * 5.5) and rows[6]["wall_estimate_s"] == pytest.approx(300 + 66)
    assert rows[6]["halfwidth"]["teacher_only_T"] == pytest.approx(T2 * math.sqrt(0.125 / 2) / math.sqrt(3))
    assert rows[3]["arm_students"] == 12 and rows[3]["units"] == 3
    assert "variant_seeds 6: 24 arm students" in capsys.readouterr().out


def test_cli_without_pilot_arms_uses_the_independent_students_prior(tmp_path):
    study = _pilot_with_arm(tmp_path)
    out = tmp_path / "power.json"
    costs = ["--cost", "teacher=60", "--cost", "cache=10", "--cost", "student=4", "--cost", "export=1.5"]
    assert dp.main([str(study), *costs, "--variant-arms", "logit_standardization", "--variant-seeds", "3",
                    "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    prior = got["variants"]["pair"]["logit_standardization"]
    assert prior["prior"] and prior["sigma_pair"] == pytest.approx(math.sqrt(2) * got["variance"]["cell_sd"])


def test_cli_bad_variant_base_is_one_line(tmp_path, capsys):
    study = _pilot_with_arm(tmp_path)
    costs = ["--cost", "teacher=60", "--cost", "cache=10", "--cost", "student=4", "--cost", "export=1.5"]
    assert dp.main([str(study), *costs, "--variant-arms", "teacher_only_T", "--variant-base", "six"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--variant-base takes SEEDS,TEACHER_SEEDS" in err
