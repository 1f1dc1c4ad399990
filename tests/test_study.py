"""The alpha x T study runner (lskd_core.study) and its report (lskd_core.report).

Fast tests check the config, the plan, the hashing and the run-state rules on hand-made run
directories. The slow test runs a tiny real study (Fashion-MNIST, a few hundred samples, one
epoch, real trainer and exporter processes) end to end, then re-runs it unchanged, with a corrupt
run directory and with a changed temperature list, counting the processes each invocation starts.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lskd_core import study as S
from lskd_core.report import compare_cells, write_report

ROOT = Path(__file__).resolve().parent.parent
FASHION = Path(os.environ.get("LSKD_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


# ------------------------------------------------------------------------------------------------
# config
# ------------------------------------------------------------------------------------------------
def test_presets_load_and_demo_is_default():
    assert {"demo", "full", "translation"} <= set(S.available_presets())
    cfg = S.load_config()
    assert cfg.name == "demo" and cfg.task == "vision"
    assert cfg.alphas == [0.0, 0.1] and cfg.temperatures == [1.0, 2.0, 3.0, 64.0]
    full = S.load_config("full")
    assert full.train_samples is None and full.val_samples is None  # full data
    tr = S.load_config("translation")
    assert tr.task == "translation"


def test_precedence_preset_file_flags(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text('preset = "demo"\nseeds = 3\ntemperatures = [1, 4]\n'
                        '[teacher]\nepochs = 7\nmodel = "lskd_cnn_t"\n', encoding="utf-8")
    cfg = S.load_config(config_file=str(cfg_file), overrides={"seeds": 2})
    assert cfg.teacher_epochs == 7  # [teacher] epochs -> teacher_epochs
    assert cfg.temperatures == [1.0, 4.0]
    assert cfg.seed_list == [0, 1]  # the flag beats the file
    # tables that are not a field prefix only group settings
    grouped = tmp_path / "g.toml"
    grouped.write_text('[grid]\nalphas = [0, 0.2]\n[analysis]\ntarget_classes = [1, 3]\ntrain_samples = 50\n',
                       encoding="utf-8")
    cfg = S.load_config(config_file=str(grouped))
    assert cfg.alphas == [0.0, 0.2] and cfg.target_classes == [1, 3] and cfg.analysis_train_samples == 50
    # the shipped example config loads
    ex = S.load_config(config_file=str(ROOT / "examples" / "study" / "my_study.toml"))
    assert ex.name == "my-study" and ex.seed_list == [0, 1, 2] and ex.jobs == 2
    j = tmp_path / "c.json"
    j.write_text(json.dumps({"alphas": [0.2, 0], "seeds": [5, 7]}), encoding="utf-8")
    cfg = S.load_config(config_file=str(j))
    assert cfg.alphas == [0.0, 0.2] and cfg.seed_list == [5, 7] and cfg.first_seed == 5


@pytest.mark.parametrize("override, word", [
    ({"alphas": [1.0]}, "alphas"),
    ({"temperatures": [0]}, "temperatures"),
    ({"temperatures": [1, 1]}, "temperatures"),
    ({"seeds": 0}, "seeds"),
    ({"kd_beta": 2}, "kd_beta"),
    ({"projection_classes": [1, 2]}, "projection_classes"),
    ({"student_epochs": 0}, "student_epochs"),
    ({"task": "audio"}, "task"),
    ({"no_such_setting": 1}, "no_such_setting"),
])
def test_bad_settings_name_the_setting(override, word):
    with pytest.raises(ValueError, match=word):
        S.load_config(overrides=override)


def test_bad_config_file(tmp_path):
    bad = tmp_path / "c.toml"
    bad.write_text("seeds = = 3", encoding="utf-8")
    with pytest.raises(ValueError, match="cannot be parsed"):
        S.load_config(config_file=str(bad))
    with pytest.raises(ValueError, match="does not exist"):
        S.load_config(config_file=str(tmp_path / "missing.json"))
    assert S.main(["--config", str(bad)]) == 2


# ------------------------------------------------------------------------------------------------
# plan and hashes
# ------------------------------------------------------------------------------------------------
def _ids(plan):
    return [r.run_id for r in plan]


def test_plan_shape_and_dependency_order():
    cfg = S.load_config(overrides={"seeds": 2})
    plan = S.build_plan(cfg)
    kinds = [r.kind for r in plan]
    assert kinds.count("teacher") == 2
    assert kinds.count("student") == 2 * 4 * 2
    # exports: 2 teachers + 8 analysis-seed students, train and val each
    assert kinds.count("export") == (2 + 8) * 2
    seen = set()
    for r in plan:
        assert all(d in seen for d in r.deps), r.run_id
        seen.add(r.run_id)
    st = next(r for r in plan if r.run_id == "student_a0.1_T3_s1")
    assert st.deps == ["teacher_a0.1"]
    i = st.args.index("--kd-temperature")
    assert st.args[i + 1] == "3"
    assert "{study}/runs/teacher_a0.1/checkpoint.pth" in st.args
    teacher_exports = [r for r in plan if r.kind == "export" and r.info["role"] == "teacher"]
    assert all("--save-logits" in r.args for r in teacher_exports)


def test_hash_ignores_execution_details_but_not_the_experiment():
    base = {r.run_id: r.hash for r in S.build_plan(S.load_config())}
    # where/how a run executes does not change what it computes
    moved = {r.run_id: r.hash for r in S.build_plan(S.load_config(overrides={"device": "cuda", "workers": 8,
                                                                             "jobs": 1}))}
    assert moved == base
    # a student setting changes exactly the students and what reads them
    changed = {r.run_id: r.hash for r in S.build_plan(S.load_config(overrides={"student_epochs": 9}))}
    diff = {k for k in base if base[k] != changed[k]}
    assert diff == {k for k in base if k.startswith("student_") or k.startswith("export_student_")}
    # a teacher setting propagates to its students (their hash covers the teacher's)
    changed = {r.run_id: r.hash for r in S.build_plan(S.load_config(overrides={"teacher_lr": 0.01}))}
    assert all(base[k] != changed[k] for k in base)


def test_print_commands(tmp_path, capsys):
    assert S.main(["--out", str(tmp_path / "s"), "--seeds", "1", "--print-commands"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    plan = S.build_plan(S.load_config(overrides={"seeds": 1}))
    assert len(lines) == len(plan)
    for line, run in zip(lines, plan):
        argv = shlex.split(line)
        assert str(tmp_path / "s" / "runs" / run.run_id) in line
        if run.kind in ("teacher", "student"):
            assert argv[1:3] == ["-m", "vision_plugin.train"]
        else:
            assert argv[1:3] == ["-m", "vision_plugin.export_features"]
        # each run dir now records its config so --report-only can verify collected results
        rc = json.loads((tmp_path / "s" / "runs" / run.run_id / "run_config.json").read_text())
        assert rc["hash"] == run.hash and rc["launched_by"] == "external"


def test_nproc_uses_torchrun_module_mode(tmp_path):
    cfg = S.load_config(overrides={"nproc": 2})
    plan = S.build_plan(cfg)
    argv = S.run_command(plan[0], tmp_path, cfg)
    assert argv[1:8] == ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m",
                         "vision_plugin.train"]
    exp = next(r for r in plan if r.kind == "export")
    assert S.run_command(exp, tmp_path, cfg)[1:3] == ["-m", "vision_plugin.export_features"]
    # world size is part of a training run's identity, not of an export's own arguments (an export
    # still re-runs when the model it reads is retrained: its hash covers the model's)
    base = {r.run_id: r for r in S.build_plan(S.load_config())}
    assert plan[0].hash != base[plan[0].run_id].hash
    assert exp.defining(2) == base[exp.run_id].defining(1) and exp.hash != base[exp.run_id].hash


# ------------------------------------------------------------------------------------------------
# run states on hand-made directories
# ------------------------------------------------------------------------------------------------
def _fake_done(study: Path, run: S.Run, cfg, inputs=None, result=None):
    d = study / "runs" / run.run_id
    d.mkdir(parents=True, exist_ok=True)
    S._write_run_config(run, study, cfg, S.run_command(run, study, cfg), inputs or {}, "study")
    for out in run.outputs:
        (d / out).write_bytes(b"PK\x05\x06" + b"\0" * 18 if out.endswith(".npz") else b"weights")
    (d / "result.json").write_text(json.dumps(result or {"status": "done", "val_acc1": 50.0}))
    return d


def test_run_states(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1})
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    teacher, student = plan["teacher_a0.1"], plan["student_a0.1_T2_s0"]
    assert S.inspect_run(teacher, tmp_path, {}).status == "new"
    d = _fake_done(tmp_path, teacher, cfg)
    assert S.inspect_run(teacher, tmp_path, {}).status == "done"
    fp = {"teacher_a0.1": S._fingerprint(d)}

    sd = _fake_done(tmp_path, student, cfg, inputs=fp)
    assert S.inspect_run(student, tmp_path, fp).status == "done"
    # the teacher was re-run since: the student is stale even though its config is unchanged
    assert S.inspect_run(student, tmp_path, {"teacher_a0.1": "other"}).status == "stale"
    # garbage result.json / run_config.json
    (sd / "result.json").write_text("{not json")
    st = S.inspect_run(student, tmp_path, fp)
    assert st.status == "corrupt" and "result.json" in st.reason
    (sd / "result.json").write_text(json.dumps({"status": "done"}))
    (sd / "run_config.json").write_text("[1, 2")
    assert S.inspect_run(student, tmp_path, fp).status == "corrupt"
    # done but the checkpoint is gone
    _fake_done(tmp_path, student, cfg, inputs=fp)
    (sd / "checkpoint.pth").unlink()
    st = S.inspect_run(student, tmp_path, fp)
    assert st.status == "corrupt" and "checkpoint.pth" in st.reason
    # killed mid-run: checkpoint, no result -> resume with --resume <run>/checkpoint.pth
    _fake_done(tmp_path, student, cfg, inputs=fp)
    (sd / "result.json").unlink()
    assert S.inspect_run(student, tmp_path, fp).status == "resume"
    argv = S.run_command(student, tmp_path, cfg, resume=True)
    assert argv[-2:] == ["--resume", str(sd / "checkpoint.pth")]
    # a different config made this directory
    other = {r.run_id: r for r in S.build_plan(S.load_config(overrides={"seeds": 1, "student_epochs": 9}))}
    assert S.inspect_run(other[student.run_id], tmp_path, fp).status == "stale"


class _FakeHandle:
    """A launched 'process' that already finished, after writing what the real program would."""

    def __init__(self, rc):
        self.returncode = rc
        self.pid = -1

    def poll(self):
        return self.returncode

    def wait(self, timeout=None):
        return self.returncode


class _FakeLauncher(S.SubprocessLauncher):
    """Writes plausible outputs instead of training (tests the scheduler, not the trainer)."""

    def __init__(self, fail=()):
        self.started = []
        self.fail = set(fail)

    def start(self, argv, env, log_path, cwd=None):
        run_dir = Path(log_path).parent
        self.started.append(run_dir.name)
        if run_dir.name in self.fail:
            return _FakeHandle(1)
        if "vision_plugin.train" in argv:
            (run_dir / "checkpoint.pth").write_bytes(b"w")
            (run_dir / "result.json").write_text(json.dumps({"status": "done", "val_acc1": 80.0, "val_acc5": 99.0}))
        else:
            from lskd_core.features_io import save_features

            save_features(run_dir / "features.npz", np.zeros((4, 2), np.float32), np.array([0, 0, 1, 1]))
        return _FakeHandle(0)


def test_scheduler_skips_done_blocks_dependents_of_failures(tmp_path):
    cfg = S.load_config(overrides={"seeds": 1, "temperatures": [1, 2]})
    plan = S.build_plan(cfg)
    fl = _FakeLauncher(fail={"teacher_a0.1"})
    out = S.run_study(cfg, tmp_path, launcher=fl, report=False, progress=False, echo=lambda s: None)
    assert out.failed.keys() == {"teacher_a0.1"}
    blocked = {r.run_id for r in plan if "a0.1" in r.run_id and r.run_id != "teacher_a0.1"}
    assert set(out.blocked) == blocked
    assert set(fl.started) == {r.run_id for r in plan} - blocked
    # second invocation: only the failed teacher and what it blocked are started
    fl2 = _FakeLauncher()
    out2 = S.run_study(cfg, tmp_path, launcher=fl2, report=False, progress=False, echo=lambda s: None)
    assert out2.ok and set(fl2.started) == blocked | {"teacher_a0.1"}
    fl3 = _FakeLauncher()
    out3 = S.run_study(cfg, tmp_path, launcher=fl3, report=False, progress=False, echo=lambda s: None)
    assert out3.ok and fl3.started == [] and len(out3.skipped) == len(plan)


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
def _eta_eq1(c1: np.ndarray, c2: np.ndarray, target: int, s1, s2):
    """Eq. 1 written out independently: squared centroid distances normalised over S1 u S2, mean
    relative change over S, in percent."""
    def d(c, k):
        r = sum(((c[target] - c[j]) ** 2).sum() for j in list(s1) + list(s2))
        return ((c[target] - c[k]) ** 2).sum() / r

    def eta(S):
        return 100.0 * np.mean([(d(c2, k) - d(c1, k)) / d(c1, k) for k in S])

    return eta(s1), eta(s2)


def _synthetic_study(study: Path, accs: dict, shift: float = 0.3):
    """Runs with given student accuracies; the T=3 students' class-0 features moved towards class 6."""
    from lskd_core.classsets import FASHION_MNIST_CLASSES
    from lskd_core.features_io import save_features

    cfg = S.load_config(overrides={"seeds": 2, "temperatures": [1, 3], "target_classes": [0, 5],
                                   "projection_classes": [0, 6, 7]})
    plan = S.build_plan(cfg)
    S._write_manifest(study, cfg, plan)
    rng = np.random.default_rng(0)
    k, dim = 10, 12
    centers = np.eye(k, dim) * 6.0
    for r in plan:
        d = study / "runs" / r.run_id
        d.mkdir(parents=True)
        S._write_run_config(r, study, cfg, S.run_command(r, study, cfg), {}, "study")
        if r.kind in ("teacher", "student"):
            key = (r.kind, r.info["alpha"], r.info.get("temperature"), r.info["seed"])
            acc = accs.get(key, 70.0)
            (d / "checkpoint.pth").write_bytes(b"w")
            (d / "result.json").write_text(json.dumps({
                "status": "done", "val_acc1": acc, "val_acc5": 99.0, "val_per_class_acc": [acc] * k,
                "num_classes": k, "class_names": FASHION_MNIST_CLASSES}))
        else:
            lab = np.repeat(np.arange(k), 30)
            c = centers.copy()
            if r.info.get("temperature") == 3:
                c[0] = (1 - shift) * c[0] + shift * c[6]
            feats = (c[lab] + rng.normal(size=(lab.size, dim)) * 0.5).astype(np.float32)
            w = centers[:, :] / 6.0
            logits = feats @ w.T
            save_features(d / "features.npz", feats, lab, class_names=FASHION_MNIST_CLASSES, weight=w,
                          bias=np.zeros(k), logits=logits.astype(np.float32))
            (d / "result.json").write_text(json.dumps({"status": "done"}))
    return cfg


def test_report_on_known_numbers(tmp_path):
    accs = {("teacher", 0.0, None, 0): 90.0, ("teacher", 0.1, None, 0): 91.0}
    for s, (a0t1, a1t1, a0t3, a1t3) in enumerate([(80.0, 82.0, 81.0, 78.0), (80.4, 82.6, 81.2, 77.0)]):
        accs.update({("student", 0.0, 1.0, s): a0t1, ("student", 0.1, 1.0, s): a1t1,
                     ("student", 0.0, 3.0, s): a0t3, ("student", 0.1, 3.0, s): a1t3})
    cfg = _synthetic_study(tmp_path, accs)
    rep = write_report(tmp_path)
    res = json.loads((rep / "results.json").read_text())
    cells = {(c["alpha"], c["temperature"]): c for c in res["accuracy_grid"]["cells"]}
    assert cells[(0.1, 1.0)]["top1_mean"] == pytest.approx(82.3)
    assert cells[(0.1, 1.0)]["top1_std"] == pytest.approx(np.std([82.0, 82.6], ddof=1))
    assert cells[(0.1, 1.0)]["compatible"] is True and cells[(0.1, 3.0)]["compatible"] is False
    md = (rep / "report.md").read_text()
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
            e1, e2 = _eta_eq1(c1, c3, row["target"], s1, s2)
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
    from lskd_core.report import parse_bleu

    cfg = S.load_config("translation", overrides={"seeds": 1, "temperatures": [1, 2]})
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
    S._write_manifest(tmp_path, cfg, plan)
    bleus = {"teacher_a0": 20.0, "teacher_a0.1": 21.0, "student_a0_T1_s0": 15.0, "student_a0.1_T1_s0": 16.5,
             "student_a0_T2_s0": 14.0, "student_a0.1_T2_s0": 13.0}
    for rid, b in bleus.items():
        d = tmp_path / "runs" / f"bleu_{rid}"
        d.mkdir(parents=True)
        (d / "generate-test.txt").write_text(f"S-0\tx\nGenerate test with beam=5: BLEU4 = {b:.2f}, 50.0/30.0/20.0/10.0 "
                                             "(BP=1.000, ratio=1.000, syslen=10, reflen=10)\n")
        res = {"status": "done", **parse_bleu(d / "generate-test.txt")}
        (d / "result.json").write_text(json.dumps(res))
    rep = write_report(tmp_path)
    res = json.loads((rep / "results.json").read_text())
    grid = res["accuracy_grid"]
    assert grid["status"] == "ok" and grid["metric"] == "bleu"
    cells = {(c["alpha"], c["temperature"]): c for c in grid["cells"]}
    assert cells[(0.1, 1.0)]["top1_mean"] == 16.5 and cells[(0.1, 1.0)]["compatible"] is True
    assert cells[(0.1, 2.0)]["compatible"] is False
    assert [t["bleu"] for t in grid["teachers"]] == [20.0, 21.0]
    assert "## 1. BLEU grid (Table 5)" in (rep / "report.md").read_text()
    assert res["verdict"]["best"] == {"alpha": 0.1, "temperature": 1.0, "top1_mean": 16.5, "top1_std": None}


# ------------------------------------------------------------------------------------------------
# end to end on real data
# ------------------------------------------------------------------------------------------------
TINY = {
    "name": "tiny",
    "train_samples": 300,
    "val_samples": 200,
    "teacher_epochs": 1,
    "student_epochs": 1,
    "teacher_batch_size": 32,
    "student_batch_size": 32,
    "alphas": [0, 0.1],
    "temperatures": [1, 3],
    "seeds": 1,
    "target_classes": [0, 2, 4, 6, 5, 7],
    "projection_classes": [0, 6, 7],
    "profile_class": 6,
    "projection_per_class": 15,
    "jobs": 2,
}


def _launch_count(study: Path) -> int:
    p = study / S.LAUNCH_LOG
    return sum(1 for _ in p.open()) if p.exists() else 0


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _check_report(study: Path, cfg: S.StudyConfig) -> dict:
    rep = study / "report"
    res = json.loads((rep / "results.json").read_text())
    md = (rep / "report.md").read_text()
    for header in ("## Verdict", "## 1. Accuracy grid", "## 2. Diffusion index", "Table G.1",
                   "## 3. Teacher smoothness", "## 4. Penultimate-layer projections", "## 5. Soft outputs",
                   "## 6. Class-wise accuracy"):
        assert header in md, header
    # grid: every cell filled, equal to the run directories' own result.json
    grid = res["accuracy_grid"]
    assert grid["status"] == "ok"
    for c in grid["cells"]:
        assert c["n"] == len(cfg.seed_list)
        for s, top1 in zip(c["seeds"], c["top1"]):
            run = json.loads((study / "runs" / S.student_id(c["alpha"], c["temperature"], s) / "result.json").read_text())
            assert top1 == pytest.approx(run["val_acc1"])
        assert _finite(c["top1_mean"]) and _finite(c["top5_mean"])
        if c["alpha"] > 0:
            base = next(b for b in grid["cells"] if b["alpha"] == 0 and b["temperature"] == c["temperature"])
            assert c["compatible"] == (c["top1_mean"] >= base["top1_mean"])
    for t in grid["teachers"]:
        run = json.loads((study / "runs" / S.teacher_id(t["alpha"]) / "result.json").read_text())
        assert t["top1"] == pytest.approx(run["val_acc1"])
    # eta: both splits, both alphas, both set methods, every T2 > T1, finite numbers
    eta = res["eta"]
    assert eta["status"] == "ok", eta
    combos = {(t["alpha"], t["split"], t["t2"], t["sets"]) for t in eta["tables"]}
    want = {(a, sp, t2, m) for a in cfg.alphas for sp in ("train", "val") for t2 in cfg.temperatures[1:]
            for m in ("hierarchy", "feature")}
    assert combos == want
    for t in eta["tables"]:
        assert [r["target"] for r in t["rows"]] == cfg.target_classes
        for r in t["rows"]:
            assert all(_finite(r[k]) for k in ("eta_s1", "eta_s2", "eta_s1_pairwise", "eta_s2_pairwise"))
    assert len(eta["sets"]["agreement"]) == len(cfg.target_classes)
    assert all(0 <= a["s1"] <= 1 and 0 <= a["s2"] <= 1 for a in eta["sets"]["agreement"])
    # entropy (Table H.1): finite, within [0, ln K], increasing with T for each teacher
    ent = res["entropy"]
    assert ent["status"] == "ok", ent
    for a, row in ent["table"].items():
        vals = [row[S._num(t)] for t in sorted(ent["temperatures"])]
        assert all(_finite(v) and -1e-6 <= v <= ent["max_entropy"] + 1e-6 for v in vals)
        assert all(x <= y + 1e-9 for x, y in zip(vals, vals[1:]))
    assert ent["pairs"]
    # figures exist and are PNGs
    for key in ("projection", "soft_output"):
        assert res[key]["status"] == "ok", res[key]
        png = rep / res[key]["png"]
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (rep / "accuracy_vs_T.png").is_file()
    # class-wise accuracy: val equals the run's val_per_class_acc (1 seed), train in [0, 100]
    cw = res["classwise"]
    assert cw["status"] == "ok"
    for r in cw["rows"]:
        run = json.loads((study / "runs" / S.student_id(r["alpha"], r["temperature"], cfg.first_seed)
                          / "result.json").read_text())
        for c in cw["targets"]:
            assert r["val"][str(c)] == pytest.approx(run["val_per_class_acc"][c])
            assert 0 <= r["train"][str(c)] <= 100
    v = res["verdict"]
    assert v["status"] == "ok" and v["text"]
    assert (v["best"]["alpha"], v["best"]["temperature"]) in {(c["alpha"], c["temperature"]) for c in grid["cells"]}
    return res


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    if not (FASHION / "train-images-idx3-ubyte.gz").exists() and not (FASHION / "train-images-idx3-ubyte").exists():
        pytest.skip(f"Fashion-MNIST not installed at {FASHION} (apt-get install dataset-fashion-mnist)")
    root = tmp_path_factory.mktemp("study")
    cfg_path = root / "tiny.json"
    cfg_path.write_text(json.dumps(TINY), encoding="utf-8")
    cfg = S.load_config(config_file=str(cfg_path))
    study = root / "out"
    out = S.run_study(cfg, study, progress=False)
    return cfg_path, cfg, study, out


@pytest.mark.slow
def test_tiny_study_end_to_end(tiny_study):
    cfg_path, cfg, study, out = tiny_study
    plan = S.build_plan(cfg)
    assert out.ok, (out.failed, out.blocked)
    assert sorted(out.launched) == sorted(_ids(plan))
    assert _launch_count(study) == len(plan)
    _check_report(study, cfg)

    # 1. unchanged re-run: no new process, the report is rewritten from the same runs
    again = S.run_study(cfg, study, progress=False)
    assert again.ok and again.launched == [] and _launch_count(study) == len(plan)
    assert sorted(again.skipped) == sorted(_ids(plan))

    # 2. --report-only through the CLI launches nothing either
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cp = subprocess.run([sys.executable, "-m", "lskd_core.study", "--config", str(cfg_path), "--out", str(study),
                         "--report-only"], capture_output=True, text=True, env=env, timeout=300)
    assert cp.returncode == 0, cp.stderr
    assert "report:" in cp.stdout and _launch_count(study) == len(plan)

    # 3. a corrupt run directory is reported, moved aside (not deleted) and re-run with its dependents
    victim = "student_a0.1_T3_s0"
    (study / "runs" / victim / "result.json").write_text("garbage{")
    fixed = S.run_study(cfg, study, progress=False, echo=lambda s: None)
    assert fixed.ok
    assert sorted(fixed.launched) == sorted([victim, f"export_{victim}_train", f"export_{victim}_val"])
    events = {p["run_id"]: p["event"] for p in fixed.problems}
    assert events == {victim: "corrupt", f"export_{victim}_train": "stale", f"export_{victim}_val": "stale"}
    aside = [p for p in (study / "runs").iterdir() if p.name.startswith(victim + ".corrupt-")]
    assert len(aside) == 1 and (aside[0] / "result.json").read_text() == "garbage{"
    res = _check_report(study, cfg)
    assert {p["run_id"] for p in res["problems"]} == set(events)

    # 4. a changed temperature list re-runs exactly the affected runs
    cfg2 = S.load_config(config_file=str(cfg_path), overrides={"temperatures": [1, 2]})
    before = _launch_count(study)
    changed = S.run_study(cfg2, study, progress=False)
    assert changed.ok
    new = {S.student_id(a, 2, 0) for a in cfg2.alphas}
    new |= {S.export_id(s, sp) for s in list(new) for sp in ("train", "val")}
    assert set(changed.launched) == new
    assert _launch_count(study) == before + len(new)
    _check_report(study, cfg2)
