"""The advisor's CLI on bad input (one line, exit 2), its ranking rule, its statistics, and (slow) a
tiny real grid that resumes after a kill without repeating finished work."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("optuna")

from lskd_core.advise import main  # noqa: E402
from lskd_core.advise.allocation import allocate  # noqa: E402
from lskd_core.advise.report import summarize  # noqa: E402
from lskd_core.advise.signals import pooled_seed_std, rank_cells, reference_sets  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ")
    return err[0]


def test_one_alpha_and_one_temperature_is_one_line(tmp_path, capsys):
    rc = main(["--alphas", "0.1", "--temperatures", "2", "--out", str(tmp_path / "s")])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "nothing to choose" in line and "--temperatures" in line
    assert not (tmp_path / "s").exists()  # nothing made


def test_teachers_with_different_class_counts_is_one_line(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save({"num_classes": 10, "model": {"fc.weight": torch.zeros(10, 4)}}, a)
    torch.save({"model": {"conv.weight": torch.zeros(3, 3, 1, 1), "fc.weight": torch.zeros(5, 4)}}, b)
    rc = main(["--alphas", "0", "0.1", "--temperatures", "1", "2", "--teacher", f"0={a}", "--teacher", f"0.1={b}",
               "--out", str(tmp_path / "s")])
    assert rc == 2
    line = _one_error_line(capsys)
    assert "different class counts" in line and "has 10" in line and "has 5" in line
    assert not (tmp_path / "s" / "runs").exists()  # nothing installed


@pytest.mark.parametrize("argv, words", [
    (["--budget", "0"], "--budget"),
    (["--budget", "1.5"], "--budget"),
    (["--reduction-factor", "1"], "--reduction-factor"),
    (["--min-epochs", "zero"], "--min-epochs"),
    (["--teacher", "nonsense"], "ALPHA=CHECKPOINT"),
    (["--teacher", "0.5=x.pth"], "not among the alphas"),
    (["--target-probability", "0"], "--target-probability"),
    (["--target-probability", "1.2"], "--target-probability"),
    (["--tie-seeds", "0"], "--tie-seeds"),
])
def test_other_bad_input_is_one_line(tmp_path, capsys, argv, words):
    assert main(argv + ["--out", str(tmp_path / "s")]) == 2
    assert words in _one_error_line(capsys)


# ------------------------------------------------------------------------------------------------
# ranking: signals break ties within the noise, never clear differences
# ------------------------------------------------------------------------------------------------
def _rec(alpha, t, level, value, share=None, ent=None):
    return {"alpha": alpha, "temperature": t, "level": level, "value": value, "diffusion_share": share,
            "teacher_entropy": ent}


def test_rank_cells_tie_break_within_noise_only():
    recs = [_rec(0, 1, 1, 80.0, share=0.5, ent=0.4), _rec(0, 2, 1, 79.5, share=0.0, ent=0.9),
            _rec(0, 4, 1, 78.0, share=0.0, ent=0.1), _rec(0.1, 1, 0, 90.0, share=0.0, ent=0.1)]
    ranked = rank_cells(recs, noise=1.0)
    order = [(r["alpha"], r["temperature"]) for r in ranked]
    # level first (successive halving survived longer), then: 80.0 and 79.5 tie (< 1.0 apart) and
    # the cell without diffusion goes first; 78.0 is 2 points below the leader: never moved up
    assert order == [(0, 2), (0, 1), (0, 4), (0.1, 1)]
    assert ranked[0]["tie_group"] == ranked[1]["tie_group"] != ranked[2]["tie_group"]
    # entropy decides between equal shares
    tied = rank_cells([_rec(0, 1, 0, 70.0, 0.0, 2.0), _rec(0, 2, 0, 69.9, 0.0, 1.0)], noise=0.5)
    assert [r["temperature"] for r in tied] == [2, 1]
    # without a noise estimate (no cell with two seeds) accuracy alone orders the cells
    assert [(r["alpha"], r["temperature"]) for r in rank_cells(recs, noise=None)] == \
        [(0, 1), (0, 2), (0, 4), (0.1, 1)]


def test_rank_cells_never_reorders_a_clear_difference():
    rng = np.random.default_rng(0)
    for _ in range(200):
        recs = [_rec(0, t, 0, float(rng.normal(75, 2)), float(rng.random()), float(rng.random()))
                for t in range(1, 7)]
        noise = float(rng.uniform(0.1, 3))
        ranked = rank_cells(recs, noise)
        for i, hi in enumerate(ranked):
            for lo in ranked[i + 1:]:
                assert lo["value"] - hi["value"] < noise  # nobody ranks above a cell better by >= noise


def test_pooled_seed_std_by_hand():
    # within-cell sums of squares: (1 + 1) + (0 + 4 + 4 ... ) -> [1, 3]: ss 2, df 1; [2, 4, 6]: ss 8, df 2
    assert pooled_seed_std({"a": [1.0, 3.0], "b": [2.0, 4.0, 6.0], "c": [9.0]}) == pytest.approx(np.sqrt(10 / 3))
    assert pooled_seed_std({"a": [1.0], "b": [2.0]}) is None


def test_reference_sets_nearest_and_farthest_classes():
    # class centroids on a line at 0, 1, 2, 10, 20 (2-D features, 3 samples each around the centroid)
    pos = [0.0, 1.0, 2.0, 10.0, 20.0]
    feats = np.array([[p + d, 0.0] for p in pos for d in (-0.1, 0.0, 0.1)])
    labels = np.repeat(np.arange(5), 3)
    sets = reference_sets(feats, labels, 5, [0, 4], n_similar=1, n_dissimilar=2)
    assert sets[0] == ([1], [3, 4])
    assert sets[4] == ([3], [1, 0])


def test_summary_confidence_and_compute_on_synthetic_cells():
    """Three seeds for everybody (budget 1, eta 2 on 2 cells of very different means): the better
    cell is clearly the best (paired t over 3 seeds), and the compute is the grid's."""
    means = {(0.0, 1.0): 90.0, (0.0, 4.0): 60.0}
    rng = np.random.default_rng(1)

    def trainer(cell, seed, epochs):
        return [means[cell] + float(rng.normal(0, 0.5)) for _ in range(epochs)]

    # order seed whose first arrival is the worse cell: both cells climb every level
    for seed in range(20):
        events = []
        alloc = allocate(list(means), trainer, epochs=1, seeds=[0, 1, 2], eta=2, budget=1.0, seed=seed,
                         log=events.append)
        if tuple(events[0]["arrival_order"][0]) == (0.0, 4.0):
            break
    s = summarize(alloc, {}, epochs=1, train_samples=100, cpu={})
    assert (s["recommendation"]["alpha"], s["recommendation"]["temperature"]) == (0.0, 1.0)
    assert s["confidence"]["level"] == "clear"
    assert s["confidence"]["indistinguishable"] == [[0.0, 1.0]]
    assert s["compute"]["epoch_runs"] == 6 == s["compute"]["grid_epoch_runs"]
    assert s["compute"]["sample_epochs"] == 600
    # the pick's interval is the textbook t interval over its 3 seeds
    vals = [c[0] for _, c in sorted(next(r for r in alloc.cells if r.cell == (0.0, 1.0)).curves.items())]
    from scipy import stats
    half = stats.t.ppf(0.975, 2) * np.std(vals, ddof=1) / np.sqrt(3)
    assert s["confidence"]["pick_interval"]["ci"] == pytest.approx([np.mean(vals) - half, np.mean(vals) + half])


# ------------------------------------------------------------------------------------------------
# a tiny real grid: kill, resume, nothing finished is repeated
# ------------------------------------------------------------------------------------------------
def _segments(study: Path):
    path = study / "advise" / "segments.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _curve_len(rdir: Path) -> int:
    try:
        lines = (rdir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return 0
    return len({json.loads(x)["epoch"] for x in lines if x.strip() and '"epoch"' in x and '"val_acc1"' in x})


@pytest.mark.slow
def test_tiny_real_grid_resumes_after_kill(tmp_path):
    if not Path(os.environ.get("LSKD_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")).is_dir():
        pytest.skip("Fashion-MNIST (Debian package dataset-fashion-mnist) is not installed")
    study = tmp_path / "study"
    cfg = tmp_path / "tiny.toml"
    cfg.write_text('preset = "demo"\nname = "tiny"\nanalysis = false\ntrain_samples = 300\nval_samples = 100\n'
                   'teacher_model = "lskd_cnn_s"\nteacher_epochs = 1\nstudent_epochs = 2\nseeds = 2\n'
                   'alphas = [0.1]\ntemperatures = [1, 4]\nstudent_batch_size = 100\n'
                   'teacher_batch_size = 100\n')
    argv = [sys.executable, "-m", "lskd_core.advise", "--config", str(cfg), "--out", str(study), "--budget", "1",
            "--reduction-factor", "2", "--no-signals"]
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 100
    while len(_segments(study)) < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "the advisor ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the advisor and its trainer, mid-way
    proc.wait()
    teachers = {p.name: (p / "result.json").read_bytes() for p in (study / "runs").iterdir()
                if (p / "result.json").exists()}
    assert {"teacher_a0.1", "cache_teacher_a0.1"} <= set(teachers)  # one teacher, only T to choose
    done_at_kill = {p.name: _curve_len(p) for p in (study / "advise" / "runs").iterdir()}
    first = len(_segments(study))

    out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=150)
    assert out.returncode == 0, out.stderr[-2000:]
    # teachers and caches were reused, not rebuilt
    assert {k: (study / "runs" / k / "result.json").read_bytes() for k in teachers} == teachers
    # no finished epoch was trained again: every new segment starts at or after what was on disk
    for seg in _segments(study)[first:]:
        assert seg["from_epoch"] >= done_at_kill.get(seg["run_id"], 0), seg
    advice = json.loads((study / "advise" / "advice.json").read_text())
    # the account covers both invocations exactly: the epochs on disk of every advisor run
    on_disk = sum(_curve_len(p) for p in (study / "advise" / "runs").iterdir() if p.is_dir())
    assert advice["compute"]["epoch_runs"] == on_disk
    assert advice["compute"]["grid_epoch_runs"] == 2 * 2 * 2
    for name in ("advice.md", "trajectories.png", "eta_over_epochs.png", "allocation.jsonl"):
        assert (study / "advise" / name).exists()


def test_single_finalist_is_never_called_clear():
    means = {(0.0, 1.0): 90.0, (0.0, 4.0): 60.0}

    def trainer(cell, seed, epochs):
        return [means[cell]] * epochs

    for seed in range(20):  # the better cell arriving first prunes the other at level 0
        events = []
        alloc = allocate(list(means), trainer, epochs=2, seeds=[0, 1], eta=2, budget=1.0, seed=seed,
                         log=events.append)
        if tuple(events[0]["arrival_order"][0]) == (0.0, 1.0):
            break
    s = summarize(alloc, {}, epochs=2, train_samples=None, cpu={})
    assert s["confidence"]["finalists"] == [[0.0, 1.0]]
    assert s["confidence"]["level"] == "not shown"
    from lskd_core.advise.report import markdown
    assert "only cell trained to the full schedule" in markdown(s)


def test_clear_only_when_no_other_finalist_could_be_the_best():
    """Pick with 3 seeds, far ahead of a rival with 3 seeds, but a third finalist with one seed: it
    can never be excluded, so the advice is not "clear" even though the pick beats the runner-up."""
    from lskd_core.advise.allocation import Allocation, CellRecord, Level

    def rec(cell, arrival, level, value, curves):
        return CellRecord(cell=cell, arrival=arrival, level=level, value=value, values=[value], stopped="budget",
                          curves=curves)

    cells = [rec((0.0, 1.0), 0, 2, 90.0, {0: [90.0], 1: [90.5], 2: [89.5]}),
             rec((0.0, 4.0), 1, 2, 60.0, {0: [60.0], 1: [60.4], 2: [59.7]}),
             rec((0.0, 9.0), 2, 0, 70.0, {0: [70.0]})]
    alloc = Allocation(cells=cells, levels=[Level(1, 1), Level(2, 1), Level(3, 1)], spent=7, grid=9, budget=1.0,
                       eta=3, seed=0)
    s = summarize(alloc, {}, epochs=1, train_samples=None, cpu={})
    conf = s["confidence"]
    assert conf["vs_runner_up"]["level"] == "clear"  # against the 3-seed rival
    assert [0.0, 9.0] in conf["indistinguishable"]  # the one-seed finalist cannot be excluded
    assert conf["level"] == "not shown"
    del cells[2]
    assert summarize(alloc, {}, epochs=1, train_samples=None, cpu={})["confidence"]["level"] == "clear"
