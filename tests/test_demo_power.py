"""scripts/demo_power.py: half-widths, variance components and the cost model against hand-computed
values and scipy's own t / noncentral-t distributions."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
from scipy import stats

_SPEC = importlib.util.spec_from_file_location(
    "demo_power", Path(__file__).resolve().parent.parent / "scripts" / "demo_power.py")
assert _SPEC and _SPEC.loader
dp = importlib.util.module_from_spec(_SPEC)
sys.modules["demo_power"] = dp  # dataclasses look their module up
_SPEC.loader.exec_module(dp)

E = math.e


def test_sxx_and_span_by_hand():
    # ln T = 0, 1, 2: deviations -1, 0, 1
    assert dp.sxx([1, E, E ** 2]) == pytest.approx(2.0)
    assert dp.log_span([1, E, E ** 2]) == pytest.approx(2.0)
    # the paper's grid: ln 1, ln 2, ln 3, ln 64
    x = [0.0, math.log(2), math.log(3), math.log(64)]
    m = sum(x) / 4
    assert dp.sxx([1, 2, 3, 64]) == pytest.approx(sum((v - m) ** 2 for v in x))


def test_t_halfwidth_by_hand():
    assert dp.t_halfwidth(1.0, 4) == pytest.approx(3.182446305 / 2, rel=1e-8)  # t_.975,3 = 3.1824
    assert dp.t_halfwidth(1.0, 1) == math.inf


def test_teacher_unit_includes_teacher_variance():
    # 3 teachers, 2 students each: unit var = 0.5^2 + 1^2 / 2 = 0.75; t_.975,2 = 4.302653
    assert dp.unit_sd(1.0, 0.5, 6, 3) == (pytest.approx(math.sqrt(0.75)), 3)
    assert dp.interaction_halfwidth(1.0, 0.5, 6, 3) == pytest.approx(4.302653 * math.sqrt(0.75 / 3), rel=1e-6)
    # one teacher: student seeds are the unit and the teacher term is ignored (not sampled)
    assert dp.interaction_halfwidth(1.0, 5.0, 4, 1) == pytest.approx(3.182446305 / 2, rel=1e-8)


def test_pooled_trend_halfwidth_by_hand():
    # 2 seeds x T {1, e}: n = 4 runs, df 2, Sxx 0.5 per seed: se = 1 / sqrt(2 * 0.5) = 1
    assert dp.pooled_trend_halfwidth(1.0, 2, [1, E]) == pytest.approx(4.302653, rel=1e-6)


def _recs(table):
    return [dp.Rec(a, t, s, k, v) for (a, t, s, k), v in table.items()]


def test_residual_and_cell_sd_by_hand():
    # one (alpha, teacher): seeds x T = [[1, 2], [3, 6]]; two-way residuals +-0.5: SS 1 on 1 df
    recs = _recs({(0.0, 1.0, 0, 0): 1, (0.0, E, 0, 0): 2, (0.0, 1.0, 1, 0): 3, (0.0, E, 1, 0): 6})
    assert dp.residual_sd(recs) == (pytest.approx(1.0), 1)
    # cells: [1, 3] SS 2 and [2, 6] SS 8 on 2 df
    assert dp.cell_sd(recs) == (pytest.approx(math.sqrt(5.0)), 2)


def test_paired_slope_differences_by_hand():
    # T {1, e}: a seed's slope on ln T is y(e) - y(1)
    recs = _recs({(0.1, 1.0, 0, 0): 80.0, (0.1, E, 0, 0): 78.0, (0.0, 1.0, 0, 0): 79.0, (0.0, E, 0, 0): 78.5,
                  (0.1, 1.0, 1, 0): 81.0, (0.1, E, 1, 0): 80.0, (0.0, 1.0, 1, 0): 77.0, (0.0, E, 1, 0): 78.0,
                  (0.1, 1.0, 2, 0): 70.0})  # seed 2 has one T only: no slope, not paired
    d = dp.slope_differences(recs, 0.1, 0.0)
    assert d == {(0, 0): pytest.approx(-2.0 + 0.5), (0, 1): pytest.approx(-1.0 - 1.0)}


def test_between_within_method_of_moments_by_hand():
    # teacher 0: 1, 3; teacher 1: 5, 7 -> within SS 4 on 2 df; teacher means 2, 6: var 8; m = 2
    bw = dp.between_within({(0, 0): 1.0, (0, 1): 3.0, (1, 0): 5.0, (1, 1): 7.0})
    assert bw["within_sd"] == pytest.approx(math.sqrt(2.0))
    assert bw["teacher_sd"] == pytest.approx(math.sqrt(8.0 - 2.0 / 2))
    # teachers that differ less than their students' noise: floored at 0, not negative
    assert dp.between_within({(0, 0): 0.0, (0, 1): 4.0, (1, 0): 1.0, (1, 1): 3.0})["teacher_sd"] == 0.0
    assert dp.between_within({(0, 0): 0.0, (0, 1): 4.0})["teacher_sd"] is None


def test_p_decide_reduces_to_the_t_tests_size_and_power():
    # with delta -> 0 only "the interval excludes 0" decides: the two-sided t test's rejection rate
    n, sd = 5, 1.0
    assert dp.p_decide(0.0, sd, n, 1e-12, draws=200000) == pytest.approx(0.05, abs=0.003)
    theta = 1.2
    tc, nc = stats.t.ppf(0.975, n - 1), theta * math.sqrt(n) / sd
    power = stats.nct.sf(tc, n - 1, nc) + stats.nct.cdf(-tc, n - 1, nc)
    assert dp.p_decide(theta, sd, n, 1e-12, draws=200000) == pytest.approx(power, abs=0.005)
    # a huge delta: every interval lies inside it
    assert dp.p_decide(0.0, sd, n, 1e9) == 1.0


def test_fit_cost_recovers_a_linear_cost():
    rows = [(t, v, 3.0 + 0.001 * t + 0.0002 * v) for t, v in ((6000, 20000), (12000, 10000), (3000, 10000), (0, 0))]
    assert dp.fit_cost(rows) == pytest.approx((3.0, 0.001, 0.0002))
    # constant images evaluated: that coefficient cannot be identified and is left at 0
    assert dp.fit_cost([(1000, 500, 4.0), (3000, 500, 8.0)]) == pytest.approx((2.0, 0.002, 0.0))


def test_design_cpu_counts_the_plan():
    unit = {k: (1.0, 0.0, 0.0) for k in ("teacher", "cache", "student", "export")}
    d = dp.Design(seeds=6, teacher_seeds=3, temperatures=(1.0, 2.0, 3.0, 64.0), train=6000, val=10000,
                  teacher_epochs=4, student_epochs=2, export_images=4000)
    cpu = dp.design_cpu(d, unit)
    assert cpu == {"teacher": 6, "cache": 6, "student": 48, "export": 2 * 6 + 2 * 48}
    assert dp.wall_estimate(cpu, 10.0, 2) == pytest.approx((6 + 6 + 48 + 108) / 2 + 10.0)


def _pilot(tmp_path: Path) -> Path:
    study = tmp_path / "pilot"
    for a in (0.0, 0.1):
        for t in (1.0, 64.0):
            for s in range(4):
                run = study / "runs" / f"student_a{a}_T{t}_s{s}"
                run.mkdir(parents=True)
                info = {"alpha": a, "temperature": t, "seed": s, "teacher_seed": s % 2}
                (run / "run_config.json").write_text(json.dumps({"kind": "student", "info": info}))
                value = 80.0 - (0.5 if a else 0.2) * math.log(t) + 0.3 * ((s * 7 + int(t)) % 3)
                (run / "result.json").write_text(json.dumps({"val_acc1": value}))
    return study


def test_cli_end_to_end_on_a_synthetic_pilot(tmp_path, capsys):
    study = _pilot(tmp_path)
    log = tmp_path / "cpu.log"
    lines = []
    for n, e in ((6000, 4), (3000, 1)):
        lines.append(f"{10 + n * e / 1000} 0.5 99 -m vision_plugin.train --model lskd_cnn_t --train-samples {n} --epochs {e}")
        lines.append(f"{3 + n * e / 4000} 0.1 9 -m vision_plugin.teacher_cache build --train-samples {n} --epochs {e}")
        lines.append(f"{4 + n * e / 3000} 0.1 9 -m vision_plugin.train --model lskd_cnn_s --teacher-cache X "
                     f"--train-samples {n} --epochs {e}")
        lines.append(f"{2 + n / 5000} 0.1 9 -m vision_plugin.export_features --split train --train-samples {n}")
    log.write_text("\n".join(lines) + "\n")
    out = tmp_path / "power.json"
    assert dp.main([str(study), "--cpu-log", str(log), "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["variance"]["slope_difference"]["teachers"] == 2
    assert got["best"]["wall_estimate_s"] <= 900
    assert "best:" in capsys.readouterr().out


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    assert dp.main([str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no runs/ directory" in err


def test_pilots_with_different_temperature_sets_pool_on_the_sxx_scale():
    # pilot 1, T {1, e} (Sxx 0.5): slope differences 1 and 3; pilot 2, T {1, e, e^2} (Sxx 2): 0.5 and 1.5.
    # Normalised by sqrt(Sxx) both are {0.707, 2.121}: within-teacher SS 1 each, 2 df -> sd 1.
    def pilot(temps, slopes):
        recs = []
        for seed, b in enumerate(slopes):
            for t in temps:
                recs.append(dp.Rec(0.1, t, seed, 0, 70.0 + b * math.log(t)))
                recs.append(dp.Rec(0.0, t, seed, 0, 70.0))
        return recs

    var = dp.variance_summary([pilot([1.0, E], [1.0, 3.0]), pilot([1.0, E, E ** 2], [0.5, 1.5])], 0.1, 0.0)
    assert var["slope_difference"]["within_sd"] == pytest.approx(1.0)
    assert var["slope_difference"]["within_df"] == 2
    assert var["slope_difference_teacher"] is None  # one teacher per pilot: the teacher's variance is unknown
    # a design on T {1, e}: per-seed slope-difference sd 1 / sqrt(0.5); one teacher, 4 seeds
    d = dp.Design(4, 1, (1.0, E), 6000, 10000, 4, 2, 4000)
    unit = {k: (1.0, 0.0, 0.0) for k in ("teacher", "cache", "student", "export")}
    row = dp.evaluate_design(d, var, unit, 1.0, 2, 0.0)
    assert row["interaction_halfwidth_over_range"] == pytest.approx(3.182446305 * math.sqrt(2) / 2, rel=1e-8)
