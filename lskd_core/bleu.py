"""BLEU of ``fairseq-generate`` output: detokenised sacreBLEU, chrF and the tokenised IWSLT-style BLEU4.

Framework-light (text in, numbers out: sacreBLEU and sacremoses, no fairseq) so that the study
scores every generate run in its own process; ``python -m fairseq_plugin.bleu`` is the command-line
face of the same functions (its docstring lists the three numbers and their conventions).

* ``bleu_tok``: corpus BLEU of the ``H-`` lines against the ``T-`` lines as they are (already
  Moses-tokenised; no further tokenisation) = fairseq's ``BLEU4`` / ``multi-bleu.perl``.
* ``bleu_detok``: sacreBLEU (13a) of the Moses-detokenised hypotheses against the detokenised
  references (``references``, line i = sentence i, or else the detokenised ``T-`` lines).
* ``chrf``: sacreBLEU's chrF (character 6-grams, beta = 2; Popovic 2015) of the same detokenised pair.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

__all__ = ["parse_generate_output", "detokenize", "score"]


def parse_generate_output(lines: Sequence[str]) -> Dict[int, Dict[str, str]]:
    """``{sentence id: {"S": source, "T": reference, "H": hypothesis}}`` from fairseq-generate logs.

    ``H-`` lines carry a score column before the text; only the first (best) hypothesis per id is
    kept (``--nbest`` > 1 prints more).
    """
    out: Dict[int, Dict[str, str]] = {}
    for line in lines:
        line = line.rstrip("\n")
        if len(line) < 3 or line[1] != "-" or line[0] not in "STH":
            continue
        kind, rest = line[0], line[2:]
        head, _, text = rest.partition("\t")
        if not head.isdigit():
            continue
        if kind == "H":
            _score, _, text = text.partition("\t")
        entry = out.setdefault(int(head), {})
        entry.setdefault(kind, text)
    return out


def detokenize(lines: Sequence[str], lang: str) -> List[str]:
    from sacremoses import MosesDetokenizer

    detok = MosesDetokenizer(lang=lang)
    return [detok.detokenize(line.split()) for line in lines]


def score(
    generate_lines: Sequence[str],
    lang: str,
    references: Optional[Sequence[str]] = None,
    lowercase: bool = False,
) -> Dict[str, Union[float, int, str]]:
    """The three numbers (see the module docstring) for one generation log."""
    entries = parse_generate_output(generate_lines)
    ids = sorted(i for i, e in entries.items() if "H" in e and "T" in e)
    if not ids:
        raise ValueError("no H-/T- line pairs found: is this fairseq-generate output?")
    hyps_tok = [entries[i]["H"] for i in ids]
    refs_tok = [entries[i]["T"] for i in ids]
    if references is not None:
        if max(ids) >= len(references):
            raise ValueError(
                f"sentence id {max(ids)} has no line in the reference file ({len(references)} lines)"
            )
        refs_detok = [references[i].rstrip("\n") for i in ids]
    else:
        refs_detok = detokenize(refs_tok, lang)
    hyps_detok = detokenize(hyps_tok, lang)
    from sacrebleu.metrics import BLEU, CHRF

    tok_metric = BLEU(tokenize="none", lowercase=lowercase, force=True)
    detok_metric = BLEU(lowercase=lowercase)
    tok = tok_metric.corpus_score(hyps_tok, [refs_tok])
    detok = detok_metric.corpus_score(hyps_detok, [refs_detok])
    chrf_metric = CHRF(lowercase=lowercase)
    chrf = chrf_metric.corpus_score(hyps_detok, [refs_detok])
    return {
        "bleu_detok": round(float(detok.score), 3),
        "bleu_tok": round(float(tok.score), 3),
        "chrf": round(float(chrf.score), 3),
        "sentences": len(ids),
        "sacrebleu_signature": str(detok_metric.get_signature()),
        "chrf_signature": str(chrf_metric.get_signature()),
    }
