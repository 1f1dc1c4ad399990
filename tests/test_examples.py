"""The example study configs under examples/ load and plan the paper's grids.

Each config is run exactly as the docs say, ``python -m lskd_core.study --config examples/X.toml
--print-commands``, in a scratch directory that holds empty stand-ins for the data (nothing is
trained or read). The expected commands are the settings of the paper's recipes as the retired
shell/Python runners (examples/vision/imagenet.sh, cub.sh, examples/translation/table5_grid.py)
spelled them out, written here by hand.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from conftest import REPO

ALPHAS = {"0", "0.1"}
TEMPS = {"1", "2", "3", "64"}


def _fake_data(root: Path) -> None:
    """Empty stand-ins at the relative paths the example configs name."""
    for split in ("train", "val"):
        (root / "data" / "imagenet" / split).mkdir(parents=True)
    cub = root / "data" / "CUB_200_2011"
    (cub / "images").mkdir(parents=True)
    for name in ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt"):
        (cub / name).write_text("")
    (root / "data" / "cub_hierarchy.json").write_text(json.dumps({"Laniidae": "Passeriformes"}))
    bin_dir = root / "runs" / "data" / "iwslt14.en-de" / "bin"
    bin_dir.mkdir(parents=True)
    for lang in ("en", "de"):
        (bin_dir / f"dict.{lang}.txt").write_text("hallo 1\n")


def _plan(config: str, tmp_path: Path) -> List[List[str]]:
    _fake_data(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lskd_core.study", "--config", str(REPO / config),
                           "--print-commands", "--out", str(tmp_path / "study")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [shlex.split(line) for line in proc.stdout.splitlines() if line.strip()]


def _flag(argv: List[str], name: str) -> Optional[str]:
    """The value of the last ``name VALUE`` in argv (argparse semantics), None when absent."""
    value = None
    for i, a in enumerate(argv[:-1]):
        if a == name:
            value = argv[i + 1]
    return value


def _by_program(cmds: List[List[str]]) -> Dict[str, List[List[str]]]:
    out: Dict[str, List[List[str]]] = {"teacher": [], "student": [], "export": [], "generate": [], "cache": []}
    for argv in cmds:
        if "vision_plugin.export_features" in argv or "fairseq_plugin.export_features" in argv:
            out["export"].append(argv)
        elif "vision_plugin.teacher_cache" in argv or "fairseq_plugin.teacher_cache" in argv:
            out["cache"].append(argv)
        elif "vision_plugin.train" in argv:
            out["student" if "--teacher" in argv or "--teacher-cache" in argv else "teacher"].append(argv)
        elif Path(argv[0]).name == "fairseq-generate":
            out["generate"].append(argv)
        elif Path(argv[0]).name == "fairseq-train":
            out["student" if _flag(argv, "--criterion") == "ls_kd" else "teacher"].append(argv)
        else:
            raise AssertionError(f"unexpected command {argv[:4]}")
    return out


def _teacher_alpha(student: List[str], ckpt_flag: str) -> str:
    """The alpha of the teacher a student reads, from the teacher (or its cache) run's directory name."""
    teacher_dir = Path(_flag(student, ckpt_flag) or "").parent.name
    if teacher_dir.startswith("cache_"):
        teacher_dir = teacher_dir[len("cache_"):]
    assert teacher_dir.startswith("teacher_a"), teacher_dir
    return teacher_dir[len("teacher_a"):]


def _check_vision_common(argv: List[str], dataset: str, data_path: str) -> None:
    assert _flag(argv, "--dataset") == dataset
    assert _flag(argv, "--data-path") == data_path
    assert _flag(argv, "--device") == "cuda"


def test_imagenet_config_plans_the_table2a_grid(tmp_path):
    cmds = _by_program(_plan("examples/imagenet.toml", tmp_path))
    assert (len(cmds["teacher"]), len(cmds["student"]), len(cmds["export"])) == (2, 8, 20)
    assert not cmds["generate"] and not cmds["cache"]  # cache = false: ImageNet's views would not fit a disk
    for argv in cmds["teacher"] + cmds["student"]:
        _check_vision_common(argv, "imagefolder", "data/imagenet")
        assert argv[argv.index("--nproc-per-node") + 1] == "8"  # 8 GPUs x 32 = batch 256
        assert _flag(argv, "--batch-size") == "32" and _flag(argv, "--lr") == "0.1"
        assert _flag(argv, "--lr-scheduler") == "steplr" and _flag(argv, "--lr-gamma") == "0.1"
        assert _flag(argv, "--momentum") == "0.9" and _flag(argv, "--wd") == "1e-4"
        assert "--amp" in argv and "--train-samples" not in argv and "--val-samples" not in argv
    assert {_flag(a, "--label-smoothing") for a in cmds["teacher"]} == ALPHAS
    for argv in cmds["teacher"]:
        assert (_flag(argv, "--model"), _flag(argv, "--epochs"), _flag(argv, "--lr-step-size")) == ("resnet50", "90", "30")
    cells = set()
    for argv in cmds["student"]:
        assert (_flag(argv, "--model"), _flag(argv, "--epochs"), _flag(argv, "--lr-step-size")) == ("resnet18", "200", "80")
        assert _flag(argv, "--teacher") == "resnet50" and _flag(argv, "--kd-beta") == "1"
        assert _flag(argv, "--label-smoothing") == "0" and _flag(argv, "--seed") == "0"
        cells.add((_teacher_alpha(argv, "--teacher-ckpt"), _flag(argv, "--kd-temperature")))
    assert cells == {(a, t) for a in ALPHAS for t in TEMPS}
    for argv in cmds["export"]:
        assert _flag(argv, "--dtype") == "float16" and "--train-samples" not in argv
    assert sorted(_flag(a, "--split") for a in cmds["export"]) == ["train"] * 10 + ["val"] * 10


def test_imagenet_ofd_config_plans_table_b5_feature_kd_students(tmp_path):
    cmds = _by_program(_plan("examples/imagenet_ofd.toml", tmp_path))
    assert (len(cmds["teacher"]), len(cmds["student"]), len(cmds["cache"])) == (2, 12, 0)
    assert {_flag(a, "--model") for a in cmds["teacher"]} == {"resnet50"}
    cells = set()
    for argv in cmds["student"]:
        _check_vision_common(argv, "imagefolder", "data/imagenet")
        assert (_flag(argv, "--model"), _flag(argv, "--teacher")) == ("resnet18", "resnet50")
        assert _flag(argv, "--feature-kd") == "overhaul" and float(_flag(argv, "--feature-kd-weight") or 0) == 1e-4
        assert "--teacher-cache" not in argv  # the live teacher: its feature maps are distilled
        cells.add((_teacher_alpha(argv, "--teacher-ckpt"), _flag(argv, "--kd-temperature"), _flag(argv, "--seed")))
    assert cells == {(a, t, s) for a in ALPHAS for t in ("1", "3") for s in ("0", "1", "2")}


def test_cub_config_plans_the_table2b_grid(tmp_path):
    cmds = _by_program(_plan("examples/cub.toml", tmp_path))
    assert (len(cmds["teacher"]), len(cmds["student"]), len(cmds["export"]), len(cmds["cache"])) == (2, 24, 52, 2)
    for argv in cmds["cache"]:  # one teacher pass over the students' 200 epochs of recorded views
        assert (_flag(argv, "--teacher"), _flag(argv, "--epochs")) == ("resnet50", "200")
        assert "--extra-augment" in argv and _flag(argv, "--dataset") == "cub"
    for argv in cmds["teacher"] + cmds["student"]:
        _check_vision_common(argv, "cub", "data/CUB_200_2011")
        assert _flag(argv, "--weights") == "IMAGENET1K_V1" and "--extra-augment" in argv and "--amp" in argv
        assert (_flag(argv, "--epochs"), _flag(argv, "--lr"), _flag(argv, "--lr-step-size")) == ("200", "0.01", "80")
        assert _flag(argv, "--batch-size") == "32" and argv[argv.index("--nproc-per-node") + 1] == "8"
    assert {_flag(a, "--model") for a in cmds["teacher"]} == {"resnet50"}
    assert {_flag(a, "--model") for a in cmds["student"]} == {"resnet18"}
    cells = {(_teacher_alpha(a, "--teacher-cache"), _flag(a, "--kd-temperature"), _flag(a, "--seed"))
             for a in cmds["student"]}
    assert cells == {(a, t, s) for a in ALPHAS for t in TEMPS for s in ("0", "1", "2")}
    assert all("--save-logits" in a for a in cmds["export"])


def test_cub_config_takes_the_table4_student_from_the_command_line(tmp_path):
    _fake_data(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "lskd_core.study", "--config", str(REPO / "examples/cub.toml"),
                           "--student-model", "mobilenet_v2", "--print-commands", "--out", str(tmp_path / "s")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmds = _by_program([shlex.split(line) for line in proc.stdout.splitlines()])
    assert {_flag(a, "--model") for a in cmds["student"]} == {"mobilenet_v2"}
    assert {_flag(a, "--teacher") for a in cmds["cache"]} == {"resnet50"}


def test_iwslt14_config_plans_the_table5_grid(tmp_path):
    cmds = _by_program(_plan("examples/iwslt14.toml", tmp_path))
    assert (len(cmds["teacher"]), len(cmds["student"]), len(cmds["generate"]), len(cmds["cache"])) == (2, 8, 10, 2)
    for argv in cmds["cache"]:  # top-64 teacher outputs + exact tail mass at the grid's T
        assert Path(_flag(argv, "--teacher-path") or "").name == "checkpoint_best.pt" and _flag(argv, "--topk") == "64"
    # the report's per-token analyses: one export per model, teachers with the entropy sums
    assert len(cmds["export"]) == 10 and all(_flag(a, "--split") == "test" for a in cmds["export"])
    assert sum("--entropy-out" in a for a in cmds["export"]) == 2
    for argv in cmds["teacher"] + cmds["student"]:
        assert argv[1] == "runs/data/iwslt14.en-de/bin"
        assert _flag(argv, "--arch") == "transformer_iwslt_de_en"
        assert _flag(argv, "--optimizer") == "adam" and _flag(argv, "--adam-betas") == "(0.9,0.98)"
        assert float(_flag(argv, "--lr") or "nan") == 5e-4
        assert (_flag(argv, "--lr-scheduler"), _flag(argv, "--warmup-updates")) == ("inverse_sqrt", "4000")
        assert (_flag(argv, "--dropout"), _flag(argv, "--weight-decay")) == ("0.3", "0.0")
        assert (_flag(argv, "--max-tokens"), _flag(argv, "--max-update")) == ("4096", "50000")
        assert _flag(argv, "--seed") == "1" and "--fp16" in argv and "--cpu" not in argv
        assert _flag(argv, "--best-checkpoint-metric") == "bleu"
        assert json.loads(_flag(argv, "--eval-bleu-args") or "{}") == {"beam": 5, "max_len_a": 1.2, "max_len_b": 10}
    assert {_flag(a, "--criterion") for a in cmds["teacher"]} == {"label_smoothed_cross_entropy"}
    assert {_flag(a, "--label-smoothing") for a in cmds["teacher"]} == ALPHAS
    cells = set()
    for argv in cmds["student"]:
        assert _flag(argv, "--kd-beta") == "1" and _flag(argv, "--label-smoothing") == "0"
        assert _flag(argv, "--kd-topk") == "64" and "--teacher-path" not in argv
        cells.add((_teacher_alpha(argv, "--teacher-cache"), _flag(argv, "--kd-temperature")))
    assert cells == {(a, t) for a in ALPHAS for t in TEMPS}
    for argv in cmds["generate"]:
        assert _flag(argv, "--beam") == "5" and "--remove-bpe" in argv and _flag(argv, "--gen-subset") == "test"
        assert Path(_flag(argv, "--path") or "").name == "checkpoint_best.pt"


@pytest.mark.parametrize("config, runs", [("examples/study/my_study.toml", 2 + 2 + 24 + 52)])
def test_annotated_study_config_plans(config, runs, tmp_path):
    cmds = _plan(config, tmp_path)
    assert len(cmds) == runs
    assert all(_flag(a, "--dataset") == "fashion-mnist" for a in cmds)

