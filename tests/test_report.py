"""The study report (lskd_core.report): verdict statistics and a report on hand-made studies with known numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import eta_from_centroids, synthetic_study, well_formed_report

from lskd_core import study as S
from lskd_core.report import compare_cells, write_report

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------------------------
# verdict statistics
# ------------------------------------------------------------------------------------------------
def test_compare_cells_levels():
    clear = compare_cells([80.0, 80.2, 79.9], [75.0, 75.3, 74.8])
    assert clear["level"] == "clear" and clear["diff"] == pytest.approx(80.033333 - 75.033333, abs=1e-4)
    # independent Welch computation
    a, b = np.array([80.0, 80.2, 79.9]), np.array([75.0, 75.3, 74.8])
    se = math.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 3)
    assert clear["se"] == pytest.approx(se)
    noisy = compare_cells([80.0, 70.0], [75.0, 76.0])
    assert noisy["level"] == "inconclusive"
    assert compare_cells([80.0], [70.0])["level"] == "no-spread-estimate"


# ------------------------------------------------------------------------------------------------
# report on a hand-made study (known numbers)
# ------------------------------------------------------------------------------------------------
def test_report_on_known_numbers(tmp_path):
    accs = {("teacher", 0.0, None, 0): 90.0, ("teacher", 0.1, None, 0): 91.0}
    for s, (a0t1, a1t1, a0t3, a1t3) in enumerate([(80.0, 82.0, 81.0, 78.0), (80.4, 82.6, 81.2, 77.0)]):
        accs.update({("student", 0.0, 1.0, s): a0t1, ("student", 0.1, 1.0, s): a1t1,
                     ("student", 0.0, 3.0, s): a0t3, ("student", 0.1, 3.0, s): a1t3})
    synthetic_study(tmp_path, accs)
    rep = write_report(tmp_path)
    res = json.loads((rep / "results.json").read_text())
    cells = {(c["alpha"], c["temperature"]): c for c in res["accuracy_grid"]["cells"]}
    assert cells[(0.1, 1.0)]["top1_mean"] == pytest.approx(82.3)
    assert cells[(0.1, 1.0)]["top1_std"] == pytest.approx(np.std([82.0, 82.6], ddof=1))
    assert cells[(0.1, 1.0)]["compatible"] is True and cells[(0.1, 3.0)]["compatible"] is False
    md = well_formed_report(rep)  # the same from results.json read back; every block its own
    assert "**82.30 ± 0.42 / 99.00 ± 0.00**" in md  # compatible cell in bold
    assert "| 77.50 ± 0.71 / 99.00 ± 0.00 |" in md  # incompatible cell not bold
    v = res["verdict"]
    assert (v["best"]["alpha"], v["best"]["temperature"]) == (0.1, 1.0)
    assert v["trends"]["ls_teacher_degrades_with_T"]["holds"] is True
    assert v["trends"]["compatible_at_low_T"]["holds"] is True
    # eta equals an independent Eq. 1 on the same files and sets; the built-in shift is systematic
    from lskd_core.features_io import load_features

    eta = res["eta"]
    assert eta["status"] == "ok", eta
    for tab in eta["tables"]:
        f1 = load_features(tmp_path / "runs" / S.export_id(S.student_id(tab["alpha"], 1, 0), tab["split"]) / "features.npz")
        f3 = load_features(tmp_path / "runs" / S.export_id(S.student_id(tab["alpha"], 3, 0), tab["split"]) / "features.npz")
        c1 = np.stack([f1.features[f1.labels == c].mean(0) for c in range(10)]).astype(np.float64)
        c3 = np.stack([f3.features[f3.labels == c].mean(0) for c in range(10)]).astype(np.float64)
        for row in tab["rows"]:
            s1, s2 = eta["sets"][tab["sets"]][str(row["target"])]
            e1, e2 = eta_from_centroids(c1, c3, row["target"], s1, s2)
            assert row["eta_s1"] == pytest.approx(e1, rel=1e-4, abs=1e-6)
            assert row["eta_s2"] == pytest.approx(e2, rel=1e-4, abs=1e-6)
            if row["target"] == 0 and tab["sets"] == "hierarchy":
                assert 6 in s1  # Shirt is T-shirt/top's semantic neighbour in the WordNet hierarchy
                assert row["eta_s1"] < 0 < row["eta_s2"]
    # second write: every analysis comes from the cache
    write_report(tmp_path)
    res2 = json.loads((rep / "results.json").read_text())
    assert res2["eta"]["cached"] is True and res2["eta"]["tables"] == eta["tables"]


def test_translation_plan_and_bleu_grid(tmp_path):
    # the live-teacher path (cache runs and the BLEU scorer: tests/test_study_grid.py)
    cfg = S.load_config("translation", overrides={"seeds": 1, "temperatures": [1, 2], "cache": False})
    plan = S.build_plan(cfg)
    by = {r.run_id: r for r in plan}
    assert by["prepare_en-de"].deps == []
    st = by["student_a0.1_T2_s0"]
    assert st.program == ("exe", "fairseq-train") and st.deps == ["prepare_en-de", "teacher_a0.1"]
    for flag, val in (("--criterion", "ls_kd"), ("--kd-temperature", "2"), ("--kd-beta", "1"),
                      ("--teacher-path", "{study}/runs/teacher_a0.1/checkpoint_best.pt")):
        assert st.args[st.args.index(flag) + 1] == val
    te = by["teacher_a0.1"]
    assert te.args[te.args.index("--criterion") + 1] == "label_smoothed_cross_entropy"
    assert te.args[te.args.index("--label-smoothing") + 1] == "0.1"
    argv = S.run_command(st, tmp_path, cfg)
    assert argv[argv.index("--user-dir") + 1] == str(ROOT / "fairseq_plugin")
    assert argv[1] == str(tmp_path / "runs" / "prepare_en-de" / "data" / "bin")
    assert {r.run_id for r in plan if r.kind == "generate"} == {f"bleu_{r.run_id}" for r in plan
                                                                if r.kind in ("teacher", "student")}
    # the BLEU grid from fairseq-generate outputs
    S.write_manifest(tmp_path, cfg, plan)
    bleus = {"teacher_a0": 20.0, "teacher_a0.1": 21.0, "student_a0_T1_s0": 15.0, "student_a0.1_T1_s0": 16.5,
             "student_a0_T2_s0": 14.0, "student_a0.1_T2_s0": 13.0}
    for rid, b in bleus.items():
        d = tmp_path / "runs" / f"bleu_{rid}"
        d.mkdir(parents=True)
        res = {"status": "done", "bleu": b}  # as the generate run's result.json records it
        (d / "result.json").write_text(json.dumps(res))
    rep = write_report(tmp_path)
    res = json.loads((rep / "results.json").read_text())
    grid = res["accuracy_grid"]
    assert grid["status"] == "ok" and grid["metric"] == "bleu"
    cells = {(c["alpha"], c["temperature"]): c for c in grid["cells"]}
    assert cells[(0.1, 1.0)]["top1_mean"] == 16.5 and cells[(0.1, 1.0)]["compatible"] is True
    assert cells[(0.1, 2.0)]["compatible"] is False
    assert [t["bleu"] for t in grid["teachers"]] == [20.0, 21.0]
    assert "## 1. BLEU grid (Table 5)" in well_formed_report(rep)
    assert res["verdict"]["best"] == {"alpha": 0.1, "temperature": 1.0, "top1_mean": 16.5, "top1_std": None}
