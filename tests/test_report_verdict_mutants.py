"""The report's verdict block (lskd_core.report.verdict) on hand-made accuracy grids: Welch levels at their
thresholds (p computed here with the textbook formula), the earlier results.json trend keys read off the
flags, the rule-of-thumb line only where it applies, the unit and the eta scope per task, the markdown
lines. Written to kill the cosmic-ray survivors of issue 20 (docs/testing.md)."""

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from lskd_core.report.verdict import _rule_of_thumb, compare_cells, verdict
from lskd_core.statistics import DEFAULT_DELTA

TEMPS = [1.0, 8.0, 64.0]


def _welch_p(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return 2 * sps.t.sf(abs(a.mean() - b.mean()) / math.sqrt(va + vb), df)


def _pair_with_p(p, n=5):
    """Two samples of equal spread whose two-sided Welch p is exactly p (equal variances: df = 2n - 2)."""
    z = np.arange(n, dtype=float) - (n - 1) / 2
    z = z / z.std(ddof=1)
    shift = sps.t.isf(p / 2, 2 * n - 2) * math.sqrt(2 / n)
    return list(70 + z + shift), list(70 + z[::-1])


@pytest.mark.parametrize("p, level", [(0.049, "clear"), (0.051, "suggestive"), (0.199, "suggestive"),
                                      (0.201, "inconclusive")])
def test_compare_cells_levels_at_the_thresholds(p, level):
    a, b = _pair_with_p(p)
    assert _welch_p(a, b) == pytest.approx(p, rel=1e-9)
    out = compare_cells(a, b)
    assert out["p"] == pytest.approx(p, rel=1e-9) and out["level"] == level
    se = math.sqrt(np.var(a, ddof=1) / 5 + np.var(b, ddof=1) / 5)
    assert out["se"] == pytest.approx(se) and out["z"] == pytest.approx((np.mean(a) - np.mean(b)) / se)
    assert out["n"] == [5, 5] and out["diff"] == pytest.approx(np.mean(a) - np.mean(b))


def test_compare_cells_without_spread_or_runs():
    assert compare_cells([], [1.0, 2.0]) == {"diff": None, "se": None, "p": None, "level": "missing", "n": [0, 2]}
    assert compare_cells([1.0, 2.0], [])["level"] == "missing"
    one = compare_cells([3.0], [1.0, 2.0])
    assert one["level"] == "no-spread-estimate" and one["diff"] == pytest.approx(1.5) and one["p"] is None
    assert compare_cells([1.0, 2.0], [3.0])["level"] == "no-spread-estimate"
    exact = compare_cells([2.0, 2.0], [1.0, 1.0])
    assert exact["level"] == "clear" and exact["p"] == 0.0 and exact["se"] == 0.0 and exact["diff"] == 1.0
    tie = compare_cells([1.0, 1.0], [1.0, 1.0])
    assert tie["level"] == "inconclusive" and tie["p"] == 1.0


def _grid(value, alphas=(0.0, 0.1), temps=TEMPS, seeds=5, **extra):
    cells = []
    for a in alphas:
        for t in temps:
            top1 = [float(value(a, t, s)) for s in range(seeds)]
            cells.append({"alpha": a, "temperature": t, "seeds": list(range(seeds)), "top1": top1,
                          "top1_mean": float(np.mean(top1)), "top1_std": float(np.std(top1, ddof=1))})
    return dict({"cells": cells}, **extra)


def _paper(ls_slope=-1.5, plain_slope=-0.3, lead=1.0, seed=1):
    rng = np.random.default_rng(seed)
    eff = rng.normal(0, 0.5, 50)
    noise = {k: rng.normal(0, 0.2) for k in [(a, t, s) for a in (0.0, 0.1, 0.2) for t in TEMPS for s in range(50)]}
    return lambda a, t, s: (80 + eff[s] + (lead if a else 0.0) + (ls_slope if a else plain_slope) * math.log(t)
                            + noise[(a, t, s)])


def _eta_section(s1_ls, s1_plain, sets="hierarchy", split="train"):
    tabs = []
    for alpha, s1 in ((0.1, s1_ls), (0.0, s1_plain)):
        for seed, v in enumerate(s1):
            tabs.append({"sets": sets, "split": split, "alpha": alpha, "t1": 1.0, "t2": 64.0, "seed": seed,
                         "rows": [{"target": 0, "eta_s1": float(v), "eta_s2": float(-v)}]})
    return {"seed_tables": tabs}


def test_missing_grid():
    assert verdict({"cells": []})["status"] == "missing"
    assert verdict({"cells": []})["text"].startswith("No student finished")


def test_trend_keys_follow_the_flags_in_the_paper_direction_and_against_it():
    out = verdict(_grid(_paper()))
    tr, flags = out["trends"], out["flags"]
    assert tr["ls_teacher_degrades_with_T"] == {"holds": True, "certainty": flags["higher_T_hurts_ls"]["level"]}
    assert tr["compatible_at_low_T"] == {"holds": True, "certainty": flags["compatible_at_lowest_T"]["level"]}
    assert tr["incompatible_at_high_T"] == {"holds": True, "certainty": flags["incompatible_at_highest_T"]["level"]}
    assert flags["higher_T_hurts_ls"]["level"] == "clear"
    # T helps the LS students and they trail at T = 1 but lead at T = 64: every key flips
    opp = verdict(_grid(_paper(ls_slope=1.5, plain_slope=0.0, lead=-1.0)))["trends"]
    assert opp["ls_teacher_degrades_with_T"]["holds"] is False
    assert opp["compatible_at_low_T"]["holds"] is False and opp["incompatible_at_high_T"]["holds"] is False


def test_trend_keys_need_their_cells():
    one_t = verdict(_grid(_paper(), temps=[8.0]))["trends"]
    assert set(one_t) == {"compatible_at_low_T"}  # no slope with one T, no high-T comparison
    two_t = verdict(_grid(_paper(), temps=[1.0, 64.0]))["trends"]  # two T: a low and a high one
    assert set(two_t) == {"ls_teacher_degrades_with_T", "compatible_at_low_T", "incompatible_at_high_T"}
    no_plain = verdict(_grid(_paper(), alphas=(0.1, 0.2)))["trends"]
    assert no_plain == {}


def test_rule_of_thumb_only_for_an_ls_teacher_at_the_lowest_t():
    temps = [1.0, 4.0]
    assert _rule_of_thumb({"recommended": [0.1, 1.0]}, temps)
    # read back from results.json: equal numbers, distinct objects
    assert _rule_of_thumb({"recommended": json.loads("[0.1, 1.0]")}, json.loads("[1.0, 4.0]"))
    for rec in ([0.0, 1.0], [0.1, 4.0], None):
        assert _rule_of_thumb({"recommended": rec}, temps) == []
    vision = verdict(_grid(_paper()))
    assert vision["recommended"] == [0.1, 1.0] and "rule of thumb" in vision["text"]
    # the same numbers as a translation study: that task states no rule of thumb, and its unit is BLEU
    mt = verdict(_grid(_paper()), task="translation")
    assert mt["recommended"] == [0.1, 1.0] and "rule of thumb" not in mt["text"]
    assert " BLEU" in mt["sentence"] and " points" not in mt["sentence"] and " points" in vision["sentence"]
    # a plain teacher's win is never dressed up as the rule
    plain_wins = verdict(_grid(_paper(lead=-3.0, ls_slope=-1.5, plain_slope=-1.5)))
    assert plain_wins["recommended"] == [0.0, 1.0] and "rule of thumb" not in plain_wins["text"]


def test_text_lines_and_best_cell():
    g = _grid(_paper())
    out = verdict(g)
    parts = out["text"].split("\n\n")
    assert parts[0] == f"**{out['sentence']}**"
    assert parts[1:1 + len(out["flags"])] == [f"- {f['text']}" for f in out["flags"].values()]
    assert f"> {out['teacher_variance_note']}" in parts and parts[-1] == f"> {out['teacher_variance_note']}"
    top = max(g["cells"], key=lambda c: c["top1_mean"])
    assert out["best"] == {"alpha": top["alpha"], "temperature": top["temperature"], "top1_mean": top["top1_mean"],
                           "top1_std": top["top1_std"]}
    assert (out["best"]["alpha"], out["best"]["temperature"]) == (0.1, 1.0)
    # three teachers per alpha: the variance is sampled, no caveat line
    sampled = _grid(_paper())
    for c in sampled["cells"]:
        c["teacher_seeds"] = [s % 3 for s in c["seeds"]]
    text = verdict(sampled)["text"]
    assert "\n\n> Teacher variance is not sampled" not in text


def test_unfinished_cells_do_not_count_as_best():
    g = _grid(_paper())
    g["cells"].append({"alpha": 0.2, "temperature": 1.0, "seeds": [], "top1": [], "top1_mean": None,
                       "top1_std": None})
    assert verdict(g)["best"]["alpha"] == 0.1


def test_the_smallest_effect_of_interest_comes_from_the_grid():
    assert verdict(_grid(_paper()))["analysis"]["delta"] == DEFAULT_DELTA
    assert verdict(_grid(_paper(), smallest_effect=0.25))["analysis"]["delta"] == 0.25
    assert verdict(_grid(_paper(), smallest_effect=None))["analysis"]["delta"] == DEFAULT_DELTA


@pytest.mark.parametrize("task, sets, token_scope", [("translation", "feature", True), ("translation", "hierarchy", False),
                                                     ("vision", "feature", False), ("vision", "hierarchy", False)])
def test_the_diffusion_flag_names_what_eta_measured(task, sets, token_scope):
    eta = _eta_section(-3 - 0.1 * np.arange(5), -0.2 + 0.01 * np.arange(5), sets=sets, split="valid")
    out = verdict(_grid(_paper()), eta, eta_sets=sets, eta_split="valid", task=task)
    flag = out["flags"]["ls_diffusion_high_T"]
    assert flag["level"] == "clear" and flag["evidence"]["n"] == 5
    assert ("decoder states of target tokens" in flag["text"]) is token_scope
    assert ("mean over target classes" in flag["text"]) is not token_scope
    # another split's tables are not read
    other = verdict(_grid(_paper()), eta, eta_sets=sets, eta_split="train", task=task)
    assert "not enough cells" in other["flags"]["ls_diffusion_high_T"]["text"]


def test_compare_cells_p_of_exactly_005_is_not_clear(monkeypatch):
    """The documented rule is strict, as in lskd_core.statistics: p < 0.05 is clear, p = 0.05 is not (and p =
    0.2 is not suggestive). scipy's Welch p is pinned to the boundary values here: no data reach them exactly."""
    from types import SimpleNamespace

    import scipy.stats

    for p, level in ((0.05, "suggestive"), (0.2, "inconclusive")):
        monkeypatch.setattr(scipy.stats, "ttest_ind", lambda a, b, equal_var=True, _p=p: SimpleNamespace(pvalue=_p))
        assert compare_cells([1.0, 2.0, 3.0], [0.0, 1.5, 2.0])["level"] == level


def _cell_means(grid, alpha):
    return {c["temperature"]: float(np.mean(c["top1"])) for c in grid["cells"] if c["alpha"] == alpha}


def test_ls_degrades_with_t_is_the_sign_of_the_fitted_slope():
    """holds = (OLS slope of the LS students' values on ln T) < 0, from scipy's linregress: a small positive
    slope and an exactly flat trend are not degradation."""
    for ls_slope in (0.5, -0.5):
        g = _grid(_paper(ls_slope=ls_slope, plain_slope=0.0))
        xs = [math.log(c["temperature"]) for c in g["cells"] if c["alpha"] == 0.1 for _ in c["top1"]]
        ys = [v for c in g["cells"] if c["alpha"] == 0.1 for v in c["top1"]]
        slope = sps.linregress(xs, ys).slope
        assert bool(slope < 0) is (ls_slope < 0)
        assert verdict(g)["trends"]["ls_teacher_degrades_with_T"]["holds"] is bool(slope < 0)
    flat = _grid(lambda a, t, s: 80.0 if a else 79.0 + 0.1 * s - 0.2 * math.log(t))
    assert verdict(flat)["trends"]["ls_teacher_degrades_with_T"]["holds"] is False


def test_incompatible_at_high_t_reads_the_highest_t():
    """The LS students lead at T = 1 and 8 and trail at T = 64: incompatibility is about T = 64 only, read here
    off the cells' means."""
    g = _grid(lambda a, t, s: 80.0 + 0.1 * s + (1.0 - 0.35 * math.log(t) if a else 0.0))
    ls, plain = _cell_means(g, 0.1), _cell_means(g, 0.0)
    assert ls[8.0] >= plain[8.0] and ls[64.0] < plain[64.0]
    tr = verdict(g)["trends"]
    assert tr["incompatible_at_high_T"]["holds"] is True and tr["compatible_at_low_T"]["holds"] is True


def _matched_rows():
    """Rows of an entropy-matched section: every (alpha, T) around the verdict's (0.1, highest T = 64), the
    wanted one last, each with a distinct vs_matched estimate."""
    rows = []
    for k, (a, t) in enumerate([(0.2, 64.0), (0.05, 64.0), (0.1, 1.0), (0.1, 8.0), (0.1, 128.0), (0.1, 64.0)]):
        rows.append({"ls_alpha": float(str(a)), "ls_temperature": float(str(t)), "matched_temperatures": {"0": 60.0},
                     "vs_matched": _est_of([k + 1.0, k + 1.2, k + 1.1]), "vs_grid": None, "k": k})
    return rows


def _est_of(values):
    from lskd_core import statistics as st

    return st.mean_estimate(values, "teacher", teacher_variance_sampled=True)


def test_matched_row_is_the_ls_alpha_at_the_highest_t():
    from lskd_core.report.verdict import _matched_row

    analysis = {"alpha_ls": 0.1, "temperatures": [1.0, 8.0, 64.0]}
    rows = _matched_rows()
    got = _matched_row({"rows": rows}, analysis)
    assert got is not None and (got["ls_alpha"], got["ls_temperature"], got["k"]) == (0.1, 64.0, 5)
    assert _matched_row({"rows": rows[:-1]}, analysis) is None  # (0.1, 64) did not run: nothing else stands in
    assert _matched_row({"rows": rows}, {"alpha_ls": 0.1, "temperatures": []}) is None
    assert _matched_row(None, analysis) is None


def test_the_smoothness_line_needs_a_finished_matched_section():
    g = _grid(_paper())
    rows = _matched_rows()
    plain = verdict(g)
    for section in (None, {"status": "missing", "rows": rows}, {"status": "not configured"}):
        out = verdict(g, matched=section)
        assert "smoothness" not in out and "Smoothness alone" not in out["text"]
        assert out["text"] == plain["text"]
    for status in ("ok", "partial"):
        out = verdict(g, matched={"status": status, "rows": rows})
        lo, hi = rows[-1]["vs_matched"]["ci"]
        assert out["smoothness"]["text"].startswith("Smoothness alone explains the high-T result at T = 64")
        assert f"{lo:+.2f} to {hi:+.2f}" in out["smoothness"]["text"]
        assert out["lines"][-1] == out["smoothness"]["text"] and f"- {out['smoothness']['text']}" in out["text"]


def test_the_token_eta_scope_compares_the_set_name_by_value():
    """A set name read from a config is an equal string, not the literal itself."""
    eta = _eta_section(-3 - 0.1 * np.arange(5), -0.2 + 0.01 * np.arange(5), sets="feature", split="valid")
    sets = "".join(["fea", "ture"])
    out = verdict(_grid(_paper()), eta, eta_sets=sets, eta_split="valid", task="translation")
    assert "decoder states of target tokens" in out["flags"]["ls_diffusion_high_T"]["text"]


def test_no_spread_and_any_non_zero_difference_is_clear_in_either_direction():
    """The docstring's rule: no spread at all and a non-zero difference is clear (the two-sided Welch test's
    limit), whichever side is ahead."""
    for a, b, diff in (([2.0, 2.0], [1.0, 1.0], 1.0), ([1.0, 1.0], [2.0, 2.0], -1.0)):
        out = compare_cells(a, b)
        assert out["level"] == "clear" and out["p"] == 0.0 and out["diff"] == diff


def test_translation_words_are_bleu_everywhere_with_the_score_key_compared_by_value(monkeypatch):
    """A translation study's sentences, its smoothness line included, are in BLEU; the score key is compared
    by value (here an equal string built at run time, as a plugin's or a config's would be)."""
    from lskd_core.study.tasks import get_task

    monkeypatch.setattr(type(get_task("translation")), "score_key", "".join(["bl", "eu"]))
    eta = _eta_section(-3 - 0.1 * np.arange(5), -0.2 + 0.01 * np.arange(5), sets="feature", split="valid")
    out = verdict(_grid(_paper()), eta, eta_sets="".join(["fea", "ture"]), eta_split="valid", task="translation",
                  matched={"status": "ok", "rows": _matched_rows()})
    assert " BLEU" in out["sentence"] and " points" not in out["text"]
    assert " BLEU" in out["smoothness"]["text"] and " points" not in out["smoothness"]["text"]
    assert "decoder states of target tokens" in out["flags"]["ls_diffusion_high_T"]["text"]
    vision = verdict(_grid(_paper()), matched={"status": "ok", "rows": _matched_rows()})
    assert " points" in vision["smoothness"]["text"] and "BLEU" not in vision["text"]


def test_a_task_scored_in_other_units_than_bleu_speaks_in_points(monkeypatch):
    """Tasks are registered by name (lskd_core.study.registry): one whose score key is not "bleu" -- here a
    key that sorts before it -- has its sentences in points and its eta over target classes."""
    from lskd_core.study.tasks import get_task

    monkeypatch.setattr(type(get_task("vision")), "score_key", "acc1")
    eta = _eta_section(-3 - 0.1 * np.arange(5), -0.2 + 0.01 * np.arange(5), sets="feature", split="valid")
    out = verdict(_grid(_paper()), eta, eta_sets="feature", eta_split="valid", task="vision",
                  matched={"status": "ok", "rows": _matched_rows()})
    assert " points" in out["sentence"] and "BLEU" not in out["text"]
    assert "mean over target classes" in out["flags"]["ls_diffusion_high_T"]["text"]
    assert " points" in out["smoothness"]["text"] and "BLEU" not in out["smoothness"]["text"]


def test_the_trend_keys_find_the_ls_alpha_by_value_after_a_json_round_trip():
    """results.json's older trend keys are read off an analysis that may come back from JSON, where every
    alpha is a new float object: the LS teacher's trend is found by value."""
    import json

    from lskd_core.report.verdict import _compat_trends

    out = verdict(_grid(_paper()))
    analysis = json.loads(json.dumps(out["analysis"]))
    assert analysis["alpha_ls"] is not analysis["trends"][-1]["alpha"]
    assert _compat_trends(analysis, out["flags"]) == out["trends"]
    assert "ls_teacher_degrades_with_T" in out["trends"]
