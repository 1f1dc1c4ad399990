"""Shared test set-up: the repository root and a child-process environment, skip markers for
optional offline data (Fashion-MNIST, WordNet), independent reference formulas (eta, Eq. 1 and
App. K; entropy; t intervals) and small helpers that several test files used to copy.

The references are written from the paper's text with plain numpy loops (or scipy), sharing no
code with lskd_core, so a wrong R, a flipped sign or a swapped set in the library fails the tests.
Import them with ``from conftest import ...`` (pytest puts tests/ on sys.path).
"""

import contextlib
import hashlib
import io
import json
import math
import os
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------------
def subprocess_env(*, threads: Optional[str] = "1", **extra: str) -> Dict[str, str]:
    """os.environ for a child process that imports this checkout: the repo first on PYTHONPATH,
    LSKD_DEBUG dropped (so one-line errors stay one line), OMP_NUM_THREADS = ``threads`` unless
    None. One intra-op thread by default: on a small machine shared with other jobs, OpenMP threads
    that spin-wait for a descheduled sibling make 2-thread runs many times slower, not faster."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LSKD_DEBUG", None)
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    env.update(extra)
    return env


# ------------------------------------------------------------------------------------------------
# skip markers for optional offline data
# ------------------------------------------------------------------------------------------------
def load_script(path: Path, name: str):
    """A script of the repository (bench/, scripts/) imported as module ``name``, for testing its
    functions without running it."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _wordnet_dir() -> str:
    from lskd_core.wordnet import DEFAULT_WORDNET_DIR  # light: no numpy/torch

    return os.environ.get("LSKD_WORDNET_DIR") or DEFAULT_WORDNET_DIR


WORDNET_DIR = _wordnet_dir()
HAVE_WORDNET = os.path.isfile(os.path.join(WORDNET_DIR, "data.noun"))
needs_wordnet = pytest.mark.skipif(
    not HAVE_WORDNET, reason=f"WordNet 3.0 data.noun not found in {WORDNET_DIR} "
    f"(install the Debian package wordnet-base or set LSKD_WORDNET_DIR)")

# Marker, not a skipif: where the data lives is the trainer's own rule (vision_plugin.datasets),
# which imports torch; it is looked up only when a marked test is about to run.
needs_fashion_mnist = pytest.mark.fashion_mnist


def fashion_mnist_dir() -> Path:
    """Where the trainer looks for Fashion-MNIST by default ($LSKD_FASHION_MNIST_DIR or the Debian path)."""
    from vision_plugin.datasets import fashion_mnist_dir as trainer_dir

    return trainer_dir(None)


def have_fashion_mnist() -> bool:
    root = fashion_mnist_dir()
    return (root / "train-images-idx3-ubyte.gz").is_file() or (root / "train-images-idx3-ubyte").is_file()


def require_fashion_mnist() -> None:
    """Skip the calling test (with the remedy) when Fashion-MNIST is not installed."""
    if not have_fashion_mnist():
        pytest.skip(f"Fashion-MNIST not installed at {fashion_mnist_dir()} (apt-get install dataset-fashion-mnist "
                    "or set LSKD_FASHION_MNIST_DIR)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fashion_mnist: needs the offline Fashion-MNIST (Debian dataset-fashion-mnist); "
                            "skipped with the remedy where it is missing")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("fashion_mnist") is not None:
        require_fashion_mnist()


# ------------------------------------------------------------------------------------------------
# reference formulas
# ------------------------------------------------------------------------------------------------
def _centroid(x: np.ndarray, labels: np.ndarray, c: int) -> np.ndarray:
    rows = [x[i].astype(np.float64) for i in range(len(labels)) if labels[i] == c]
    return sum(rows) / len(rows)


def eta_from_cluster_distances(dist_before: Sequence[float], dist_after: Sequence[float],
                               n_similar: int) -> Tuple[float, float]:
    """Eq. 1 in percent: d = dist / R with R summed over S1 and S2; eta = mean (d2 - d1) / d1."""
    r1, r2 = sum(dist_before), sum(dist_after)
    change = [(a / r2 - b / r1) / (b / r1) for b, a in zip(dist_before, dist_after)]
    s1, s2 = change[:n_similar], change[n_similar:]
    return 100.0 * sum(s1) / len(s1), 100.0 * sum(s2) / len(s2)


def eta_reference(fb: np.ndarray, lb: np.ndarray, fa: np.ndarray, la: np.ndarray, target: int,
                  s1: Sequence[int], s2: Sequence[int]) -> Tuple[float, float]:
    """Eq. 1 with squared centroid distances."""
    def dists(x, lab):
        ct = _centroid(x, lab, target)
        return [float(((ct - _centroid(x, lab, k)) ** 2).sum()) for k in list(s1) + list(s2)]
    return eta_from_cluster_distances(dists(fb, lb), dists(fa, la), len(s1))


def eta_pairwise_sq_reference(fb, lb, fa, la, target, s1, s2) -> Tuple[float, float]:
    """App. K's closed-form variant, by brute force: mean squared distance over all sample pairs."""
    def dists(x, lab):
        x = x.astype(np.float64)
        t = x[lab == target]
        return [float(np.mean([((a - b) ** 2).sum() for a in t for b in x[lab == k]]))
                for k in list(s1) + list(s2)]
    return eta_from_cluster_distances(dists(fb, lb), dists(fa, la), len(s1))


def projected_mean_distance(x: np.ndarray, lab: np.ndarray, weight: np.ndarray,
                            bias: Optional[np.ndarray], target: int, k: int,
                            span: Sequence[int]) -> float:
    """Mean ||P([x, 1] - [y, 1])|| over pairs, P the orthogonal projector onto the templates
    [w_c, b_c] of ``span`` (built with a pseudo-inverse, not a QR)."""
    x = x.astype(np.float64)
    t = np.asarray(weight, dtype=np.float64)[list(span)]
    if bias is not None:
        t = np.concatenate([t, np.asarray(bias, dtype=np.float64)[list(span), None]], axis=1)
        x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    a = t.T
    proj = a @ np.linalg.pinv(a)
    return float(np.mean([np.sqrt(((proj @ (u - v)) ** 2).sum())
                          for u in x[lab == target] for v in x[lab == k]]))


def eta_projected_reference(before, after, target, s1, s2) -> Tuple[float, float]:
    """App. K as stated: average (non-squared) distance of projected features, brute force.
    ``before``/``after``: (features, labels, weight, bias)."""
    span = [target, *s1, *s2]

    def dists(f):
        x, lab, w, b = f
        return [projected_mean_distance(x, lab, w, b, target, k, span) for k in list(s1) + list(s2)]
    return eta_from_cluster_distances(dists(before), dists(after), len(s1))


def eta_from_centroids(c1: np.ndarray, c2: np.ndarray, target: int, s1: Sequence[int],
                       s2: Sequence[int]) -> Tuple[float, float]:
    """Eq. 1 from class centroids [K, D] before (c1) and after (c2): squared centroid distances."""
    def dists(c):
        return [float(((c[target] - c[k]) ** 2).sum()) for k in list(s1) + list(s2)]
    return eta_from_cluster_distances(dists(c1), dists(c2), len(s1))


def mean_entropy_reference(logits, temperature: float) -> float:
    """Mean Shannon entropy (nats) of softmax(logits / T) over rows, by scipy in float64."""
    from scipy.special import softmax
    from scipy.stats import entropy

    return float(np.mean(entropy(softmax(np.asarray(logits, np.float64) / temperature, axis=1), axis=1)))


def centered(n: int, sd: float = 1.0) -> np.ndarray:
    """A fixed pattern of n values with mean exactly 0 and sample sd exactly ``sd``."""
    z = np.arange(n, dtype=float) - (n - 1) / 2
    return z / z.std(ddof=1) * sd


def values_with_p(n: int, p: float, sd: float = 1.0, one_sided: bool = False) -> np.ndarray:
    """n values whose one-sample t-test p (two-sided unless ``one_sided``) is exactly ``p``."""
    from scipy import stats

    t = stats.t.isf(p if one_sided else p / 2, n - 1)
    return centered(n, sd) + t * sd / math.sqrt(n)


def t_interval(mean: float, se: float, df: float, level: float = 0.95) -> Tuple[float, float]:
    """The textbook t interval mean +- t_{df, (1 + level) / 2} * se."""
    from scipy import stats

    q = stats.t.ppf(1 - (1 - level) / 2, df)
    return mean - q * se, mean + q * se


def t_ci(values) -> Tuple[float, float]:
    """95 % t interval of the mean of ``values`` (se = sample sd / sqrt(n))."""
    v = np.asarray(values, float)
    return t_interval(float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v))), len(v) - 1)


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def tree_hashes(root: Path) -> Dict[str, str]:
    """sha256 of every file under ``root``, by relative path (byte-identical trees compare equal)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def synthetic_study(study: Path, accs: dict, shift: float = 0.3, overrides: Optional[dict] = None):
    """A finished vision study by hand (no training): manifest, run configs, given teacher/student
    accuracies ``accs[(kind, alpha, T, seed)]`` (``(kind, alpha, T, seed, arm)`` for a variant arm's
    students; 70 otherwise) and export features in which the T=3 students' class-0 features moved
    towards class 6 by ``shift``. ``overrides``: more config settings (e.g. ``variant_arms``)."""
    from lskd_core import study as S
    from lskd_core.classsets import FASHION_MNIST_CLASSES
    from lskd_core.features_io import save_features

    cfg = S.load_config(overrides={"seeds": 2, "temperatures": [1, 3], "target_classes": [0, 5],
                                   "projection_classes": [0, 6, 7], **(overrides or {})})
    plan = S.build_plan(cfg)
    S.write_manifest(study, cfg, plan)
    rng = np.random.default_rng(0)
    k, dim = 10, 12
    centers = np.eye(k, dim) * 6.0
    for r in plan:
        d = study / "runs" / r.run_id
        d.mkdir(parents=True)
        S.write_run_config(r, study, cfg, S.run_command(r, study, cfg), {}, "study")
        if r.kind in ("teacher", "student"):
            key = (r.kind, r.info["alpha"], r.info.get("temperature"), r.info["seed"])
            key += (r.info["arm"],) if r.info.get("arm") else ()
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


def run_ids(plan) -> List[str]:
    return [r.run_id for r in plan]


def vision_cli(argv: List[str], capsys) -> Tuple[int, str]:
    """The vision trainer's CLI in-process: (exit code, stderr)."""
    from vision_plugin.train import cli

    code = cli(argv)
    return code, capsys.readouterr().err


def run_main(main, argv: List[str]) -> Tuple[int, str, str]:
    """Run a CLI ``main(argv)`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exc:  # argparse's --help
            code = exc.code if isinstance(exc.code, int) else 1
    return int(code), out.getvalue(), err.getvalue()


def wait_for_exit(launcher, handle, timeout: float = 60.0) -> int:
    """Poll a study launcher until the run of ``handle`` ends; its exit status."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        rc = launcher.poll(handle)
        if rc is not None:
            return rc
        time.sleep(0.05)
    raise AssertionError(f"the run did not end within {timeout:.0f} s")


#: a tiny end-to-end vision study (Fashion-MNIST subset, 2 alphas x 2 T x 1 seed, 1 epoch) that the
#: local and the SLURM launcher tests both run, so their results can be compared
TINY_STUDY = {
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


def finished_run(study: Path, run_id: str, **fields) -> Path:
    """Write ``<study>/runs/<run_id>/result.json`` of a finished run with ``fields`` (hand-made studies
    for report tests); returns the run's folder."""
    d = Path(study) / "runs" / run_id
    d.mkdir(parents=True, exist_ok=True)
    (d / "result.json").write_text(json.dumps({"status": "done", **fields}))
    return d


def markdown_block_breaks(text: str) -> List[str]:
    """Places in a Markdown document where one block runs into the next without a blank line: a heading
    not preceded by one, or a table's last row followed by a non-table line (read as another row, or as a
    lazy continuation, by GitHub's renderer). Empty for a document whose sections are separate blocks."""
    lines = text.split("\n")
    breaks = []
    for i in range(1, len(lines)):
        prev, line = lines[i - 1], lines[i]
        if line.startswith("#") and prev.strip():
            breaks.append(f"line {i + 1}: heading {line[:40]!r} right after {prev[:40]!r}")
        if prev.startswith("|") and line.strip() and not line.startswith("|"):
            breaks.append(f"line {i + 1}: {line[:40]!r} right after a table row")
    return breaks


def report_from_its_results(rep: Path) -> str:
    """report.md rendered again from the report's own results.json (every number read back from JSON, so
    new objects: a section that finds cells by identity instead of value renders differently)."""
    from lskd_core.report.render import render
    from lskd_core.report.view import StudyView

    res = json.loads((Path(rep) / "results.json").read_text())
    return render(StudyView(Path(res["study_dir"])), res)


def well_formed_report(rep: Path) -> str:
    """report.md of report dir ``rep``, after checking that it renders the same from its own results.json
    and that its blocks are separate (:func:`report_from_its_results`, :func:`markdown_block_breaks`)."""
    md = (Path(rep) / "report.md").read_text()
    assert report_from_its_results(rep) == md
    assert markdown_block_breaks(md) == []
    return md


# ------------------------------------------------------------------ a translation study made by hand ---
TRANSLATION_TOKENS = ["die", "der", "und", "ist", "nicht", "das"]


def hand_translation_study(study: Path, temperatures: Sequence[float] = (1, 4),
                           alphas: Sequence[float] = (0, 0.1)) -> Tuple[Path, Dict[float, np.ndarray]]:
    """A translation study whose exports are made by hand (no fairseq): each teacher's output embeddings
    (its own rows, so the reference teacher can be told apart) and per-sentence entropy sums at T = 1 and
    4; each student's decoder states of a token sit at a centre that drifts with T. Returns the study
    and each alpha's embedding rows."""
    from lskd_core import study as S
    from lskd_core.features_io import save_features
    from lskd_core.report.token_entropy import ENTROPY_FILE

    data = study / "data"
    data.mkdir(parents=True)
    cfg = S.load_config(preset="translation", overrides={
        "data_dir": str(data), "alphas": list(alphas), "temperatures": list(temperatures), "seeds": 2,
        "cache": False, "num_similar": 1, "num_dissimilar": 2})
    plan = S.build_plan(cfg)
    S.write_manifest(study, cfg, plan)
    rng = np.random.default_rng(1)
    k, dim = len(TRANSLATION_TOKENS), 5
    weights = {float(a): rng.normal(size=(k, dim)) for a in alphas}
    meta = {"token_ids": list(range(10, 10 + k)), "token_counts": [50 - i for i in range(k)], "sentences": 30}
    labels = np.repeat(np.arange(k), 8)
    for r in plan:
        if r.kind != "export":
            continue
        d = study / "runs" / r.run_id
        d.mkdir(parents=True)
        t = r.info.get("temperature") or 1.0
        weight = weights[float(r.info["alpha"])]
        centres = weight * (1.0 + 0.05 * np.log(t)) + 0.1 * np.log(t) * weight[[1, 0, 3, 2, 5, 4]]
        feats = centres[labels] + 0.05 * rng.normal(size=(labels.size, dim))
        save_features(d / "features.npz", feats.astype(np.float32), labels, class_names=TRANSLATION_TOKENS,
                      weight=weight, bias=np.zeros(k), meta=meta)
        if r.info.get("role") == "teacher":  # per-sentence entropy sums at each T (fairseq_plugin's export)
            tokens = rng.integers(3, 9, size=12)
            sums = {f"{t:.1f}": (tokens * (0.5 + 0.1 * t + float(r.info["alpha"])) + rng.normal(size=12) * 0.3).tolist()
                    for t in (1, 4)}
            (d / ENTROPY_FILE).write_text(json.dumps({"tokens_per_sentence": tokens.tolist(),
                                                      "entropy_sum_per_sentence": sums, "sentences": 12,
                                                      "tokens": int(tokens.sum()), "meta": {"split": "test"},
                                                      "max_entropy": 9.9, "vocab_size": 20000}))
        (d / "result.json").write_text(json.dumps({"status": "done"}))
    return study, weights


def token_sets_by_hand(weight: np.ndarray, t: int) -> Tuple[List[int], List[int]]:
    """S1 (the nearest row) and S2 (the two farthest, sorted) of token ``t`` by squared distance."""
    others = sorted((c for c in range(len(weight)) if c != t), key=lambda c: float(((weight[c] - weight[t]) ** 2).sum()))
    return others[:1], sorted(others[-2:])
