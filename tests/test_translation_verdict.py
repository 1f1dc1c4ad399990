"""Translation's verdict and provenance: the diffusion flag reads the token-level eta (decoder states,
feature-space sets on the export split), and the fairseq version is found although fairseq is
installed under another distribution name (fairseq-fixed)."""

import stat
import sys
import textwrap

import numpy as np
from scipy import stats as sps

from lskd_core import statistics as st
from lskd_core.report.verdict import verdict
from lskd_core.study import provenance

ALPHAS, TEMPS, SEEDS = (0.0, 0.1), (1.0, 2.0, 64.0), (0, 1, 2)


def _grid(rng):
    cells = []
    for a in ALPHAS:
        for t in TEMPS:
            bleu = [3.0 - (0.8 if a else 0.1) * np.log(t) + rng.normal(0, 0.1) for _ in SEEDS]
            cells.append({"alpha": a, "temperature": t, "seeds": list(SEEDS), "top1": bleu,
                          "top1_mean": float(np.mean(bleu)), "top1_std": float(np.std(bleu, ddof=1))})
    return {"cells": cells}


def _token_eta(rng, s1_by_alpha, classes=6):
    """Per-seed tables as token_eta writes them: feature sets on the test split, T1 -> every higher T."""
    tables = []
    for a in ALPHAS:
        for s in SEEDS:
            for t2 in TEMPS[1:]:
                rows = [{"target": k, "eta_s1": s1_by_alpha[a] + rng.normal(0, 1.0),
                         "eta_s2": -s1_by_alpha[a] + rng.normal(0, 1.0)} for k in range(classes)]
                tables.append({"sets": "feature", "split": "test", "alpha": a, "t1": 1.0, "t2": t2,
                               "seed": s, "teacher_seed": 1, "rows": rows})
    return {"split": "test", "seed_tables": tables}


def test_diffusion_flag_reads_token_eta_with_an_interval_over_seeds():
    rng = np.random.default_rng(3)
    grid, tok = _grid(rng), _token_eta(rng, {0.0: -0.5, 0.1: -9.0})
    v = verdict(grid, tok, "feature", "test", task="translation")
    flag = v["flags"]["ls_diffusion_high_T"]
    # independent: each seed's mean over token classes at T = 1 -> 64, then a t interval over seeds
    per_seed = [np.mean([r["eta_s1"] for r in t["rows"]]) for t in tok["seed_tables"]
                if t["alpha"] == 0.1 and t["t2"] == 64.0]
    mean, se = np.mean(per_seed), sps.sem(per_seed)
    lo, hi = sps.t.interval(0.95, len(per_seed) - 1, loc=mean, scale=se)
    ev = flag["evidence"]
    assert ev["n"] == len(SEEDS)
    assert np.isclose(ev["estimate"], mean) and np.allclose(ev["ci"], [lo, hi])
    assert hi < 0 and flag["level"] == st.CLEAR
    assert "decoder states of target tokens" in flag["text"] and "extension" in flag["text"]
    assert "not enough cells" not in flag["text"]


def test_diffusion_flag_without_token_eta_says_it_cannot_test():
    rng = np.random.default_rng(4)
    grid, tok = _grid(rng), _token_eta(rng, {0.0: 0.0, 0.1: -9.0})
    # Fig. 3's tables (hierarchy sets, train split) do not exist for translation: nothing to read
    v = verdict(grid, tok, "hierarchy", "train", task="translation")
    assert "not enough cells" in v["flags"]["ls_diffusion_high_T"]["text"]


def _fake_distribution(root, dist, module, version):
    info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(module + "\n")
    (root / module).mkdir()
    (root / module / "__init__.py").write_text("")


def test_framework_version_of_a_package_installed_under_another_name(tmp_path, monkeypatch):
    _fake_distribution(tmp_path, "lskdfake-fixed", "lskdfake", "9.8.7")
    monkeypatch.syspath_prepend(str(tmp_path))
    provenance.framework_versions.cache_clear()
    try:
        got = provenance.framework_versions(None, ("lskdfake", "lskd-no-such-package"))
        assert got == {"lskdfake": "9.8.7 (lskdfake-fixed)", "lskd-no-such-package": None}
        # another interpreter is asked the same way (here: ours, behind a wrapper that adds the path)
        wrapper = tmp_path / "python-wrapper"
        wrapper.write_text(textwrap.dedent(f"""\
            #!/bin/sh
            PYTHONPATH={tmp_path} exec {sys.executable} "$@"
            """))
        wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
        other = provenance.framework_versions(str(wrapper), ("lskdfake", "lskd-no-such-package"))
        assert other == got
    finally:
        provenance.framework_versions.cache_clear()
