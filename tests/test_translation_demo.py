"""The translation demo (issue 18) end to end, much smaller: the `translation-demo` preset's pipeline on
the real offline corpus (Debian trans-de-en) with a few hundred sentence pairs and 1-epoch runs:
prepare -> fairseq-train teachers (label_smoothed_cross_entropy) -> top-K caches -> ls_kd students ->
fairseq-generate -> sacreBLEU + chrF -> the report's BLEU grid with intervals and a verdict."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest

pytest.importorskip("fairseq")

import lskd_core.study as S  # noqa: E402
from fairseq_plugin.prepare_offline import DING_PATH  # noqa: E402

_FAIRSEQ_TRAIN = shutil.which("fairseq-train") or (Path(sys.executable).parent / "fairseq-train").exists()
pytestmark = pytest.mark.skipif(not os.path.isfile(DING_PATH) or not _FAIRSEQ_TRAIN,
                                reason="needs the Debian package trans-de-en and fairseq's console scripts")

TINY = ["--encoder-layers", "1", "--decoder-layers", "1", "--encoder-embed-dim", "32", "--decoder-embed-dim", "32",
        "--encoder-ffn-embed-dim", "64", "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2",
        "--decoder-attention-heads", "2", "--share-all-embeddings", "--optimizer", "adam", "--lr-scheduler",
        "inverse_sqrt", "--warmup-updates", "10", "--no-epoch-checkpoints", "--log-format", "simple"]


def test_preset_is_the_issue_grid():
    cfg = S.load_config("translation-demo")
    assert cfg.task == "translation" and cfg.pair == "en-de" and cfg.data_dir is None
    assert cfg.alphas == [0.0, 0.1] and {1.0, 2.0, 64.0} <= set(cfg.temperatures)
    assert cfg.cache and cfg.cache_topk and len(cfg.seed_list) >= 2
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    teacher = plan["teacher_a0.1"]
    assert teacher.args[teacher.args.index("--criterion") + 1] == "label_smoothed_cross_entropy"
    student = plan["student_a0.1_T64_s0"]
    assert student.args[student.args.index("--criterion") + 1] == "ls_kd"
    assert "--teacher-cache" in student.args and plan["bleu_student_a0.1_T64_s0"].program == ("exe",
                                                                                            "fairseq-generate")


@pytest.mark.slow
def test_small_translation_demo_end_to_end(tmp_path):
    cfg = S.load_config("translation-demo", overrides={
        "prepare_args": ["--max-words", "10", "--bpe-size", "300", "--max-pairs", "400",
                         "--valid-size", "40", "--test-size", "40"],
        "teacher_epochs": 1, "student_epochs": 1, "temperatures": [1, 64], "seeds": 2,
        "teacher_args": TINY, "student_args": TINY, "max_tokens": 2048, "beam": 2, "cache_topk": 8,
        "analysis": False,  # token exports need more sentences than 40 (tests/test_fairseq_export.py covers them)
        "jobs": 2})
    outcome = S.run_study(cfg, tmp_path, progress=False, echo=lambda s: None)
    assert outcome.ok, (outcome.failed, outcome.blocked)
    prep = json.loads((tmp_path / "runs" / "prepare_en-de" / "data" / "prepare.json").read_text())
    assert prep["sizes"] == {"test": 40, "valid": 40, "train": 320} and prep["package"] == "trans-de-en"
    assert prep["licence"].startswith("GPL")
    raw = tmp_path / "runs" / "prepare_en-de" / "data" / "raw"
    train_src = set((raw / "train.en").read_text(encoding="utf-8").splitlines())
    assert not train_src & set((raw / "test.en").read_text(encoding="utf-8").splitlines())  # held out

    res = json.loads((tmp_path / "report" / "results.json").read_text())
    grid = res["accuracy_grid"]
    assert grid["status"] == "ok" and grid["metric"] == "bleu"
    for teacher in grid["teachers"]:
        assert teacher["bleu"] is not None and 0.0 <= teacher["bleu"] <= 100.0
        assert teacher["chrf"] is not None and 0.0 < teacher["chrf"] <= 100.0
    for cell in grid["cells"]:
        assert cell["n"] == 2 and len(cell["top5"]) == 2  # BLEU and chrF of both seeds
        bleu_file = tmp_path / "runs" / f"bleu_student_a{cell['alpha']:g}_T{cell['temperature']:g}_s0" / "result.json"
        scored = json.loads(bleu_file.read_text())
        assert scored["bleu"] == cell["top1"][0] and scored["chrf"] == cell["top5"][0]
    analysis = res["verdict"]["analysis"]
    assert analysis["status"] == "ok" and len(analysis["trends"]) == 2
    assert res["verdict"]["text"] and "BLEU" in res["verdict"]["text"]
    report = (tmp_path / "report" / "report.md").read_text()
    assert "## 1. BLEU grid (Table 5)" in report and "95 % interval" in report
    assert (tmp_path / "report" / "accuracy_vs_T.png").is_file()


def test_sampled_mode_plans_sampled_caches_and_students():
    cfg = S.load_config("translation-demo", overrides={"cache_topk_mode": "sample"})
    plan = {r.run_id: r for r in S.build_plan(cfg)}
    cache = plan["cache_teacher_a0.1"] if "cache_teacher_a0.1" in plan else next(
        r for r in plan.values() if r.kind == "cache")
    assert "--sample" in cache.args and "--topk" not in cache.args
    student = plan["student_a0.1_T64_s0"]
    assert student.args[student.args.index("--kd-topk-mode") + 1] == "sample"
    top = {r.run_id: r for r in S.build_plan(S.load_config("translation-demo"))}
    assert top["student_a0.1_T64_s0"].hash != student.hash  # the mode is part of the run's identity
    with pytest.raises(ValueError, match="cache_topk_mode"):
        S.load_config("translation-demo", overrides={"cache_topk_mode": "random"})
    with pytest.raises(ValueError, match="set cache_topk = K"):
        S.load_config("translation-demo", overrides={"cache_topk_mode": "sample", "cache_topk": 0})
