"""Teacher entropy per T on a sequence task (Table H.1's translation analogue).

Per teacher (alpha x teacher seed), the mean per-token entropy of ``softmax(z / T)`` over the whole
vocabulary at every target token (EOS included) of the exported sentences, teacher-forced, from the
per-sentence sums its export wrote (``fairseq_plugin.export_features --entropy-out``). The mean is
token-weighted: sum of entropies / number of tokens. Its 95 % interval is a cluster bootstrap over
sentences (tokens of one sentence are not independent): sentences are resampled with their token
counts and the ratio recomputed, BCa, :data:`RESAMPLES` resamples, fixed seed (scipy.stats.bootstrap).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np

from lskd_core.jsonio import BadJson, num, read_json_object
from lskd_core.report.cache import AnalysisCache
from lskd_core.report.markdown import fmt, md_table, section_status
from lskd_core.report.view import StudyView
from lskd_core.study.tasks.translation_exports import ENTROPY_FILE

__all__ = ["token_entropy_section", "token_entropy_markdown", "token_mean_interval", "teacher_exports",
           "ENTROPY_FILE", "RESAMPLES"]

RESAMPLES = 2000
CONFIDENCE = 0.95


def token_mean_interval(sums: np.ndarray, tokens: np.ndarray, seed: int = 0,
                        n_resamples: int = RESAMPLES) -> Dict[str, Any]:
    """Token-weighted mean ``sum(sums) / sum(tokens)`` and its cluster-bootstrap 95 % interval over
    the sentences (paired resampling of (sum, tokens), BCa). None interval for < 2 sentences."""
    from scipy import stats

    s = np.asarray(sums, dtype=np.float64)
    n = np.asarray(tokens, dtype=np.float64)
    keep = n > 0
    s, n = s[keep], n[keep]
    mean = float(s.sum() / n.sum()) if n.sum() > 0 else float("nan")
    out: Dict[str, Any] = {"mean": mean, "ci": None, "sentences": int(len(n)), "tokens": int(n.sum())}
    if len(n) < 2 or np.allclose(s / n, s[0] / n[0]):
        return out

    def ratio(a, b, axis=-1):
        return a.sum(axis=axis) / b.sum(axis=axis)

    res = stats.bootstrap((s, n), ratio, paired=True, vectorized=True, n_resamples=n_resamples,
                          confidence_level=CONFIDENCE, method="BCa", random_state=np.random.default_rng(seed))
    out["ci"] = [float(res.confidence_interval.low), float(res.confidence_interval.high)]
    return out


def teacher_exports(view: StudyView) -> List[str]:
    """Export runs of the teachers in the plan (those writing the entropy sums), in plan order."""
    return [rid for rid, r in view.runs.items()
            if r.get("kind") == "export" and (r.get("info") or {}).get("role") == "teacher"]


def _read_entropy(view: StudyView, rid: str) -> Optional[dict]:
    if rid not in view.results:
        return None
    try:
        return read_json_object(view.run_dir(rid) / ENTROPY_FILE)
    except BadJson:
        return None


def token_entropy_section(view: StudyView, cache: AnalysisCache) -> dict:
    """Mean per-token entropy of every teacher at the grid's T and ``entropy_temperatures``."""
    exports = teacher_exports(view)
    if not exports:
        return {"status": "missing", "reason": "no teacher export is planned (analysis = false?)"}
    key = {"inputs": view.fingerprint(exports), "resamples": RESAMPLES, "v": 1}

    def compute() -> dict:
        teachers: List[dict] = []
        missing: List[str] = []
        meta: Dict[str, Any] = {}
        for rid in exports:
            got = _read_entropy(view, rid)
            info = view.runs[rid].get("info") or {}
            if got is None:
                missing.append(rid)
                continue
            tokens = np.asarray(got["tokens_per_sentence"], dtype=np.int64)
            rows = {}
            for t_key, sums in got["entropy_sum_per_sentence"].items():
                rows[num(float(t_key))] = token_mean_interval(np.asarray(sums), tokens)
            teachers.append({"alpha": float(info.get("alpha", 0.0)), "teacher_seed": int(info.get("teacher_seed", 0)),
                             "model_run": info.get("model_run"), "rows": rows})
            meta = {"split": got.get("meta", {}).get("split"), "sentences": got.get("sentences"),
                    "tokens": got.get("tokens"), "max_entropy": got.get("max_entropy"),
                    "vocab_size": got.get("vocab_size"), "scope": got.get("scope")}
        if not teachers:
            return {"status": "missing", "missing_inputs": missing, "reason": "no teacher export finished"}
        temps = sorted({float(t) for tr in teachers for t in tr["rows"]})
        # the figure's table (lskd_core.report.figures.plot_entropy): the teacher each alpha's sections read
        first = {view.teacher(a): a for a in view.alphas}
        table = {num(tr["alpha"]): {t: r["mean"] for t, r in tr["rows"].items()}
                 for tr in teachers if tr["model_run"] in first}
        return {"status": "ok" if not missing else "partial", "missing_inputs": missing, "temperatures": temps,
                "teachers": teachers, "table": table, "interval": (
                    f"{int(100 * CONFIDENCE)} % cluster bootstrap over sentences (BCa, {RESAMPLES} resamples)"),
                **meta}

    return cache.get("token_entropy", key, compute)


def _cell(r: Optional[dict]) -> str:
    if r is None:
        return "—"
    if r.get("ci") is None:
        return f"{fmt(r['mean'], 3)} (no interval)"
    return f"{r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]"


def token_entropy_markdown(res: dict) -> List[str]:
    ent = res.get("token_entropy") or {}
    md = ["## 2. Teacher entropy per T (Table H.1, per target token)\n", section_status(ent)]
    if not ent.get("teachers"):
        if ent.get("reason"):
            md.append(f"{ent['reason']}.\n")
        return md
    md.append(f"Mean entropy (nats) of each teacher's softmax(z / T) over the {ent.get('vocab_size')}-token "
              f"vocabulary per target token, teacher-forced, on {ent.get('sentences')} sentences "
              f"({ent.get('tokens')} target tokens, EOS included) of the `{ent.get('split')}` split; maximum "
              f"ln V = {fmt(ent.get('max_entropy'), 3)}. Token-weighted mean [95 % interval: "
              f"{ent['interval'].split('% ', 1)[-1]}]. The paper's Table H.1 measures this on image "
              "classifiers; here each target token is one prediction.\n")
    teachers = sorted(ent["teachers"], key=lambda tr: (tr["alpha"], tr["teacher_seed"]))
    several = len({tr["teacher_seed"] for tr in teachers}) > 1
    heads = [f"alpha = {num(tr['alpha'])}" + (f", teacher seed {tr['teacher_seed']}" if several else "")
             for tr in teachers]
    rows = [[f"T = {num(t)}"] + [_cell(tr["rows"].get(num(t))) for tr in teachers] for t in ent["temperatures"]]
    md.append(md_table(["", *heads], rows) + "\n")
    if res.get("figures", {}).get("token_entropy"):
        md.append(f"![teacher entropy per token]({res['figures']['token_entropy']})\n")
    return md
