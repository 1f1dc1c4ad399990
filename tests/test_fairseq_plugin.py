"""End-to-end tests of the ``ls_kd`` fairseq criterion on a real offline corpus (Debian trans-de-en).

One small En->De corpus and one label-smoothed teacher are prepared per module (tiny transformers,
CPU) and shared by every test: an ``ls_kd`` student then generation and BLEU; the beta = 0 oracle
against fairseq's ``label_smoothed_cross_entropy`` (logged JSON values of two real runs, and a
direct forward/backward comparison); the KD part against ``lskd_core.losses.kd_loss``; top-K with
K = V against full; ensembles; the teacher's absence from the student checkpoint; plain
``fairseq-generate`` on the student; bad inputs; 2 CPU workers; and the autoload hook with a real
``fairseq-train`` that is given no ``--user-dir``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch

pytest.importorskip("fairseq")
pytest.importorskip("sacremoses")
pytest.importorskip("subword_nmt")

from fairseq import options, tasks  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

import fairseq_plugin  # noqa: E402,F401  (registers ls_kd and the checkpoint allow-list)
from fairseq_plugin import autoload, bleu, prepare_offline  # noqa: E402
from fairseq_plugin.safe_load import CheckpointLoadError  # noqa: E402
from fairseq_plugin.teacher import _TEACHERS, clear_teacher_cache, get_teacher  # noqa: E402
from lskd_core.losses import kd_loss, ls_cross_entropy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PLUGIN = str(REPO / "fairseq_plugin")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.isfile(prepare_offline.DING_PATH) and "LSKD_DING_PATH" not in os.environ,
                       reason="Ding dictionary not installed (apt-get install trans-de-en)"),
]


def _arch(dim: int) -> List[str]:
    return ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
            "--encoder-embed-dim", str(dim), "--decoder-embed-dim", str(dim),
            "--encoder-ffn-embed-dim", str(2 * dim), "--decoder-ffn-embed-dim", str(2 * dim),
            "--encoder-attention-heads", "2", "--decoder-attention-heads", "2", "--share-all-embeddings"]


TEACHER_ARCH, STUDENT_ARCH = _arch(64), _arch(48)  # different sizes: parameter counts can't coincide
COMMON = ["--cpu", "--optimizer", "adam", "--adam-betas", "(0.9,0.98)", "--lr", "5e-3",
          "--lr-scheduler", "inverse_sqrt", "--warmup-updates", "40", "--dropout", "0.1",
          "--max-tokens", "1024", "--seed", "1", "--log-format", "json", "--num-workers", "0",
          "--no-epoch-checkpoints",
          # no background batch-prefetch thread: with a few updates fairseq can exit while that
          # daemon thread is inside torch, which aborts the process ("terminate called ...")
          "--data-buffer-size", "0"]
TEACHER_UPDATES, STUDENT_UPDATES = 300, 200


def _env(extra: Dict[str, str] = None) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "LSKD_FAIRSEQ_AUTOLOAD"}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"  # tiny models: threads only add contention on 2 cores
    env.update(extra or {})
    return env


def _cli(module: str, args: List[str]) -> List[str]:
    return [sys.executable, "-m", module] + [str(a) for a in args]


def run(module: str, args: List[str], check: bool = True, env: Dict[str, str] = None, timeout=900):
    proc = subprocess.run(_cli(module, args), cwd=REPO, env=env or _env(), capture_output=True,
                          text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def run_parallel(jobs: List[List[str]], env: Dict[str, str] = None, timeout=900):
    """Start several CLI runs at once (2 cores) and wait for all; returns CompletedProcess-likes."""
    procs = [subprocess.Popen(_cli(m, a), cwd=REPO, env=env or _env(), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for m, a in jobs]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    return results


def json_logs(text: str, tag: str) -> List[dict]:
    """fairseq's ``--log-format json`` records of one kind (train_inner, valid, train)."""
    marker = f"| {tag} | "
    return [json.loads(line.split(marker, 1)[1]) for line in text.splitlines() if marker in line]


# ---------------------------------------------------------------- shared fixtures ---------------
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ende")
    prepare_offline.prepare("en-de", str(out), max_pairs=2400, bpe_size=600, valid_size=100,
                            test_size=100)
    return out


@pytest.fixture(scope="module")
def teacher(corpus, tmp_path_factory) -> Path:
    """An LS (alpha = 0.1) teacher trained with fairseq's own criterion."""
    save = tmp_path_factory.mktemp("teacher")
    run("fairseq_cli.train", [corpus / "bin"] + TEACHER_ARCH + COMMON + [
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1",
        "--max-update", TEACHER_UPDATES, "--save-dir", save, "--log-interval", "100",
        "--disable-validation"])
    return save / "checkpoint_last.pt"


def _cfg(data: Path, extra: List[str]):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data)] + STUDENT_ARCH + ["--cpu", "--max-tokens", "1024"] + extra)
    return convert_namespace_to_omegaconf(args)


@pytest.fixture(scope="module")
def inproc(corpus):
    """Task, a student model (eval mode: no dropout, so two forwards agree) and a valid batch."""
    cfg = _cfg(corpus / "bin", ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"])
    task = tasks.setup_task(cfg.task)
    task.load_dataset("valid")
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    model.eval()
    batch = next(task.get_batch_iterator(task.dataset("valid"), max_tokens=1024).next_epoch_itr(shuffle=False))
    return {"task": task, "model": model, "sample": batch, "cfg": cfg}


def _criterion(inproc, corpus, extra: List[str]):
    return inproc["task"].build_criterion(_cfg(corpus / "bin", ["--criterion", "ls_kd"] + extra).criterion)


# ---------------------------------------------------------------- the workflow ------------------
def test_kd_student_trains_decodes_and_keeps_teacher_out_of_checkpoint(corpus, teacher, tmp_path):
    save = tmp_path / "student"
    proc = run("fairseq_cli.train", [corpus / "bin", "--user-dir", PLUGIN] + STUDENT_ARCH + COMMON + [
        "--criterion", "ls_kd", "--teacher-path", teacher, "--kd-temperature", "2",
        "--max-update", STUDENT_UPDATES, "--save-dir", save, "--log-interval", "25",
        "--disable-validation"])
    inner = json_logs(proc.stdout + proc.stderr, "train_inner")
    assert inner and all("kd_loss" in rec and "ce_loss" in rec for rec in inner)
    assert float(inner[-1]["kd_loss"]) < float(inner[0]["kd_loss"])  # the student learns from the teacher
    assert float(inner[-1]["loss"]) == float(inner[-1]["kd_loss"])  # beta = 1: loss is the KD term

    ckpt = save / "checkpoint_last.pt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)  # allow-list registered above
    teacher_state = torch.load(teacher, map_location="cpu", weights_only=True)
    student_cfg = _cfg(corpus / "bin", [])
    fresh = tasks.setup_task(student_cfg.task).build_model(student_cfg.model).state_dict()
    assert set(state["model"]) == set(fresh)
    assert not any("teacher" in key for key in state["model"])
    assert state.get("criterion") in (None, {})
    count = sum(t.numel() for t in state["model"].values())
    assert count == sum(t.numel() for t in fresh.values())
    assert count < sum(t.numel() for t in teacher_state["model"].values())  # 48- vs 64-dim model
    assert state["cfg"]["criterion"]["_name"] == "ls_kd"

    # fairseq-generate on the student; the plugin (via --user-dir) supplies the weights_only
    # allow-list that torch >= 2.6 needs for any fairseq checkpoint.
    gen = run("fairseq_cli.generate", [corpus / "bin", "--user-dir", PLUGIN, "--path", ckpt, "--cpu",
                                       "--beam", "5", "--batch-size", "64", "--remove-bpe", "--gen-subset", "test",
                                       # fairseq drops a last batch smaller than this multiple (default 8)
                                       "--required-batch-size-multiple", "1", "--data-buffer-size", "0"])
    lines = gen.stdout.splitlines()
    hyps = [line for line in lines if line.startswith("H-")]
    assert len(hyps) == 100 and all(line.split("\t")[2].strip() for line in hyps)
    refs = (corpus / "raw" / "test.de").read_text(encoding="utf-8").splitlines(keepends=True)
    result = bleu.score(lines, "de", references=refs, lowercase=True)
    assert result["sentences"] == 100 and result["bleu_detok"] > 0.0
    out = subprocess.run([sys.executable, "-m", "fairseq_plugin.bleu", "-", "--lang", "de", "--json"],
                         input=gen.stdout, capture_output=True, text=True, cwd=REPO, env=_env())
    assert out.returncode == 0 and json.loads(out.stdout)["bleu_tok"] == result["bleu_tok"]


def test_beta0_logs_equal_label_smoothed_cross_entropy(corpus, teacher, tmp_path):
    """--kd-beta 0 --label-smoothing 0.1 == fairseq's label_smoothed_cross_entropy 0.1 (logged values)."""
    # --no-save still makes fairseq create its --save-dir: keep it out of the repository
    base = [corpus / "bin"] + STUDENT_ARCH + COMMON + ["--max-update", "6", "--log-interval", "1", "--no-save",
                                                       "--save-dir", tmp_path / "unused"]
    ours, theirs = run_parallel([
        ("fairseq_cli.train", base + ["--user-dir", PLUGIN, "--criterion", "ls_kd", "--kd-beta", "0",
                                      "--label-smoothing", "0.1", "--teacher-path", teacher]),
        ("fairseq_cli.train", base + ["--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1"]),
    ])
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert theirs.returncode == 0, theirs.stderr[-3000:]
    for tag, keys in (("train_inner", ("loss", "nll_loss", "ppl", "gnorm", "wpb", "bsz")),
                      ("valid", ("valid_loss", "valid_nll_loss", "valid_ppl"))):
        a, b = json_logs(ours.stdout + ours.stderr, tag), json_logs(theirs.stdout + theirs.stderr, tag)
        assert len(a) == len(b) and a, tag
        for rec_a, rec_b in zip(a, b):
            for key in keys:
                assert float(rec_a[key]) == pytest.approx(float(rec_b[key]), rel=1e-6, abs=1e-6), (tag, key)
    assert "kd_loss" in json_logs(ours.stdout + ours.stderr, "train_inner")[0]


def test_beta0_forward_and_gradient_equal_fairseq(inproc, corpus, teacher):
    model, sample, task = inproc["model"], inproc["sample"], inproc["task"]
    reference = task.build_criterion(inproc["cfg"].criterion)
    for extra in (["--kd-beta", "0", "--label-smoothing", "0.1"],
                  ["--kd-beta", "0", "--label-smoothing", "0.1", "--teacher-path", str(teacher)]):
        ours = _criterion(inproc, corpus, extra)
        results = []
        for criterion in (reference, ours):
            model.zero_grad()
            loss, size, log = criterion(model, sample)
            loss.backward()
            grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
            results.append((loss.detach(), size, log, grads))
        (l_ref, s_ref, log_ref, g_ref), (l_our, s_our, log_our, g_our) = results
        assert s_ref == s_our
        assert torch.allclose(l_ref, l_our, rtol=1e-6, atol=0)
        assert torch.equal(log_ref["nll_loss"], log_our["nll_loss"])
        # summation order differs (per-token weighting vs fairseq's weighting of sums): float noise only
        torch.testing.assert_close(g_our, g_ref, rtol=1e-4, atol=1e-6 * float(g_ref.abs().max()))
    model.zero_grad()


def test_kd_part_equals_lskd_core_kd_loss(inproc, corpus, teacher):
    model, sample = inproc["model"], inproc["sample"]
    mask = sample["target"].ne(inproc["task"].target_dictionary.pad())
    with torch.no_grad():
        student = model(**sample["net_input"])[0]
        criterion = _criterion(inproc, corpus, ["--teacher-path", str(teacher), "--kd-temperature", "3"])
        loss, _, log = criterion(model, sample)
        teacher_model = get_teacher([str(teacher)], inproc["task"]).models[0]
        t_logits = teacher_model(**sample["net_input"])[0]
        expected = kd_loss(student, t_logits, 3.0, mask=mask, reduction="sum")
        assert torch.allclose(loss, expected, rtol=1e-6)
        assert torch.allclose(log["kd_loss"], expected, rtol=1e-6)
        mixed = _criterion(inproc, corpus, ["--teacher-path", str(teacher), "--kd-temperature", "3",
                                            "--kd-beta", "0.25", "--label-smoothing", "0.1"])
        loss_mixed, _, log_mixed = mixed(model, sample)
        ce = ls_cross_entropy(student, sample["target"], 0.1, mask=mask, reduction="sum", exclude_true_class=True)
        assert torch.allclose(loss_mixed, 0.75 * ce + 0.25 * expected, rtol=1e-6)
        assert torch.allclose(log_mixed["ce_loss"], ce, rtol=1e-6)


def test_topk_with_vocab_size_equals_full_and_ensemble_of_copies_equals_single(inproc, corpus, teacher):
    model, sample = inproc["model"], inproc["sample"]
    vocab = len(inproc["task"].target_dictionary)
    args = ["--teacher-path", str(teacher), "--kd-temperature", "2"]
    with torch.no_grad():
        full = _criterion(inproc, corpus, args)(model, sample)[0]
        all_k = _criterion(inproc, corpus, args + ["--kd-topk", str(vocab)])(model, sample)[0]
        more_k = _criterion(inproc, corpus, args + ["--kd-topk", str(vocab + 50)])(model, sample)[0]
        few_k = _criterion(inproc, corpus, args + ["--kd-topk", "4"])(model, sample)[0]
        pair = _criterion(inproc, corpus, ["--teacher-path", f"{teacher}:{teacher}", "--kd-temperature", "2"])
        ensemble = pair(model, sample)[0]
    assert torch.allclose(all_k, full, rtol=1e-5)
    assert torch.allclose(more_k, full, rtol=1e-5)
    assert torch.isfinite(few_k) and not torch.allclose(few_k, full, rtol=1e-3)
    assert torch.allclose(ensemble, full, rtol=1e-5)


def test_teacher_is_frozen_outside_the_module_tree_and_keeps_rng(inproc, corpus, teacher):
    clear_teacher_cache()
    model, sample = inproc["model"], inproc["sample"]
    criterion = _criterion(inproc, corpus, ["--teacher-path", str(teacher)])
    rng = torch.get_rng_state()
    with torch.no_grad():
        criterion(model, sample)
    assert torch.equal(rng, torch.get_rng_state())  # lazy teacher build did not consume the RNG
    assert list(criterion.parameters()) == [] and len(criterion.state_dict()) == 0
    assert list(criterion.children()) == []
    (ensemble,) = _TEACHERS.values()
    teacher_model = ensemble.models[0]
    assert not teacher_model.training and not any(p.requires_grad for p in teacher_model.parameters())
    criterion.train()  # what the trainer does every epoch
    assert not teacher_model.training
    # bf16 student: the teacher follows the student's dtype
    student_bf16 = copy.deepcopy(model).to(torch.bfloat16)
    with torch.no_grad():
        loss, _, _ = criterion(student_bf16, sample)
    assert torch.isfinite(loss) and next(teacher_model.parameters()).dtype == torch.bfloat16
    ensemble.to(torch.device("cpu"), torch.float32)


# ---------------------------------------------------------------- bad inputs --------------------
def test_dictionary_mismatch_is_reported(inproc, corpus, tmp_path):
    other = tmp_path / "other"
    prepare_offline.prepare("en-de", str(other), max_pairs=500, bpe_size=150, valid_size=50, test_size=50)
    run("fairseq_cli.train", [other / "bin"] + STUDENT_ARCH + COMMON + [
        "--criterion", "label_smoothed_cross_entropy", "--max-update", "1", "--save-dir", tmp_path / "t",
        "--disable-validation"])
    wrong = tmp_path / "t" / "checkpoint_last.pt"
    criterion = _criterion(inproc, corpus, ["--teacher-path", str(wrong)])
    n_student = len(inproc["task"].source_dictionary)
    n_teacher = len(tasks.setup_task(_cfg(other / "bin", []).task).source_dictionary)
    with pytest.raises(ValueError) as info:
        criterion(inproc["model"], inproc["sample"])
    message = str(info.value)
    assert f"({n_teacher} symbols)" in message and f"({n_student} symbols)" in message
    assert "first difference at index" in message and str(wrong) in message

    # Teacher whose data directory is gone: the embedding sizes still reveal the mismatch.
    state = torch.load(wrong, map_location="cpu", weights_only=True)
    state["cfg"]["task"]["data"] = str(tmp_path / "moved-away")
    moved = tmp_path / "moved.pt"
    torch.save(state, moved)
    with pytest.raises(ValueError, match=f"embedding has {n_teacher} rows .* {n_student} symbols"):
        _criterion(inproc, corpus, ["--teacher-path", str(moved)])(inproc["model"], inproc["sample"])


def test_moved_teacher_needs_its_dictionaries_beside_it(inproc, corpus, teacher, tmp_path):
    """A teacher whose data directory is gone: equal-size vocabularies are compared by symbol."""
    import shutil

    state = torch.load(teacher, map_location="cpu", weights_only=True)
    state["cfg"]["task"]["data"] = str(tmp_path / "moved-away")
    moved_dir = tmp_path / "moved"
    moved_dir.mkdir()
    moved = moved_dir / "teacher.pt"
    torch.save(state, moved)
    forward = lambda: _criterion(inproc, corpus, ["--teacher-path", str(moved)])(inproc["model"], inproc["sample"])
    with pytest.raises(ValueError, match="cannot be compared .* dict.en.txt and dict.de.txt"):
        forward()

    bin_dir = corpus / "bin"
    for lang in ("en", "de"):
        lines = (bin_dir / f"dict.{lang}.txt").read_text(encoding="utf-8").splitlines(keepends=True)
        lines[5], lines[6] = lines[6], lines[5]  # same size, different vocabulary order
        (moved_dir / f"dict.{lang}.txt").write_text("".join(lines), encoding="utf-8")
    with pytest.raises(ValueError, match="first difference at index"):
        forward()

    for lang in ("en", "de"):
        shutil.copy(bin_dir / f"dict.{lang}.txt", moved_dir / f"dict.{lang}.txt")
    loss, _, logging_output = forward()
    assert torch.isfinite(loss) and logging_output["kd_loss"] > 0


def test_corrupt_and_unsafe_teacher_files(inproc, corpus, teacher, tmp_path):
    import fractions

    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(teacher.read_bytes()[:5000])
    with pytest.raises(CheckpointLoadError, match="corrupt"):
        _criterion(inproc, corpus, ["--teacher-path", str(corrupt)])(inproc["model"], inproc["sample"])
    state = torch.load(teacher, map_location="cpu", weights_only=True)
    state["extra_state"]["note"] = fractions.Fraction(1, 3)
    odd = tmp_path / "odd.pt"
    torch.save(state, odd)
    with pytest.raises(CheckpointLoadError, match="fractions.Fraction.*--teacher-unsafe-load"):
        _criterion(inproc, corpus, ["--teacher-path", str(odd)])(inproc["model"], inproc["sample"])
    opted_in = _criterion(inproc, corpus, ["--teacher-path", str(odd), "--teacher-unsafe-load"])
    with torch.no_grad():
        assert torch.isfinite(opted_in(inproc["model"], inproc["sample"])[0])


def test_cli_reports_missing_teacher_and_bad_temperature(corpus, teacher, tmp_path):
    base = [corpus / "bin", "--user-dir", PLUGIN] + STUDENT_ARCH + COMMON + [
        "--criterion", "ls_kd", "--max-update", "1", "--no-save",
        # a failing training step makes fairseq write crash.pt into the save dir
        "--save-dir", tmp_path / "crash"]
    missing, cold = run_parallel([
        ("fairseq_cli.train", base + ["--teacher-path", tmp_path / "absent.pt"]),
        ("fairseq_cli.train", base + ["--teacher-path", teacher, "--kd-temperature", "0"]),
    ])
    assert missing.returncode != 0 and "teacher checkpoint not found" in missing.stderr
    assert "absent.pt" in missing.stderr
    assert cold.returncode != 0
    assert "kd_temperature must be a positive finite number, got 0.0" in cold.stderr


# ---------------------------------------------------------------- distributed / autoload --------
def test_two_cpu_workers(corpus, teacher, tmp_path):
    """fairseq's own spawn path needs GPUs (it starts min(#GPUs, world size) workers); on CPU the
    workers are started explicitly with a file rendezvous (no port to pick and release: nothing can
    take it between the pick and the use), gloo and legacy_ddp."""
    base = [corpus / "bin", "--user-dir", PLUGIN] + STUDENT_ARCH + COMMON + [
        "--criterion", "ls_kd", "--teacher-path", teacher, "--kd-temperature", "2", "--max-update", "3",
        "--log-interval", "1", "--save-dir", tmp_path / "dist", "--disable-validation",
        "--distributed-world-size", "2", "--distributed-init-method", f"file://{tmp_path / 'rendezvous-1'}",
        "--distributed-no-spawn", "--distributed-backend", "gloo", "--ddp-backend", "legacy_ddp"]
    rank0, rank1 = run_parallel([("fairseq_cli.train", base + ["--distributed-rank", str(r)]) for r in (0, 1)])
    assert rank0.returncode == 0, rank0.stderr[-3000:]
    assert rank1.returncode == 0, rank1.stderr[-3000:]
    inner = json_logs(rank0.stdout + rank0.stderr, "train_inner")
    assert len(inner) == 3 and all("kd_loss" in rec for rec in inner)
    # tokens per batch are summed over both workers: more than one worker's --max-tokens allows
    assert max(float(rec["wpb"]) for rec in inner) > 1024
    state = torch.load(tmp_path / "dist" / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert not any("teacher" in key for key in state["model"])
    # Resume: rank 0 reads checkpoint_last.pt and broadcasts it; rank 1 unpickles the broadcast
    # with torch.load (weights_only on torch >= 2.6), which the plugin's allow-list must cover.
    resume = [a if not str(a).startswith("file://") else f"file://{tmp_path / 'rendezvous-2'}" for a in base]
    resume[resume.index("--max-update") + 1] = "5"
    rank0, rank1 = run_parallel([("fairseq_cli.train", resume + ["--distributed-rank", str(r)]) for r in (0, 1)])
    assert rank0.returncode == 0, rank0.stderr[-3000:]
    assert rank1.returncode == 0, rank1.stderr[-3000:]
    assert [int(rec["num_updates"]) for rec in json_logs(rank0.stdout + rank0.stderr, "train_inner")] == [4, 5]


def test_autoload_makes_plain_fairseq_train_and_generate_work(corpus, teacher, tmp_path):
    site_dir, boot = tmp_path / "site", tmp_path / "boot"
    site_dir.mkdir()
    boot.mkdir()
    autoload.install_pth(str(site_dir))
    # Every interpreter processes the site dir at start-up, as it would the real site-packages.
    (boot / "sitecustomize.py").write_text(f"import site\nsite.addsitedir({str(site_dir)!r})\n")
    env = _env({"PYTHONPATH": os.pathsep.join([str(boot), str(REPO)])})
    save = tmp_path / "s"
    proc = run("fairseq_cli.train", [corpus / "bin"] + STUDENT_ARCH + COMMON + [
        "--criterion", "ls_kd", "--teacher-path", teacher, "--kd-temperature", "2", "--max-update", "2",
        "--log-interval", "1", "--save-dir", save, "--disable-validation"], env=env)
    assert "kd_loss" in json_logs(proc.stdout + proc.stderr, "train_inner")[0]
    gen = run("fairseq_cli.generate", [corpus / "bin", "--path", save / "checkpoint_last.pt", "--cpu",
                                       "--beam", "2", "--batch-size", "64", "--max-len-b", "5",
                                       "--required-batch-size-multiple", "1", "--data-buffer-size", "0"], env=env)
    assert sum(line.startswith("H-") for line in gen.stdout.splitlines()) == 100
