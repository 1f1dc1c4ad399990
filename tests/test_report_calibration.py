"""The report's calibration section and variant comparison on a hand-made study (known numbers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import synthetic_study, well_formed_report

from lskd_core import study as S
from lskd_core.features_io import load_features
from lskd_core.report import write_report


def _ece_equal_mass_loop(logits, labels, bins=15):
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    conf, correct = p.max(1), (p.argmax(1) == labels)
    order = sorted(range(len(conf)), key=lambda i: (conf[i], i))
    total = 0.0
    for chunk in np.array_split(np.array(order), bins):
        total += len(chunk) / len(conf) * abs(correct[chunk].mean() - conf[chunk].mean())
    return total


def test_calibration_and_variant_sections(tmp_path):
    accs = {}
    for s in range(2):
        for a in (0.0, 0.1):
            for t in (1.0, 3.0):
                accs[("student", a, t, s)] = 80.0 + s
                accs[("student", a, t, s, "teacher_only_T")] = 80.0 + s + (1.5 if a == 0.1 else 0.25)
    synthetic_study(tmp_path, accs, overrides={"variant_arms": ["teacher_only_T"]})
    rep = write_report(tmp_path)
    res = json.loads((rep / "results.json").read_text())
    well_formed_report(rep)
    cal = res["calibration"]
    assert cal["status"] == "ok", cal.get("error") or cal.get("missing_inputs")
    # every teacher and student cell, both arms; values from an independent computation on the export
    assert {(c["arm"], c["alpha"], c["temperature"]) for c in cal["students"]} == {
        (arm, a, t) for arm in ("standard", "teacher_only_T") for a in (0.0, 0.1) for t in (1.0, 3.0)}
    cell = next(c for c in cal["students"] if (c["arm"], c["alpha"], c["temperature"]) == ("teacher_only_T", 0.1, 3.0))
    per_seed = []
    for s in range(2):
        f = load_features(tmp_path / "runs" / S.export_id(S.variant_student_id(0.1, 3.0, s, "teacher_only_T"), "val")
                          / "features.npz")
        z = f.features.astype(np.float64) @ f.weight.T.astype(np.float64) + f.bias
        per_seed.append(_ece_equal_mass_loop(z, f.labels))
        assert np.allclose(z, f.logits, atol=1e-4)  # the export's logits are features @ W.T + b
    est = cell["summary"]["ece"]
    assert est["estimate"] == pytest.approx(np.mean(per_seed), abs=1e-12) and est["n"] == 2
    assert est["ci"] is not None
    # the verdict's sentence and the figure per teacher alpha
    assert "Calibration: the ECE (15 equal-mass bins) of the alpha = 0.1 teacher" in res["verdict"]["text"]
    assert set(cal["png"]) == {"0", "0.1"} and all((rep / p).is_file() for p in cal["png"].values())
    # variant comparison: arm - grid per cell, paired by seed (here a constant shift: no spread)
    var = res["variants"]
    assert var["status"] == "ok"
    cells = {(c["alpha"], c["temperature"]): c for c in var["arms"][0]["cells"]}
    assert cells[(0.1, 1.0)]["difference"]["estimate"] == pytest.approx(1.5)
    assert cells[(0.0, 3.0)]["difference"]["estimate"] == pytest.approx(0.25)
    assert var["arms"][0]["advice"]["holds"] in (True, False)
    md = (rep / "report.md").read_text()
    assert "## Calibration and selective prediction" in md and "## Temperature variants against the grid" in md
    assert "Students, variant `teacher_only_T`" in md and "reliability_a0.1.png" in md


def test_report_without_exports_says_calibration_is_missing(tmp_path):
    synthetic_study(tmp_path, {})
    for d in (tmp_path / "runs").iterdir():
        if d.name.endswith("_val"):
            (d / "features.npz").unlink()
            (d / "result.json").write_text(json.dumps({"status": "failed"}))
    res = json.loads((write_report(tmp_path) / "results.json").read_text())
    assert res["calibration"]["status"] == "missing" and res["variants"]["status"] == "not-applicable"


def test_arms_with_fewer_seeds_pair_with_the_same_grid_seeds(tmp_path):
    accs = {("student", a, t, s): 80.0 + 3 * s for a in (0.0, 0.1) for t in (1.0, 3.0) for s in range(2)}
    accs.update({("student", a, t, 0, "logit_standardization"): 80.5 for a in (0.0, 0.1) for t in (1.0, 3.0)})
    synthetic_study(tmp_path, accs, overrides={"variant_arms": ["logit_standardization"], "variant_seeds": 1})
    res = json.loads((write_report(tmp_path) / "results.json").read_text())
    assert res["calibration"]["status"] == "ok" and res["variants"]["status"] == "ok"
    cell = res["variants"]["arms"][0]["cells"][0]
    # seed 0 only: 80.5 - 80.0 (the grid's seed 1, at 83, is left out of the pairing)
    assert cell["difference"]["estimate"] == pytest.approx(0.5) and cell["difference"]["n"] == 1
    arm_cells = [c for c in res["calibration"]["students"] if c["arm"] == "logit_standardization"]
    assert len(arm_cells) == 4 and all(len(c["runs"]) == 1 for c in arm_cells)
