"""Run hashes: provenance (issue 11, item 7) and sensitivity to every setting (issue 11, "the
study's tests must catch planted bugs").

The sensitivity test walks :class:`StudyConfig`'s fields (a new field without a declared
expectation fails it): changing one setting must change exactly the hashes of the runs it
directly defines plus everything downstream of them (a run's hash covers its dependencies'), and
nothing else. The direct effects are declared here from what each setting means, not read from
the plan code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Set

import pytest

from lskd_core import __version__
from lskd_core import study as S
from lskd_core.study import provenance as P

Pred = Callable[[S.Run], bool]

GROUPS: Dict[str, Pred] = {
    "teacher": lambda r: r.kind == "teacher",
    "cache": lambda r: r.kind == "cache",
    "student": lambda r: r.run_id.startswith("student_"),
    "matched": lambda r: r.run_id.startswith("matched_"),
    "match": lambda r: r.kind == "match",
    "export_t": lambda r: r.kind == "export" and r.info.get("role") == "teacher",
    "export_s": lambda r: r.kind == "export" and r.info.get("role") != "teacher",
    "prepare": lambda r: r.kind == "prepare",
    "gen_t": lambda r: r.kind == "generate" and r.info.get("role") == "teacher",
    "gen_s": lambda r: r.kind == "generate" and r.info.get("role") != "teacher",
    "student_above_tmin": lambda r: r.run_id.startswith("student_") and float(r.info.get("temperature", 0)) > 1,
    "all": lambda r: True,
}
NONE: Set[str] = set()
EXPORTS = {"export_t", "export_s"}
STUDENTS = {"student", "matched"}

# field -> (new value, groups of runs the setting defines directly). Vision base: _vision_base().
VISION = {
    "name": ("other", NONE),
    "task": ("translation", {"all"}),
    "out": ("/elsewhere", NONE),
    "dataset": ("cub", {"all"}),
    "data_path": ("/data/fmnist", {"teacher", "cache", "student", "matched"} | EXPORTS),
    "train_samples": (5000, {"teacher", "cache", "student", "matched"} | EXPORTS),
    "val_samples": (1000, {"teacher", "student", "matched"} | EXPORTS),
    "teacher_model": ("lskd_cnn_m", {"teacher", "cache", "export_t"}),
    "student_model": ("lskd_cnn_m", STUDENTS | {"export_s"}),
    "teacher_epochs": (5, {"teacher"}),
    "student_epochs": (3, STUDENTS | {"cache"}),  # the cache records the views of every student epoch
    "teacher_batch_size": (32, {"teacher"}),
    "student_batch_size": (32, STUDENTS | {"cache"}),  # the cache records the students' batches
    "teacher_lr": (0.01, {"teacher"}),
    "student_lr": (0.01, STUDENTS),
    "teacher_args": (["--wd", "1e-4"], {"teacher"}),
    "student_args": (["--wd", "1e-3"], STUDENTS),
    "export_args": (["--batch-size", "17"], EXPORTS),
    "alphas": ([0.0, 0.1, 0.2], {"match"}),  # new runs; the one match run now also matches alpha 0.2
    "temperatures": ([1.0, 2.0, 3.0], NONE),  # new runs only (full-logit cache: T-independent)
    "seeds": (3, NONE),  # new runs only
    "teacher_seed": (7, {"teacher"}),
    "data_seed": (3, {"all"}),
    "kd_beta": (0.5, STUDENTS),
    "teacher_seeds": (2, {"teacher"}),  # teachers get seeded ids; every student is re-paired
    "cache": (False, STUDENTS),  # students run their teacher live; the cache runs are gone
    "cache_dtype": ("bfloat16", {"cache"}),
    "cache_topk": (3, {"cache"} | STUDENTS),
    "cache_topk_mode": ("sample", NONE),  # translation only (the vision task refuses it in validation)
    "cache_aug_seed": (5, {"cache"}),
    "matched_temperatures": ([1.0, 2.0], {"match"}),
    "kd_variant": ("teacher_only_T", STUDENTS),  # every grid and matched student gets --kd-variant
    "logit_standardization": (True, STUDENTS),
    "variant_arms": (["teacher_only_T"], NONE),  # new runs only (the arm's students and their val exports)
    "variant_seeds": (1, NONE),  # which arm runs exist (none without variant_arms)
    "analysis": (False, NONE),  # exports removed; training untouched
    "analysis_seed": (1, NONE),
    "analysis_train_samples": (3000, EXPORTS),
    "analysis_val_samples": (1500, EXPORTS),
    "target_classes": ([1, 2], NONE),
    "projection_classes": ([1, 2, 3], NONE),
    "profile_class": (3, NONE),
    "profile_temperatures": ([3.0], NONE),
    "entropy_temperatures": ([7.0], NONE),
    "hierarchy": ("wordnet", NONE),
    "num_similar": (3, NONE),
    "num_dissimilar": (5, NONE),
    "feature_sets": ([10.0, 50.0], NONE),
    "projection_per_class": (20, NONE),
    "eta_during_training": (True, {"student_above_tmin"}),  # T > T_min (1 here) students: --eta-reference
    "eval_each_epoch": (True, STUDENTS),  # students lose --eval-every 0
    "feature_kd": ("overhaul", STUDENTS),  # students gain --feature-kd and run the teacher live (no cache runs)
    "feature_kd_weight": (1e-3, NONE),  # read only with feature_kd (refused without it by load_config)
    "pair": ("de-en", NONE),
    "data_dir": ("/data/bin", NONE),
    "arch": ("transformer_wmt_en_de", NONE),
    "teacher_arch": ("transformer", NONE),
    "student_arch": ("transformer", NONE),
    "max_tokens": (1024, NONE),
    "beam": (2, NONE),
    "generate_args": (["--lenpen", "0.6"], NONE),
    "prepare_args": (["--max-pairs", "10"], NONE),
    "device": ("cuda", NONE),
    "nproc": (2, {"teacher", "student", "matched"}),  # world size changes the global batch of training runs
    "workers": (4, NONE),
    "jobs": (4, NONE),
    "python": (sys.executable, NONE),  # the same interpreter: same framework versions
    "launcher": ("slurm", NONE),
    "provenance": ("version", {"all"}),  # the code digest leaves every hash
    "translation_export_split": ("valid", NONE),  # translation only
    "translation_export_sentences": (100, NONE),
    "translation_eta_classes": (20, NONE),
    "translation_eta_min_count": (5, NONE),
}

# Translation base: the translation preset (prepared data, top-K cache at the grid's T).
TRANSLATION = {
    **{k: (v, NONE) for k, v in {
        "dataset": "cub", "data_path": "/x", "train_samples": 5000, "val_samples": 1000,
        "teacher_model": "lskd_cnn_m", "student_model": "lskd_cnn_m", "teacher_batch_size": 32,
        "student_batch_size": 32, "export_args": ["--x"], "analysis": False, "analysis_seed": 1,
        "analysis_train_samples": 3000, "analysis_val_samples": 1500, "matched_temperatures": [1.0, 2.0],
        "cache_aug_seed": 5, "nproc": 2, "data_seed": 3,
        # vision only (load_config refuses them for translation): the translation plan ignores them
        "kd_variant": "teacher_only_T", "logit_standardization": True, "variant_arms": ["teacher_only_T"],
        "variant_seeds": 1,
    }.items()},
    **{k: VISION[k] for k in ("name", "out", "target_classes", "projection_classes", "profile_class",
                              "profile_temperatures", "hierarchy", "num_similar",
                              "num_dissimilar", "feature_sets", "projection_per_class", "device", "workers",
                              "jobs", "python", "launcher", "seeds", "provenance")},
    "task": ("vision", {"all"}),
    "student_epochs": (3, {"student"}),
    "teacher_epochs": (5, {"teacher"}),
    "teacher_lr": (0.01, {"teacher"}),
    "student_lr": (0.01, {"student"}),
    "teacher_args": (["--dropout", "0.3"], {"teacher"}),
    "student_args": (["--dropout", "0.3"], {"student"}),
    "alphas": ([0.0, 0.1, 0.2], NONE),
    # the top-K cache stores the tail mass at each grid T; the teachers' exports sum the entropy at each
    "temperatures": ([1.0, 2.0, 3.0], {"cache", "export_t"}),
    "entropy_temperatures": ([7.0], {"export_t"}),
    "translation_export_split": ("valid", EXPORTS),
    "translation_export_sentences": (100, EXPORTS),
    "translation_eta_classes": (20, EXPORTS),
    "translation_eta_min_count": (5, EXPORTS),
    "teacher_seed": (7, {"teacher"}),
    "kd_beta": (0.5, {"student"}),
    "teacher_seeds": (2, {"teacher"}),  # the prepared data stays
    "cache": (False, {"student"}),
    "cache_dtype": ("bfloat16", {"cache"}),
    "cache_topk": (3, {"cache", "student"}),
    "cache_topk_mode": ("sample", {"cache", "student"}),  # build --sample K, --kd-topk-mode sample
    "pair": ("de-en", {"all"}),
    "data_dir": ("/data/bin", {"all"}),  # no prepare run; every run reads the given data
    "arch": ("transformer_wmt_en_de", {"teacher", "student"}),
    "teacher_arch": ("transformer_wmt_en_de", {"teacher"}),
    "student_arch": ("transformer_wmt_en_de", {"student"}),
    "max_tokens": (1024, {"teacher", "cache", "student"} | EXPORTS),
    "beam": (2, {"gen_t", "gen_s"}),
    "generate_args": (["--lenpen", "0.6"], {"gen_t", "gen_s"}),
    "prepare_args": (["--max-pairs", "10"], {"prepare"}),
    "eta_during_training": (True, NONE),  # vision only (refused for translation by load_config)
    "eval_each_epoch": (True, NONE),  # vision only: fairseq validates on its own schedule
    "feature_kd": ("overhaul", NONE),  # vision only (refused for translation by load_config)
    "feature_kd_weight": (1e-3, NONE),
}


def _vision_base() -> S.StudyConfig:
    return S.load_config(overrides={"seeds": 2, "temperatures": [1, 2], "alphas": [0, 0.1],
                                    "matched_temperatures": [1]})


def _translation_base() -> S.StudyConfig:
    return S.load_config(preset="translation", overrides={"seeds": 2, "temperatures": [1, 2]})


def _downstream(plan, direct: Set[str]) -> Set[str]:
    """The runs a hash change reaches: those directly defined, then every run depending on one."""
    out = {r.run_id for r in plan if direct and any(GROUPS[g](r) for g in direct)}
    for r in plan:  # dependency order: one pass suffices
        if any(d in out for d in r.deps):
            out.add(r.run_id)
    return out


def _check_field(base: S.StudyConfig, field: str, value, direct: Set[str]) -> None:
    before = {r.run_id: r for r in S.build_plan(base)}
    after = {r.run_id: r for r in S.build_plan(dataclasses.replace(base, **{field: value}))}
    common = sorted(set(before) & set(after))
    assert common, f"{field}: no run left to compare"
    if "all" in direct:
        expected = set(common)
    else:
        expected = _downstream(list(after.values()), direct) & set(common)
    changed = {rid for rid in common if before[rid].hash != after[rid].hash}
    assert changed == expected, (f"{field} = {value!r}: unexpectedly changed {sorted(changed - expected)[:6]}, "
                                 f"unexpectedly unchanged {sorted(expected - changed)[:6]}")


def _fields() -> Set[str]:
    return {f.name for f in dataclasses.fields(S.StudyConfig)}


def test_every_setting_has_a_declared_effect_on_run_hashes():
    for table, name in ((VISION, "VISION"), (TRANSLATION, "TRANSLATION")):
        missing = _fields() - set(table)
        assert not missing, f"declare in {name} which runs these new StudyConfig fields define: {sorted(missing)}"
        assert not set(table) - _fields(), f"{name} declares fields StudyConfig no longer has"


@pytest.mark.parametrize("task,field", [("vision", f) for f in sorted(VISION)]
                         + [("translation", f) for f in sorted(TRANSLATION)])
def test_setting_changes_exactly_the_runs_it_defines(task, field):
    if field not in _fields():
        pytest.skip(f"{field} is no longer a setting")
    table, base = (VISION, _vision_base) if task == "vision" else (TRANSLATION, _translation_base)
    value, direct = table[field]
    _check_field(base(), field, value, direct)


def test_kd_beta_changes_students_and_their_exports_and_no_teacher():
    """The planted bug "the hash leaves out kd_beta", spelled out."""
    base = _vision_base()
    before = {r.run_id: r.hash for r in S.build_plan(base)}
    after = {r.run_id: r.hash for r in S.build_plan(dataclasses.replace(base, kd_beta=0.5))}
    changed = {k for k in before if before[k] != after[k]}
    assert {"student_a0_T1_s0", "student_a0.1_T2_s1", "export_student_a0.1_T2_s1_val"} <= changed
    assert not {k for k in changed if k.startswith(("teacher_", "cache_", "export_teacher_"))}


# ------------------------------------------------------------------------------------------------
# provenance
# ------------------------------------------------------------------------------------------------
def test_source_digest_covers_every_py_file_and_nothing_else(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "a.py").write_bytes(b"x = 1\n")
    by_hand = hashlib.sha256(b"a.py\0" + b"x = 1\n" + b"\0").hexdigest()  # the documented format
    assert P._dir_digest(str(pkg)) == by_hand
    digests = {P._dir_digest(str(pkg))}
    P._dir_digest.cache_clear()
    (pkg / "notes.txt").write_text("not code")
    (pkg / "__pycache__").mkdir()
    (pkg / "__pycache__" / "a.cpython-311.py").write_text("stale")
    assert P._dir_digest(str(pkg)) in digests  # neither a non-.py file nor a cache enters
    for change in (lambda: (pkg / "a.py").write_bytes(b"x = 2\n"),
                   lambda: (pkg / "sub" / "b.py").write_bytes(b""),
                   lambda: (pkg / "sub" / "b.py").rename(pkg / "sub" / "c.py")):
        change()
        P._dir_digest.cache_clear()
        d = P._dir_digest(str(pkg))
        assert d not in digests
        digests.add(d)
    P._dir_digest.cache_clear()


def test_analysis_only_code_does_not_enter_the_digest(tmp_path):
    """Editing the report or the advisor (code no run executes) keeps trained runs valid; editing
    any other lskd_core code (the study's match run, the losses) does not."""
    pkg = tmp_path / "core"
    for sub in ("report", "advise", "study"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "m.py").write_text("x = 1\n")
    (pkg / "losses.py").write_text("y = 1\n")
    skip = P._ANALYSIS_ONLY
    assert set(skip) == {"report", "advise"}
    base = P._dir_digest(str(pkg), skip)
    for sub in ("report", "advise"):
        (pkg / sub / "m.py").write_text("x = 2\n")
        P._dir_digest.cache_clear()
        assert P._dir_digest(str(pkg), skip) == base
    for f in (pkg / "study" / "m.py", pkg / "losses.py"):
        f.write_text("z = 3\n")
        P._dir_digest.cache_clear()
        assert P._dir_digest(str(pkg), skip) != base
    P._dir_digest.cache_clear()


def _public(version: str) -> str:
    """A wheel's metadata version without the local build tag that ``__version__`` may add (+cu130)."""
    return version.split("+")[0]


def test_framework_versions_come_from_the_installed_distributions():
    import torch
    import torchvision

    got = P.framework_versions(None, ("torch", "torchvision", "fairseq", "no-such-dist-lskd"))
    assert got["torch"] == _public(torch.__version__) and got["torchvision"] == _public(torchvision.__version__)
    assert got["no-such-dist-lskd"] is None
    if importlib.util.find_spec("fairseq") is None:
        assert got["fairseq"] is None


def test_code_and_framework_changes_change_every_hash_unless_versions_only(monkeypatch):
    base = _vision_base()

    def hashes(cfg):
        return {r.run_id: r.hash for r in S.build_plan(cfg)}

    ref = hashes(base)
    monkeypatch.setattr(P, "source_digest", lambda plugin: "edited source")
    code_changed = hashes(base)
    assert all(code_changed[k] != ref[k] for k in ref)  # an edit of the code re-runs everything
    version_only = dataclasses.replace(base, provenance="version")
    ref_v = hashes(version_only)
    monkeypatch.undo()
    assert hashes(version_only) == ref_v  # the escape hatch: source edits keep the runs
    monkeypatch.setattr(P, "framework_versions", lambda python, names: {n: "99.0" for n in names})
    for cfg, old in ((base, ref), (version_only, ref_v)):
        new = hashes(cfg)
        assert all(new[k] != old[k] for k in old)  # another torch/torchvision: every run re-runs


def test_translation_runs_record_fairseq_and_its_plugin():
    cfg = _translation_base()
    runs = {r.kind: r for r in S.build_plan(cfg)}
    for kind in ("prepare", "teacher", "cache", "student", "generate"):
        assert P.run_plugin(runs[kind]) == "fairseq_plugin"
        prov = P.run_provenance(runs[kind], cfg)
        assert set(prov["frameworks"]) == {"torch", "fairseq"} and prov["lskd_version"] == __version__


class _Fake(S.LocalLauncher):
    def start(self, run, argv, env, log_path, cwd=None, after=()):
        rdir = Path(log_path).parent
        (rdir / "checkpoint.pth").write_bytes(b"weights")
        (rdir / "result.json").write_text(json.dumps({"status": "done", "val_acc1": 80.0, "val_acc5": 99.0,
                                                      "stamp": time.time_ns()}))
        return {"launcher": "fake", "rc": 0}

    def poll(self, handle):
        return handle["rc"]

    def stop(self, handle):
        pass


def test_run_config_and_report_list_the_versions_each_result_came_from(tmp_path):
    import torch
    import torchvision

    over = {"seeds": 1, "temperatures": [1], "alphas": [0, 0.1], "analysis": False}
    if "cache" in _fields():
        over["cache"] = False
    cfg = S.load_config(overrides=over)
    out = S.run_study(cfg, tmp_path, launcher=_Fake(), report=True, progress=False, echo=lambda s: None)
    assert out.ok
    rc = json.loads((tmp_path / "runs/teacher_a0/run_config.json").read_text())
    tv, tvv = _public(torch.__version__), _public(torchvision.__version__)
    digest = P.source_digest("vision_plugin")
    assert rc["provenance"] == {"lskd_version": __version__, "code": digest,
                                "frameworks": {"torch": tv, "torchvision": tvv}}
    report = (out.report_dir / "report.md").read_text()
    row = f"| teacher | 2 | {__version__} | {digest[:12]} | torch {tv}, torchvision {tvv} |"
    assert row in report
    assert f"| student | 2 | {__version__} | {digest[:12]} |" in report
