"""The demo is deterministic on one machine (issue 23, item 3): the demo preset's settings, shrunk to a
few hundred images, run twice into two study directories give the same students and the same report
tables -- the verdict, the accuracy grid with its intervals over teachers, the entropy-matched section
(App. H), the temperature-variant comparison (issue 21) and the analyses. Only what measures time
(wall clock, the report's timestamp, cache build seconds) may differ.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import lskd_core.study as S

# the demo preset (its trainer flags: single-threaded, channels-last, cosine schedule) at toy size, with
# what issue 23 added to it (several teachers per alpha, entropy-matched students at the highest T) and
# issue 21 (the two temperature-variant arms)
TINY = {"name": "demo-determinism", "train_samples": 200, "val_samples": 100, "teacher_epochs": 1,
        "student_epochs": 1, "teacher_batch_size": 50, "student_batch_size": 50, "temperatures": [1, 4],
        "seeds": 2, "teacher_seeds": 2, "matched_temperatures": [4], "analysis_train_samples": 60,
        "analysis_val_samples": 60, "projection_per_class": 5, "entropy_temperatures": [], "jobs": 2,
        "variant_arms": ["teacher_only_T", "logit_standardization"], "variant_seeds": 2}

TIMING_SECTIONS = ("## Teacher caches", "## Runs")  # build/students seconds, per-run wall times


def _tables(report: Path) -> str:
    """report.md from the verdict up to the first section that reports time."""
    text = report.read_text()
    start = text.index("## Verdict")
    ends = [text.index(h) for h in TIMING_SECTIONS if h in text]
    return text[start:min(ends) if ends else len(text)]


def _student_results(study: Path) -> dict:
    out = {}
    for d in sorted((study / "runs").iterdir()):
        if d.name.startswith(("student_", "matched_", "teacher_")) and (d / "result.json").is_file():
            res = json.loads((d / "result.json").read_text())
            out[d.name] = (res["val_acc1"], res["val_loss"])
    return out


@pytest.mark.slow
def test_two_runs_of_the_demo_settings_give_identical_tables(tmp_path):
    from lskd_core.study.tasks.vision import default_fashion_mnist_dir

    fashion = Path(default_fashion_mnist_dir())
    if not any((fashion / n).exists() for n in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")):
        pytest.skip(f"Fashion-MNIST not installed at {fashion} (apt-get install dataset-fashion-mnist)")
    studies = []
    for name in ("a", "b"):
        cfg = S.load_config(preset="demo", overrides=dict(TINY))
        got = S.run_study(cfg, tmp_path / name, progress=False, echo=lambda s: None)
        assert got.ok, got.failed
        studies.append(tmp_path / name)
    a, b = (_student_results(s) for s in studies)
    # 2 alphas x 2 teachers, 2 alphas x 2 T x 2 seeds, 2 matched students, 2 arms x 8: all finished, all equal
    assert len(a) == 4 + 8 + 2 + 16 and a.keys() == b.keys()
    assert a == b  # bit-identical floats, not approximately equal
    ta, tb = (_tables(s / "report" / "report.md") for s in studies)
    assert "## Entropy-matched students" in ta and "2 teachers" in ta
    assert "## Temperature variants against the grid" in ta
    assert ta == tb
    ra, rb = (json.loads((s / "report" / "results.json").read_text()) for s in studies)
    assert ra["verdict"]["lines"] == rb["verdict"]["lines"]
    assert ra["matched"]["rows"] == rb["matched"]["rows"]
    assert ra["variants"]["status"] == "ok" and ra["variants"]["arms"] == rb["variants"]["arms"]


def test_make_demo_preset_is_the_demo_preset_plus_teachers_and_matched_students():
    """`make demo` runs preset demo-teachers: the demo preset (the base of every config) with only the
    settings issues 23 (teachers, matched students) and 21 (variant arms) sized changed, so the two
    cannot drift apart."""
    from lskd_core.study.config import read_preset
    from lskd_core.study.plan import paired_teacher_seed, teacher_seed_list

    base, demo = read_preset("demo"), read_preset("demo-teachers")
    changed = {k for k in base.keys() | demo.keys() if base.get(k) != demo.get(k)}
    assert changed == {"seeds", "teacher_seeds", "matched_temperatures", "teacher_args", "variant_arms", "variant_seeds"}
    # the teachers only skip their per-epoch evaluations (training is unchanged; a CPU saving)
    assert demo["teacher_args"] == base["teacher_args"] + ["--eval-every", "0"]
    cfg = S.load_config("demo-teachers")
    assert cfg.teacher_seeds >= 3 and len(cfg.seed_list) % cfg.teacher_seeds == 0  # every teacher has students
    assert cfg.matched_temperatures == [max(cfg.temperatures)]  # App. H at the high T
    # issue 21: both temperature variants on the first seeds, one per teacher (seed i -> teacher i mod
    # N), so each cell's arm - grid difference is paired by seed and taken over every teacher
    assert cfg.variant_arms == ["teacher_only_T", "logit_standardization"]
    assert cfg.variant_seeds == cfg.teacher_seeds
    assert {paired_teacher_seed(cfg, s) for s in cfg.seed_list[:cfg.variant_seeds]} == set(teacher_seed_list(cfg))
    makefile = (Path(__file__).resolve().parent.parent / "Makefile").read_text()
    assert "--preset demo-teachers --out runs/demo" in makefile
