"""The report wired to lskd_core.statistics: verdict first, intervals per cell, trends, eta over
every seed, and the teacher-variance note, on the hand-made study of test_report.py."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import eta_from_centroids, synthetic_study, t_ci, well_formed_report

from lskd_core import study as S
from lskd_core.report import write_report

ACCS = {("teacher", 0.0, None, 0): 90.0, ("teacher", 0.1, None, 0): 91.0}
for _s, (_a, _b, _c, _d) in enumerate([(80.0, 82.0, 81.0, 78.0), (80.4, 82.6, 81.2, 77.0)]):
    ACCS.update({("student", 0.0, 1.0, _s): _a, ("student", 0.1, 1.0, _s): _b,
                 ("student", 0.0, 3.0, _s): _c, ("student", 0.1, 3.0, _s): _d})


def test_report_opens_with_the_verdict_and_uses_every_seed(tmp_path):
    synthetic_study(tmp_path, ACCS)
    rep = write_report(tmp_path)
    res = json.loads((rep / "results.json").read_text())
    md = well_formed_report(rep)
    # the verdict sentence comes first, bold, right under its heading
    after = md.split("## Verdict\n", 1)[1].lstrip()
    assert after.startswith("**" + res["verdict"]["sentence"] + "**")
    assert res["verdict"]["sentence"].startswith(("No clear winner", "Recommendation"))
    assert "Teacher variance is not sampled" in md and res["verdict"]["confidence"] != "clear"
    if res["verdict"]["recommended"] is None:  # the rule of thumb is never the default answer
        assert "rule of thumb" not in res["verdict"]["text"]
    # per-cell interval: 82.0, 82.6 -> t interval with 1 df, by hand
    lo, hi = t_ci([82.0, 82.6])
    assert f"82.30 [{lo:.2f}, {hi:.2f}] (n = 2)" in md
    # trend over every T of the LS teacher's students (2 seeds x T in {1, 3}) = polyfit slope
    x = np.log([1, 1, 3, 3])
    b = np.polyfit(x, [82.0, 82.6, 78.0, 77.0], 1)[0]
    tr = next(t for t in res["verdict"]["analysis"]["trends"] if t["alpha"] == 0.1)
    assert tr["slope_per_ln_T"]["estimate"] == pytest.approx(b)
    assert "LS − plain" in md and "Cells that cannot be told apart from the best" in md
    assert res["verdict"]["trends"]["ls_teacher_degrades_with_T"]["holds"] is True
    # eta over both seeds, against Eq. 1 written out in test_report.py
    from lskd_core.features_io import load_features

    eta = res["eta"]
    assert eta["seeds_with_features"] == [0, 1]
    per_seed = []
    for s in (0, 1):
        def cents(t, s=s):
            f = load_features(tmp_path / "runs" / S.export_id(S.student_id(0.1, t, s), "train") / "features.npz")
            return np.stack([f.features[f.labels == c].mean(0) for c in range(10)]).astype(np.float64)

        c1, c3 = cents(1), cents(3)
        vals = [eta_from_centroids(c1, c3, t, *eta["sets"]["hierarchy"][str(t)])[0] for t in eta["targets"]]
        per_seed.append(np.mean(vals))
    over = next(o for o in eta["over_seeds"] if (o["sets"], o["split"], o["variant"]) == ("hierarchy", "train", "eq1"))
    g = next(g for g in over["groups"] if g["alpha"] == 0.1)
    assert g["summary"]["eta_s1"]["estimate"] == pytest.approx(np.mean(per_seed), rel=1e-4)
    assert g["summary"]["eta_s1"]["ci"] == pytest.approx(list(t_ci(per_seed)), rel=1e-4)
    assert g["summary"]["runs"] == 2
    assert "Over every student seed" in md and "runs showing diffusion" in md
    flag = res["verdict"]["flags"]["ls_diffusion_high_T"]
    assert flag["evidence"]["n"] == 2


def test_report_takes_the_teacher_as_the_unit_when_students_have_several(tmp_path):
    synthetic_study(tmp_path, ACCS)
    manifest = json.loads((tmp_path / "study.json").read_text())
    for r in manifest["runs"]:
        if r["kind"] == "student":
            r["info"]["teacher_seed"] = r["info"]["seed"]  # two teachers per alpha, one student each
    (tmp_path / "study.json").write_text(json.dumps(manifest))
    res = json.loads((write_report(tmp_path) / "results.json").read_text())
    an = res["verdict"]["analysis"]
    assert an["teacher_variance"]["sampled"] is True
    cell = next(c for c in an["cells"] if (c["alpha"], c["temperature"]) == (0.1, 1.0))
    assert cell["interval"]["unit"] == "teacher" and cell["interval"]["n"] == 2
    assert res["verdict"]["teacher_variance_note"] is None
