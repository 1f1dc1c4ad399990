"""The study's grid: teacher seeds and pairing, teacher-cache runs, entropy-matched students (App. H),
the one BLEU path. Plan-level tests (no training) plus one slow tiny end-to-end vision study."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import finished_run

import lskd_core.study as S
from lskd_core.features_io import save_features
from lskd_core.study import plan as P
from lskd_core.study.match import main as match_main
from lskd_core.study.state import read_manifest


def _cfg(preset: str = "demo", **kw):
    return S.load_config(preset, overrides=kw)


def _by_id(cfg):
    return {r.run_id: r for r in S.build_plan(cfg)}


def _flag(args, flag):
    return args[args.index(flag) + 1]


# ------------------------------------------------------------------------------------------------
# teacher seeds and pairing
# ------------------------------------------------------------------------------------------------
def test_one_teacher_keeps_the_legacy_ids_and_student_command():
    """teacher_seeds = 1, cache = false: the same ids and the same defining command as before the
    new settings existed (the argv below is written out by hand from the pre-cache planner)."""
    # the pre-cache demo preset's evaluation cap and student flags, pinned here (the preset has changed since)
    # (and per-epoch evaluation, as students had before --eval-every 0 became the study's default)
    cfg = _cfg(cache=False, seeds=2, temperatures=[1, 4], analysis=False, val_samples=2000, eval_each_epoch=True,
               student_args=["--lr-scheduler", "cosineannealinglr", "--wd", "5e-4"])
    by = _by_id(cfg)
    assert sorted(r for r in by if r.startswith("teacher")) == ["teacher_a0", "teacher_a0.1"]
    assert not [r for r in by if r.startswith(("cache", "match"))]
    st = by["student_a0.1_T4_s1"]
    assert st.deps == ["teacher_a0.1"]
    assert st.defining(1)["args"] == [
        "--model", "lskd_cnn_s", "--dataset", "fashion-mnist", "--train-samples", "6000", "--val-samples", "2000",
        "--subset-seed", "0", "--epochs", "2", "--batch-size", "64", "--lr", "0.05", "--label-smoothing", "0",
        "--seed", "1", "--teacher", "lskd_cnn_t", "--teacher-ckpt", "{study}/runs/teacher_a0.1/checkpoint.pth",
        "--kd-temperature", "4", "--kd-beta", "1", "--lr-scheduler", "cosineannealinglr", "--wd", "5e-4"]
    te = by["teacher_a0"]
    assert _flag(te.args, "--seed") == "0" and te.info["teacher_seed"] == 0


@pytest.mark.parametrize("n_teachers", [1, 2, 3])
def test_students_pair_with_teacher_i_mod_n(n_teachers):
    seeds = [4, 7, 9, 11, 12]
    cfg = _cfg(teacher_seeds=n_teachers, teacher_seed=10, seeds=seeds, temperatures=[1, 2], analysis=False)
    by = _by_id(cfg)
    teachers = sorted(r for r, run in by.items() if run.kind == "teacher")
    if n_teachers == 1:
        assert teachers == ["teacher_a0", "teacher_a0.1"]
    else:
        assert teachers == sorted(f"teacher_a{a}_ts{10 + k}" for a in ("0", "0.1") for k in range(n_teachers))
    for t_id in teachers:
        assert _flag(by[t_id].args, "--seed") == str(by[t_id].info["teacher_seed"])
    for alpha in ("0", "0.1"):
        for temp in ("1", "2"):
            for i, seed in enumerate(seeds):
                st = by[f"student_a{alpha}_T{temp}_s{seed}"]
                tseed = 10 + i % n_teachers  # the documented pairing: seed index i -> teacher i mod N
                t_id = f"teacher_a{alpha}" if n_teachers == 1 else f"teacher_a{alpha}_ts{tseed}"
                assert st.info["teacher_seed"] == tseed and st.info["teacher_run"] == t_id
                assert st.deps == [f"cache_{t_id}"]
                assert _flag(st.args, "--teacher-cache") == f"{{study}}/runs/cache_{t_id}/cache"
    # every teacher has students and each teacher's cache is built once
    caches = [r for r in by.values() if r.kind == "cache"]
    assert sorted(c.deps[0] for c in caches) == teachers
    used = {r.deps[0] for r in by.values() if r.kind == "student"}
    assert used == {f"cache_{t}" for t in teachers}


def test_teacher_seeds_are_exported_and_recorded_in_the_manifest(tmp_path):
    cfg = _cfg(teacher_seeds=2, seeds=2, temperatures=[1])
    plan = S.build_plan(cfg)
    ids = {r.run_id for r in plan}
    for a in ("0", "0.1"):
        for k in (0, 1):
            assert {f"export_teacher_a{a}_ts{k}_train", f"export_teacher_a{a}_ts{k}_val"} <= ids
    S.write_manifest(tmp_path, cfg, plan)
    runs = {r["run_id"]: r for r in read_manifest(tmp_path)["runs"]}
    assert runs["student_a0_T1_s1"]["info"]["teacher_seed"] == 1


# ------------------------------------------------------------------------------------------------
# the teacher cache as a run
# ------------------------------------------------------------------------------------------------
def test_cache_run_per_teacher_and_students_read_it():
    cfg = _cfg(seeds=2, temperatures=[1, 4], cache_aug_seed=5, cache_dtype="bfloat16")
    by = _by_id(cfg)
    c = by["cache_teacher_a0.1"]
    assert c.program == ("module", "vision_plugin.teacher_cache") and c.args[0] == "build"
    assert c.deps == ["teacher_a0.1"]
    assert _flag(c.args, "--teacher-ckpt") == "{study}/runs/teacher_a0.1/checkpoint.pth"
    assert _flag(c.args, "--epochs") == str(cfg.student_epochs)  # recorded views = the students' epochs
    assert _flag(c.args, "--seed") == "5" and _flag(c.args, "--dtype") == "bfloat16"
    assert _flag(c.args, "--train-samples") == "6000" and _flag(c.args, "--subset-seed") == "0"
    assert "--topk" not in c.args and c.outputs == ["cache/header.json"]
    for seed in (0, 1):
        st = by[f"student_a0.1_T4_s{seed}"]
        assert "--teacher" not in st.args and "--teacher-ckpt" not in st.args
        assert _flag(st.args, "--teacher-cache") == "{study}/runs/cache_teacher_a0.1/cache"
        assert st.deps == ["cache_teacher_a0.1"]
    # a top-K cache serves the grid's temperatures
    topk = _by_id(_cfg(seeds=1, temperatures=[1, 4], cache_topk=3))["cache_teacher_a0"]
    i = topk.args.index("--cache-temperatures")
    assert _flag(topk.args, "--topk") == "3" and topk.args[i + 1:i + 3] == ["1", "4"]


def test_exports_do_not_change_with_the_cache():
    on, off = _by_id(_cfg(seeds=2, temperatures=[1, 4])), _by_id(_cfg(seeds=2, temperatures=[1, 4], cache=False))
    exports_on = {r: x.args for r, x in on.items() if x.kind == "export"}
    assert exports_on == {r: x.args for r, x in off.items() if x.kind == "export"}
    # teachers and their exports are the same runs; students (and their exports) are not
    assert on["export_teacher_a0_train"].hash == off["export_teacher_a0_train"].hash
    assert on["export_student_a0_T1_s0_val"].hash != off["export_student_a0_T1_s0_val"].hash


def _hashes(**kw):
    return {r.run_id: r.hash for r in S.build_plan(_cfg(seeds=2, temperatures=[1, 4], **kw))}


@pytest.mark.parametrize("setting, value, changed_prefixes", [
    ("cache_dtype", "float16", ("cache_", "student_", "export_student_")),
    ("cache_topk", 4, ("cache_", "student_", "export_student_")),
    ("cache_aug_seed", 3, ("cache_", "student_", "export_student_")),
])
def test_cache_settings_change_exactly_the_cache_runs_and_downstream(setting, value, changed_prefixes):
    base, other = _hashes(), _hashes(**{setting: value})
    assert set(base) == set(other)
    changed = {r for r in base if base[r] != other[r]}
    assert changed == {r for r in base if r.startswith(changed_prefixes)}


def test_cache_on_off_and_teacher_seeds_enter_the_hashes():
    base, off = _hashes(), _hashes(cache=False)
    assert {r for r in base if r in off and base[r] != off[r]} == {
        r for r in base if r.startswith(("student_", "export_student_"))}
    two = _hashes(teacher_seeds=2)
    # the second teacher seed creates new runs; the first keeps its (renamed) teacher's command
    assert "teacher_a0_ts1" in two and "teacher_a0_ts0" in two and "teacher_a0" not in two
    assert two["teacher_a0_ts0"] == base["teacher_a0"]
    assert two["student_a0_T1_s1"] != base["student_a0_T1_s1"]  # now distils from teacher seed 1
    # its cache is another run (the teacher's id, hence its cache's path, names the seed)
    assert two["cache_teacher_a0_ts0"] != base["cache_teacher_a0"]


def test_matched_settings_leave_the_grid_alone():
    base, matched = _hashes(), _hashes(matched_temperatures=[1, 3])
    assert all(matched[r] == h for r, h in base.items())
    assert {r for r in matched if r not in base} == {"match"} | {
        f"matched_a0_for_a0.1_T{t}_s{s}" for t in (1, 3) for s in (0, 1)}


# ------------------------------------------------------------------------------------------------
# config validation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, message", [
    ({"teacher_seeds": 0}, "teacher_seeds must be >= 1"),
    ({"cache": "yes"}, "cache must be true or false"),
    ({"cache_dtype": "int8"}, "cache_dtype must be one of"),
    ({"cache_topk": -1}, "cache_topk must be >= 0"),
    ({"cache_aug_seed": -2}, "cache_aug_seed must be >= 0"),
    ({"matched_temperatures": [1, 1]}, "matched_temperatures has duplicates"),
    ({"matched_temperatures": [0]}, "matched_temperatures"),
    ({"matched_temperatures": [1], "alphas": [0.1, 0.2]}, "needs alpha 0"),
])
def test_bad_settings_are_one_clear_error(kw, message):
    with pytest.raises(ValueError, match=message):
        _cfg(**kw)


def test_translation_refuses_matched_students():
    with pytest.raises(ValueError, match="vision task only"):
        _cfg("translation", matched_temperatures=[1])


# ------------------------------------------------------------------------------------------------
# translation: cache runs and the one BLEU path
# ------------------------------------------------------------------------------------------------
def test_translation_cache_runs_and_students():
    cfg = _cfg("translation", seeds=1, temperatures=[1, 2], teacher_seeds=2, cache_topk=8)
    by = _by_id(cfg)
    c = by["cache_teacher_a0.1_ts1"]
    assert c.program == ("module", "fairseq_plugin.teacher_cache") and c.args[:2] == [
        "build", "{study}/runs/prepare_en-de/data/bin"]
    assert _flag(c.args, "--teacher-path") == "{study}/runs/teacher_a0.1_ts1/checkpoint_best.pt"
    assert _flag(c.args, "--topk") == "8" and c.deps == ["prepare_en-de", "teacher_a0.1_ts1"]
    st = by["student_a0.1_T2_s0"]
    assert "--teacher-path" not in st.args and _flag(st.args, "--kd-topk") == "8"
    assert _flag(st.args, "--teacher-cache") == "{study}/runs/cache_teacher_a0.1_ts1/cache"
    assert st.deps == ["prepare_en-de", "cache_teacher_a0.1_ts1"] and st.info["teacher_seed"] == 1
    full = _by_id(_cfg("translation", seeds=1, temperatures=[1], cache_topk=0))["cache_teacher_a0"]
    assert "--full" in full.args and "--topk" not in full.args
    live = _by_id(_cfg("translation", seeds=1, temperatures=[1], cache=False))["student_a0_T1_s0"]
    assert _flag(live.args, "--teacher-path") == "{study}/runs/teacher_a0/checkpoint_best.pt"


def test_bleu_of_a_generate_run_is_detokenised_sacrebleu(tmp_path):
    """The grid's BLEU is fairseq_plugin.bleu's detokenised sacreBLEU, checked against sacrebleu itself."""
    pytest.importorskip("sacremoses")
    sacrebleu = pytest.importorskip("sacrebleu")
    cfg = _cfg("translation", seeds=1, temperatures=[1])
    run = _by_id(cfg)["bleu_student_a0_T1_s0"]
    assert run.info["bleu_ref"] == "{study}/runs/prepare_en-de/data/raw/test.de"
    rdir = tmp_path / "runs" / run.run_id
    rdir.mkdir(parents=True)
    hyps = ["das ist ein kleines haus .", "ich habe es gesehen , oder ?"]
    refs = ["Das ist ein kleines Haus.", "Ich habe es nicht gesehen, oder?"]
    (rdir / "generate-test.txt").write_text("".join(
        f"S-{i}\tx\nT-{i}\tignored\nH-{i}\t-0.5\t{h}\n" for i, h in enumerate(hyps)), encoding="utf-8")
    raw = tmp_path / "runs" / "prepare_en-de" / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "test.de").write_text("\n".join(refs) + "\n", encoding="utf-8")
    extra, err = S.get_task("translation").complete_result(run, rdir)
    assert err is None
    detok_hyps = ["das ist ein kleines haus.", "ich habe es gesehen, oder?"]
    want = sacrebleu.metrics.BLEU(lowercase=True).corpus_score(detok_hyps, [refs]).score
    assert extra["bleu"] == pytest.approx(want, abs=1e-3) and "bleu_tok" in extra


def test_bleu_scorer_failure_is_the_run_error(tmp_path):
    """A log that cannot be scored fails the run with one line naming the file and the problem."""
    from lskd_core.study.tasks import translation as tr

    gen = tmp_path / "gen.txt"
    gen.write_text("2026-12-06 | INFO | fairseq_cli.generate | no hypotheses here\n", encoding="utf-8")
    extra, err = tr.score_bleu(gen, "de", None)
    assert extra == {} and err == ("BLEU scoring of gen.txt failed: no H-/T- line pairs found: "
                                   "is this fairseq-generate output?")
    extra, err = tr.score_bleu(tmp_path / "missing.txt", "de", None)
    assert extra == {} and err.startswith("BLEU scoring of missing.txt failed: ") and "\n" not in err
    gen.write_bytes(b"H-0\t-0.5\t\xff\xfe\n")
    extra, err = tr.score_bleu(gen, "de", None)
    assert extra == {} and err.startswith("BLEU scoring of gen.txt failed: ")


# ------------------------------------------------------------------------------------------------
# entropy matching (App. H)
# ------------------------------------------------------------------------------------------------
def _np_mean_entropy(logits: np.ndarray, t: float) -> float:
    z = logits.astype(np.float64) / t
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    return float(np.mean(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)))


def _teacher_logits(rng, n, k, sharp):
    labels = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)).astype(np.float32)
    logits[np.arange(n), labels] += sharp
    return logits, labels


def test_match_run_plan_points_at_the_right_teachers():
    by = _by_id(_cfg(seeds=2, temperatures=[1, 4], teacher_seeds=2, matched_temperatures=[1, 3], analysis=False))
    m = by["match_ts1"]
    assert _flag(m.args, "--plain") == "{study}/runs/export_teacher_a0_ts1_train/features.npz"
    i = m.args.index("--ls")
    assert m.args[i + 1:i + 3] == ["0.1", "{study}/runs/export_teacher_a0.1_ts1_train/features.npz"]
    assert sorted(m.deps) == ["export_teacher_a0.1_ts1_train", "export_teacher_a0_ts1_train"]
    st = by["matched_a0_for_a0.1_T3_s1"]  # seed index 1 -> teacher seed 1
    assert st.deps == ["cache_teacher_a0_ts1", "match_ts1"] and "--kd-temperature" not in st.args
    assert _flag(st.args, "--kd-temperature-file") == "{study}/runs/match_ts1/matched.json"
    assert _flag(st.args, "--kd-temperature-key") == "a0.1_T3"
    assert _flag(st.args, "--teacher-cache") == "{study}/runs/cache_teacher_a0_ts1/cache"
    # analysis off: only the teachers' train exports the matching needs are planned
    assert not [r for r in by if r.startswith("export_student")] and "export_teacher_a0_ts0_val" not in by
    # a top-K cache cannot serve the unknown T': the matched students run their teacher live
    topk = _by_id(_cfg(seeds=1, temperatures=[1], matched_temperatures=[1], cache_topk=3))
    assert _flag(topk["matched_a0_for_a0.1_T1_s0"].args, "--teacher-ckpt") == "{study}/runs/teacher_a0/checkpoint.pth"


def test_matched_entropy_recomputed_from_the_exported_logits(tmp_path):
    rng = np.random.default_rng(0)
    plain, y = _teacher_logits(rng, 300, 10, sharp=6.0)
    ls, _ = _teacher_logits(rng, 300, 10, sharp=2.5)
    # the LS teacher's logits are squashed: smoother at T = 1, as LS makes them
    ls = (0.6 * ls).astype(np.float32)
    for name, lg in (("plain", plain), ("ls", ls)):
        save_features(tmp_path / f"{name}.npz", rng.normal(size=(300, 4)).astype(np.float32), y, logits=lg)
    out = tmp_path / "matched.json"
    rc = match_main(["--plain", str(tmp_path / "plain.npz"), "--ls", "0.1", str(tmp_path / "ls.npz"),
                     "--at", "1", "3", "--out", str(out)])
    assert rc == 0
    got = json.loads(out.read_text())
    assert set(got["temperatures"]) == {"a0.1_T1", "a0.1_T3"}
    for t in (1.0, 3.0):
        t_prime = got["temperatures"][P.matched_key(0.1, t)]
        target = _np_mean_entropy(ls, t)
        assert _np_mean_entropy(plain, t_prime) == pytest.approx(target, rel=1e-6)
        # the matched entropy is that of the plain teacher: the LS teacher at T' is another value
        assert abs(_np_mean_entropy(ls, t_prime) - target) > 1e-3 * target
        pair = [p for p in got["pairs"] if p["ls_temperature"] == t][0]
        assert pair["ls_entropy"] == pytest.approx(target, rel=1e-9)
        assert pair["plain_entropy"] == pytest.approx(target, rel=1e-6)
    assert got["temperatures"]["a0.1_T1"] > 1.0  # the sharper plain teacher needs a higher T'


def test_match_cli_bad_input_is_one_line(tmp_path, capsys):
    y = np.zeros(5, dtype=np.int64)
    save_features(tmp_path / "nolog.npz", np.zeros((5, 2), np.float32), y)
    rc = match_main(["--plain", str(tmp_path / "nolog.npz"), "--ls", "0.1", str(tmp_path / "nolog.npz"),
                     "--at", "1", "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "holds no logits" in err[0] and "--save-logits" in err[0]
    rc = match_main(["--plain", str(tmp_path / "absent.npz"), "--ls", "0.1", str(tmp_path / "nolog.npz"),
                     "--at", "1", "--out", str(tmp_path / "m.json")])
    assert rc == 2 and "no such features file" in capsys.readouterr().err


def test_trainer_reads_the_matched_temperature_from_the_file(tmp_path):
    """The planned matched student's flags parse with the vision trainer, which takes T from matched.json."""
    pytest.importorskip("torchvision")
    from vision_plugin.kd import check_kd_args
    from vision_plugin.train import get_args_parser

    cfg = _cfg(seeds=1, temperatures=[1], matched_temperatures=[3])
    run = _by_id(cfg)["matched_a0_for_a0.1_T3_s0"]
    (tmp_path / "runs" / "match").mkdir(parents=True)
    (tmp_path / "runs" / "match" / "matched.json").write_text(json.dumps({"temperatures": {"a0.1_T3": 5.638}}))
    argv = S.run_command(run, tmp_path, cfg)
    args = get_args_parser().parse_args(argv[argv.index("vision_plugin.train") + 1:])
    assert args.kd_temperature == 1.0  # the default, until the file is read
    check_kd_args(args)
    assert args.kd_temperature == 5.638
    args.kd_temperature_key = "a0.1_T9"
    with pytest.raises(ValueError, match=r"has no temperatures\['a0.1_T9'\] \(keys: \['a0.1_T3'\]\)"):
        check_kd_args(args)
    args.kd_temperature_file = str(tmp_path / "absent.json")
    with pytest.raises(ValueError, match="does not exist"):
        check_kd_args(args)


# ------------------------------------------------------------------------------------------------
# end to end: a tiny real study, cached vs live, with entropy-matched students
# ------------------------------------------------------------------------------------------------
TINY_GRID = {"name": "tiny-grid", "train_samples": 200, "val_samples": 100, "teacher_epochs": 1, "student_epochs": 1,
             "teacher_batch_size": 50, "student_batch_size": 50, "teacher_args": [], "alphas": [0, 0.1],
             "temperatures": [1, 4], "seeds": 1, "matched_temperatures": [1], "analysis": False, "jobs": 2,
             "student_args": ["--threads", "1"]}


def _results(study: Path, prefix: str) -> dict:
    return {d.name: json.loads((d / "result.json").read_text()) for d in sorted((study / "runs").iterdir())
            if d.name.startswith(prefix) and ".stale-" not in d.name and (d / "result.json").is_file()}


@pytest.mark.slow
def test_tiny_study_cached_equals_live_and_matched_students_use_the_recomputed_t(tmp_path):
    from lskd_core.features_io import load_features
    from lskd_core.study.tasks.vision import default_fashion_mnist_dir

    fashion = Path(default_fashion_mnist_dir())
    if not any((fashion / n).exists() for n in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")):
        pytest.skip(f"Fashion-MNIST not installed at {fashion} (apt-get install dataset-fashion-mnist)")
    study = tmp_path / "study"
    cached = S.run_study(S.load_config(overrides=dict(TINY_GRID)), study, progress=False, echo=lambda s: None)
    assert cached.ok, cached.failed
    got = _results(study, "student_") | _results(study, "matched_")
    assert len(got) == 2 * 2 + 1
    for rid, res in got.items():  # every student read its teacher's cache, none ran a teacher
        assert res["args"]["teacher_cache"].endswith("/cache") and res["args"]["teacher"] is None, rid
    caches = _results(study, "cache_")
    assert set(caches) == {"cache_teacher_a0", "cache_teacher_a0.1"}
    assert all(c["cache"]["rows"] == 200 and c["cache"]["bytes_on_disk"] > 200 * 10 * 4 for c in caches.values())
    # matched students distilled at T' recomputed here from the teachers' exported train logits
    matched = json.loads((study / "runs" / "match" / "matched.json").read_text())
    t_prime = matched["temperatures"]["a0.1_T1"]
    assert got["matched_a0_for_a0.1_T1_s0"]["args"]["kd_temperature"] == t_prime
    plain = np.asarray(load_features(study / "runs" / "export_teacher_a0_train" / "features.npz").logits)
    ls = np.asarray(load_features(study / "runs" / "export_teacher_a0.1_train" / "features.npz").logits)
    assert _np_mean_entropy(plain, t_prime) == pytest.approx(_np_mean_entropy(ls, 1.0), rel=1e-6)
    report = (study / "report" / "report.md").read_text()
    assert "## Entropy-matched students" in report and f"T' = {t_prime:.4g}" in report
    assert "## Teacher caches: compute saved and disk used" in report
    savings = json.loads((study / "report" / "results.json").read_text())["cache_savings"]["total"]
    # each of the 3 students of the plain teacher (2 grid + 1 matched) and the 2 of the LS teacher
    # would have run its teacher on 200 views; the two builds ran 200 each
    assert savings["forwards_avoided"] == (3 + 2) * 200 - 2 * 200
    # the same grid with live teachers on the same augmentation stream: the same students
    live_cfg = dict(TINY_GRID, cache=False, matched_temperatures=[], student_args=["--threads", "1", "--aug-seed", "0"])
    live = S.run_study(S.load_config(overrides=live_cfg), study, progress=False, echo=lambda s: None)
    assert live.ok, live.failed
    assert not [r for r in live.launched if r.startswith(("teacher_", "export_")) or r == "match"]  # reused
    again = _results(study, "student_")
    assert set(again) == {r for r in got if r.startswith("student_")} and len(again) == 4
    for rid, res in again.items():
        assert res["args"]["teacher"] == "lskd_cnn_t" and not res["args"]["teacher_cache"], rid
        assert res["val_acc1"] == pytest.approx(got[rid]["val_acc1"], abs=1e-5), rid
        assert res["val_loss"] == pytest.approx(got[rid]["val_loss"], rel=1e-4), rid


def test_report_sections_matched_students_and_cache_savings(tmp_path):
    """Hand-made run results: the matched table pairs the right cells, the savings are counted."""
    from lskd_core.report import write_report

    cfg = _cfg(seeds=2, temperatures=[1, 4], matched_temperatures=[1], analysis=False)
    plan = S.build_plan(cfg)
    S.write_manifest(tmp_path, cfg, plan)

    def done(run_id, **fields):
        return finished_run(tmp_path, run_id, **fields)

    for a in (0, 0.1):
        done(f"teacher_a{a}", val_acc1=80.0, val_acc5=99.0)
        done(f"cache_teacher_a{a}", wall_time_s=10.0, cache={"rows": 600, "bytes_on_disk": 2**20, "bytes_per_row": 1747.6,
                                                             "kind": "full", "dtype": "float32", "topk": None})
    scores = {("0", "1"): [70.0, 72.0], ("0.1", "1"): [75.0, 77.0], ("0", "4"): [71.0, 71.5], ("0.1", "4"): [60.0, 62.0]}
    for (a, t), vals in scores.items():
        for s, v in enumerate(vals):
            done(f"student_a{a}_T{t}_s{s}", val_acc1=v, val_acc5=99.0, wall_time_s=3.0)
    for s, v in enumerate([73.0, 74.0]):
        done(f"matched_a0_for_a0.1_T1_s{s}", val_acc1=v, val_acc5=99.0, wall_time_s=3.0)
    m = done("match")
    (m / "matched.json").write_text(json.dumps({"temperatures": {"a0.1_T1": 1.75}, "pairs": [
        {"key": "a0.1_T1", "matched_temperature": 1.75, "ls_entropy": 0.9, "plain_entropy": 0.9}]}))
    rep = write_report(tmp_path)
    res = json.loads((rep / "results.json").read_text())
    (row,) = res["matched"]["rows"]
    assert (row["ls_alpha"], row["ls_temperature"], row["matched_temperatures"]) == (0.1, 1.0, {"0": 1.75})
    assert row["ls_mean"] == pytest.approx(76.0) and row["matched_mean"] == pytest.approx(73.5)
    md = (rep / "report.md").read_text()
    assert "| alpha = 0.1, T = 1 | 76.00 ± 1.41 (n=2) | alpha = 0, T' = 1.75 | 73.50 ± 0.71 (n=2) | 0.9000 / 0.9000 |" in md
    tot = res["cache_savings"]["total"]
    # plain teacher: 4 grid + 2 matched students, LS teacher: 4 students; 600 rows each, minus 2 builds
    assert tot["forwards_avoided"] == (6 + 4) * 600 - 2 * 600 and tot["students_done"] == 10
    assert tot["bytes_on_disk"] == 2 * 2**20 and tot["build_wall_s"] == 20.0 and tot["students_wall_s"] == 30.0
    assert "2 of 2 teacher caches built (2.0 MiB on disk)" in md
