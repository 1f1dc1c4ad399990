"""The translation teacher cache (issue 10 item 3) and evaluation without the teacher (issue 9).

A synthetic parallel corpus (made-up words, a deterministic "translation" rule) is binarised with
fairseq-preprocess and a tiny teacher is trained for a few updates: everything here runs in
seconds. The live teacher is the oracle: a full fp32 cache must give the same per-batch ls_kd
losses (1e-6) and the same weights after a few fairseq-train updates (1e-5); a top-K cache must
equal ``--kd-topk K`` run live at a served T.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest
import torch

pytest.importorskip("fairseq")

from fairseq import options, tasks  # noqa: E402
from fairseq.dataclass.utils import convert_namespace_to_omegaconf  # noqa: E402

import fairseq_plugin  # noqa: E402,F401  (registers ls_kd)
from fairseq_plugin import teacher_cache  # noqa: E402
from fairseq_plugin.teacher import clear_teacher_cache  # noqa: E402
from lskd_core.teacher_cache import CacheMismatch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ARCH = ["--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
        "--encoder-embed-dim", "32", "--decoder-embed-dim", "32", "--encoder-ffn-embed-dim", "64",
        "--decoder-ffn-embed-dim", "64", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
        "--share-all-embeddings"]
COMMON = ["--cpu", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "400", "--seed", "3",
          "--num-workers", "0", "--data-buffer-size", "0", "--log-format", "json", "--no-epoch-checkpoints",
          "--disable-validation"]


def _env() -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("LSKD_FAIRSEQ_AUTOLOAD", "LSKD_TRACEBACK")}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(module: str, args: List, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-W", "ignore", "-m", module] + [str(a) for a in args], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc


def _write_corpus(raw: Path, seed: int = 0, pairs: int = 160) -> None:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(24)]
    for split, count in (("train", pairs), ("valid", 20)):
        src, tgt = [], []
        for _ in range(count):
            sentence = [rng.choice(words) for _ in range(rng.randint(2, 9))]
            src.append(" ".join(sentence))
            tgt.append(" ".join("x" + w[1:] for w in reversed(sentence)))
        (raw / f"{split}.en").write_text("\n".join(src) + "\n")
        (raw / f"{split}.de").write_text("\n".join(tgt) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cache_corpus")
    raw = root / "raw"
    raw.mkdir()
    _write_corpus(raw)
    _run("fairseq_cli.preprocess", ["--source-lang", "en", "--target-lang", "de", "--trainpref", raw / "train",
                                    "--validpref", raw / "valid", "--destdir", root / "bin",
                                    "--joined-dictionary", "--workers", "1"])
    return root / "bin"


def _train_teacher(data: Path, save: Path, seed: int) -> Path:
    _run("fairseq_cli.train", [data] + ARCH + COMMON + [
        "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", "0.1", "--max-update", "12",
        "--seed", str(seed), "--save-dir", save, "--no-save-optimizer-state"])
    return save / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def teacher(data, tmp_path_factory) -> Path:
    return _train_teacher(data, tmp_path_factory.mktemp("teacher"), seed=5)


@pytest.fixture(scope="module")
def setup(data):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(data)] + ARCH + ["--cpu", "--max-tokens", "400"])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    task.load_dataset("train")
    torch.manual_seed(0)
    model = task.build_model(cfg.model)
    model.eval()  # no dropout: two criteria see the same student outputs
    batches = list(task.get_batch_iterator(task.dataset("train"), max_tokens=400, seed=1)
                   .next_epoch_itr(shuffle=True))
    return {"task": task, "model": model, "batches": batches[:4], "data": data}


def _criterion(setup, extra: List[str]):
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(setup["data"])] + ARCH + ["--cpu", "--criterion", "ls_kd"] + extra)
    criterion = setup["task"].build_criterion(convert_namespace_to_omegaconf(args).criterion)
    criterion.train()  # training steps read the cache
    return criterion


@pytest.fixture(scope="module")
def full_cache(data, teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full") / "cache"
    summary = teacher_cache.build(str(data), str(teacher), str(out), device="cpu", rows_per_shard=100)
    assert summary["kind"] == "full" and summary["shards"] > 1  # rows straddle shard boundaries
    return out


@pytest.fixture(scope="module")
def topk_cache(data, teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("topk") / "cache"
    teacher_cache.build(str(data), str(teacher), str(out), topk=5, temperatures=(1.0, 2.0), device="cpu",
                        rows_per_shard=128)
    return out


def _losses(criterion, setup) -> List[torch.Tensor]:
    with torch.no_grad():
        return [criterion(setup["model"], batch)[0] for batch in setup["batches"]]


def test_full_cache_gives_the_live_teachers_losses(setup, teacher, full_cache):
    clear_teacher_cache()
    for temperature in ("1", "3"):
        args = ["--kd-temperature", temperature, "--label-smoothing", "0.1", "--kd-beta", "0.7"]
        live = _losses(_criterion(setup, args + ["--teacher-path", str(teacher)]), setup)
        cached = _criterion(setup, args + ["--teacher-cache", str(full_cache)])
        assert cached.missing_teachers == [] and not cached.teacher_paths
        for a, b in zip(live, _losses(cached, setup)):
            assert torch.allclose(a, b, rtol=1e-6, atol=0), (float(a), float(b))
    # with --teacher-path too, the teacher's sha256 must be the cached one (it is)
    both = _criterion(setup, ["--teacher-path", str(teacher), "--teacher-cache", str(full_cache)])
    assert torch.isfinite(_losses(both, setup)[0])


def test_topk_cache_equals_live_kd_topk_at_a_served_temperature(setup, teacher, topk_cache):
    args = ["--kd-temperature", "2", "--kd-topk", "5"]
    live = _losses(_criterion(setup, args + ["--teacher-path", str(teacher)]), setup)
    cached = _losses(_criterion(setup, args + ["--teacher-cache", str(topk_cache)]), setup)
    full = _losses(_criterion(setup, ["--kd-temperature", "2", "--teacher-path", str(teacher)]), setup)
    for a, b, f in zip(live, cached, full):
        assert torch.allclose(a, b, rtol=1e-6, atol=0), (float(a), float(b))
        assert not torch.allclose(a, f, rtol=1e-4)  # top-5 really truncates
    with pytest.raises(CacheMismatch, match=r"serves temperatures = \[1.0, 2.0\] but T = 3"):  # at start-up
        _criterion(setup, ["--kd-temperature", "3", "--kd-topk", "5", "--teacher-cache", str(topk_cache)])
    reader = teacher_cache.open_for_task(str(topk_cache), setup["task"], None, topk=5, temperature=2.0)
    with pytest.raises(CacheMismatch, match=r"serves temperatures = \[1.0, 2.0\] but T = 3"):  # and on reads
        reader.logits_for_sample(setup["batches"][0], 3.0, torch.device("cpu"))


def test_stale_caches_are_refused_naming_the_field(setup, data, teacher, full_cache, topk_cache, tmp_path):
    other_teacher = tmp_path / "other.pt"
    state = torch.load(teacher, map_location="cpu", weights_only=True)
    state["model"]["encoder.layers.0.fc1.bias"] += 1.0
    torch.save(state, other_teacher)
    with pytest.raises(CacheMismatch, match="'teacher_sha256'"):
        _losses(_criterion(setup, ["--teacher-path", str(other_teacher), "--teacher-cache", str(full_cache)]), setup)
    with pytest.raises(CacheMismatch, match="'topk' is 5 in the cache but null"):
        _losses(_criterion(setup, ["--kd-temperature", "2", "--teacher-cache", str(topk_cache)]), setup)
    with pytest.raises(CacheMismatch, match="'topk' is null in the cache but 3"):
        _losses(_criterion(setup, ["--kd-topk", "3", "--teacher-cache", str(full_cache)]), setup)
    # other dictionary: same binarised files, one more symbol in the target dictionary
    moved = tmp_path / "bin"
    shutil.copytree(data, moved)
    with open(moved / "dict.de.txt", "a", encoding="utf-8") as handle:
        handle.write("zzz 1\n")
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(
        options.get_training_parser(), [str(moved)] + ARCH + ["--cpu"]))
    other_task = tasks.setup_task(cfg.task)
    with pytest.raises(CacheMismatch, match="'tgt_dict_sha256'"):
        teacher_cache.open_for_task(str(full_cache), other_task, None, topk=0, temperature=1.0)
    # a damaged row-offsets file
    broken = tmp_path / "broken"
    shutil.copytree(full_cache, broken)
    offsets = np.load(broken / teacher_cache.OFFSETS_FILE)
    offsets[3] += 1
    np.save(broken / teacher_cache.OFFSETS_FILE, offsets)
    with pytest.raises(CacheMismatch, match="row_offsets"):
        teacher_cache.open_for_task(str(broken), setup["task"], None, topk=0, temperature=1.0)


def test_cache_refuses_batches_from_another_split(setup, teacher, full_cache, tmp_path):
    setup["task"].load_dataset("valid")
    batch = next(setup["task"].get_batch_iterator(setup["task"].dataset("valid"), max_tokens=400)
                 .next_epoch_itr(shuffle=False))
    reader = teacher_cache.open_for_task(str(full_cache), setup["task"], None, topk=0, temperature=1.0)
    with pytest.raises(CacheMismatch, match="not from the cached training set"):
        reader.logits_for_sample(batch, 1.0, torch.device("cpu"))
    # Evaluation (criterion.eval(), as in validation) never reads the cache: it runs the teacher the
    # cache was built from, so validation loss equals a live run's; without that teacher (moved, or
    # another file at its path), the KD term is left out.
    live = _criterion(setup, ["--teacher-path", str(teacher)])
    cached = _criterion(setup, ["--teacher-cache", str(full_cache)])
    for criterion in (live, cached):
        criterion.eval()
    with torch.no_grad():
        loss_live, _, _ = live(setup["model"], batch)
        loss_cached, _, log = cached(setup["model"], batch)
    assert "kd_loss" in log and torch.allclose(loss_cached, loss_live, rtol=1e-6)
    for recorded in (tmp_path / "gone.pt", tmp_path / "other.pt"):
        copy = tmp_path / f"cache_{recorded.stem}"
        shutil.copytree(full_cache, copy)
        (tmp_path / "other.pt").write_bytes(b"not the teacher")
        (copy / "build.json").write_text(json.dumps({"teacher_path": str(recorded)}))
        criterion = _criterion(setup, ["--teacher-cache", str(copy)])
        criterion.eval()
        with torch.no_grad():
            _, _, log = criterion(setup["model"], batch)
        assert "kd_loss" not in log and torch.isfinite(log["loss"])


def test_builder_cli_errors_are_one_line(data, teacher, tmp_path, capsys):
    cases = [
        (["--topk", "5"], "--topk needs --cache-temperatures"),
        (["--full", "--cache-temperatures", "2"], "--cache-temperatures applies to --topk"),
        (["--topk", "0", "--cache-temperatures", "1"], "--topk must be >= 1"),
        (["--topk", "100000", "--cache-temperatures", "1"], "use --full"),
    ]
    for extra, message in cases:
        code = teacher_cache.main(["build", str(data), "--teacher-path", str(teacher), "--out",
                                   str(tmp_path / "c"), "--device", "cpu"] + extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], err
    (tmp_path / "file").write_text("x")
    code = teacher_cache.main(["build", str(data), "--teacher-path", str(teacher), "--out",
                               str(tmp_path / "file" / "c"), "--full", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "not a directory" in err[-1] and "Traceback" not in "\n".join(err)
    code = teacher_cache.main(["build", str(tmp_path / "nodata"), "--teacher-path", str(teacher), "--out",
                               str(tmp_path / "c"), "--full"])
    assert code == 2 and "nodata not found" in capsys.readouterr().err


def test_weights_after_updates_from_cache_equal_live(setup, teacher, full_cache):
    """A few SGD updates with dropout on (same seed): the cached run reproduces the live run's
    weights, so a student cannot tell the cache from its teacher."""
    import copy

    initial = copy.deepcopy(setup["model"].state_dict())
    finals = []
    for extra in (["--teacher-path", str(teacher)], ["--teacher-cache", str(full_cache)]):
        criterion = _criterion(setup, ["--kd-temperature", "2", "--label-smoothing", "0.1", "--kd-beta", "0.5"] + extra)
        model = copy.deepcopy(setup["model"])
        model.load_state_dict(initial)
        model.train()
        # SGD: Adam would turn float noise in gradients that are zero in exact arithmetic (the
        # attention key bias) into lr-sized steps, in a live run against itself as well
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        torch.manual_seed(11)
        for batch in setup["batches"]:
            optimizer.zero_grad()
            loss, size, _ = criterion(model, batch)
            (loss / size).backward()
            optimizer.step()
        finals.append(model.state_dict())
    live, cached = finals
    assert any(not torch.equal(live[k], initial[k]) for k in live)
    for key in live:
        torch.testing.assert_close(cached[key], live[key], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_fairseq_train_from_cache_then_validate_without_the_teacher(data, teacher, full_cache, tmp_path):
    """fairseq-train reads --teacher-cache (its teacher's sha256 checked against --teacher-path);
    once the teacher file is gone, fairseq-validate on the student still works, while training
    without it stops with one line naming the file (not fairseq's traceback)."""
    moved_teacher = tmp_path / "teacher.pt"
    shutil.copy(teacher, moved_teacher)
    base = [data, "--user-dir", REPO / "fairseq_plugin"] + ARCH + COMMON + [
        "--criterion", "ls_kd", "--kd-temperature", "2", "--max-update", "2", "--log-interval", "1",
        "--teacher-path", moved_teacher]
    proc = _run("fairseq_cli.train", base + ["--teacher-cache", full_cache, "--save-dir", tmp_path / "s"])
    inner = [json.loads(line.split("| train_inner | ", 1)[1]) for line in (proc.stdout + proc.stderr).splitlines()
             if "| train_inner | " in line]
    assert len(inner) == 2 and all("kd_loss" in rec for rec in inner)
    moved_teacher.unlink()
    val, train = [subprocess.Popen([sys.executable, "-W", "ignore", "-m", module] + [str(a) for a in args],
                                   cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                  for module, args in (
                      ("fairseq_cli.validate", [data, "--user-dir", REPO / "fairseq_plugin", "--path",
                                                tmp_path / "s" / "checkpoint_last.pt", "--cpu", "--task",
                                                "translation", "--max-tokens", "400", "--data-buffer-size", "0"]),
                      # a failing training step makes fairseq write crash.pt into the save dir
                      ("fairseq_cli.train", base + ["--no-save", "--save-dir", tmp_path / "crash"]))]
    val_out = "".join(val.communicate(timeout=600))
    train_err = train.communicate(timeout=600)[1]
    assert val.returncode == 0, val_out[-3000:]
    assert "valid on 'valid' subset" in val_out and "nll_loss" in val_out
    assert train.returncode == 1 and "Traceback" not in train_err, train_err[-3000:]
    assert f"lskd: error: teacher checkpoint not found: {moved_teacher}" in train_err


def test_interrupted_build_resumes_to_identical_shards(data, teacher, full_cache, tmp_path):
    """A shard lost to a kill is rebuilt from the same samples in the same batches: byte-identical."""
    import hashlib

    def digests(root: Path) -> Dict[str, str]:
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*.npy"))}

    copy = tmp_path / "cache"
    shutil.copytree(full_cache, copy)
    shutil.rmtree(copy / "shard-00001")
    summary = teacher_cache.build(str(data), str(teacher), str(copy), device="cpu", rows_per_shard=100)
    assert summary["shards_complete"] == summary["shards"]
    assert digests(copy) == digests(full_cache)
    with pytest.raises(CacheMismatch, match="rows_per_shard"):  # other settings: not resumed over
        teacher_cache.build(str(data), str(teacher), str(copy), device="cpu", rows_per_shard=64)


# ------------------------------------------------------------------ sampled-K KD (issue 21 item 3) ---
@pytest.fixture(scope="module")
def sampled_cache(data, teacher, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sampled") / "cache"
    summary = teacher_cache.build(str(data), str(teacher), str(out), sample=6, temperatures=(1.0, 2.0),
                                  sample_seed=4, device="cpu", rows_per_shard=128)
    assert summary["kind"] == "sampled" and summary["shards"] > 1
    return out


def _live_teacher_logits(teacher, setup, batch):
    clear_teacher_cache()
    live = _criterion(setup, ["--teacher-path", str(teacher)])
    return live.teacher_kd_logits(setup["model"], batch)


def test_sampled_cache_holds_draws_from_the_teacher_at_each_temperature(setup, teacher, sampled_cache, data,
                                                                        tmp_path):
    reader = teacher_cache.open_for_task(str(sampled_cache), setup["task"], None, topk=6, temperature=2.0,
                                         mode="sample")
    batch = setup["batches"][0]
    mask = batch["target"].ne(setup["task"].target_dictionary.pad())
    z = _live_teacher_logits(teacher, setup, batch)
    for temperature in (1.0, 2.0):
        drawn = reader.samples_for_sample(batch, temperature, torch.device("cpu"))
        assert drawn.ids.shape == batch["target"].shape + (6,)
        expected = torch.log_softmax(z.double() / temperature, dim=-1).gather(-1, drawn.ids)
        assert torch.allclose(drawn.teacher_logp.double()[mask], expected[mask], atol=1e-5)
        assert bool((drawn.weights == 1).all())
    # the draws are a function of the seed: the same seed rebuilds byte-identical shards, another differs
    again = tmp_path / "again"
    teacher_cache.build(str(data), str(teacher), str(again), sample=6, temperatures=(1.0, 2.0), sample_seed=4,
                        device="cpu", rows_per_shard=128)
    for name in ("indices.npy", "logp.npy"):
        assert (again / "shard-00001" / name).read_bytes() == (sampled_cache / "shard-00001" / name).read_bytes()
    with pytest.raises(CacheMismatch, match="sample_seed"):  # resuming with another seed is refused
        teacher_cache.build(str(data), str(teacher), str(again), sample=6, temperatures=(1.0, 2.0),
                            sample_seed=5, device="cpu", rows_per_shard=128)


def test_sampled_student_is_unbiased_for_full_kd_and_validates_with_it(setup, teacher, sampled_cache):
    batch = setup["batches"][0]
    args = ["--kd-temperature", "2", "--teacher-path", str(teacher)]
    full = float(_losses(_criterion(setup, args), setup)[0])
    sampled = _criterion(setup, args + ["--kd-topk", "6", "--kd-topk-mode", "sample"])
    with torch.no_grad():
        draws = torch.tensor([float(sampled(setup["model"], batch)[0]) for _ in range(300)], dtype=torch.float64)
    se = float(draws.std() / draws.numel() ** 0.5)
    assert abs(float(draws.mean()) - full) < 4 * se, (float(draws.mean()), full, se)
    assert float(draws.std()) > 0  # fresh draws every step
    sampled.eval()  # validation: the exact full-vocabulary KD the estimator estimates
    with torch.no_grad():
        assert float(sampled(setup["model"], batch)[0]) == pytest.approx(full, rel=1e-6)
    cached = _criterion(setup, ["--kd-temperature", "2", "--kd-topk", "6", "--kd-topk-mode", "sample",
                                "--teacher-cache", str(sampled_cache)])
    first, second = _losses(cached, setup)[0], _losses(cached, setup)[0]
    assert torch.isfinite(first) and float(first) == float(second)  # cached draws are fixed


def test_sampled_and_topk_caches_are_not_interchangeable(setup, teacher, sampled_cache, topk_cache):
    with pytest.raises(CacheMismatch, match="topk_mode|sample_seed"):
        _losses(_criterion(setup, ["--kd-temperature", "2", "--kd-topk", "6", "--teacher-cache",
                                   str(sampled_cache)]), setup)
    with pytest.raises(CacheMismatch, match="topk_mode|sample_seed"):
        _losses(_criterion(setup, ["--kd-temperature", "2", "--kd-topk", "5", "--kd-topk-mode", "sample",
                                   "--teacher-cache", str(topk_cache)]), setup)
    from fairseq_plugin.errors import CriterionConfigError

    with pytest.raises(CriterionConfigError, match="needs --kd-topk K > 0"):
        _criterion(setup, ["--kd-topk-mode", "sample", "--teacher-path", str(teacher)])
