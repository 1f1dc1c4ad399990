"""BLEU of ``fairseq-generate`` output: detokenised sacreBLEU and the tokenised IWSLT-style number.

The paper reports BLEU on IWSLT (Table 5 En->De, Table B.2 En->Ru) following Shen et al., whose
fairseq recipe scores the tokenised, lower-cased, BPE-removed output (``fairseq-generate
--remove-bpe`` prints it as ``BLEU4``). Modern practice is detokenised sacreBLEU. This helper
gives both from one generation log::

    fairseq-generate DATA/bin --path student/checkpoint_best.pt --beam 5 --remove-bpe \\
        --batch-size 128 > gen.out
    python -m fairseq_plugin.bleu gen.out --lang de --ref DATA/raw/test.de --lowercase

* ``bleu_tok``: corpus BLEU of the ``H-`` lines against the ``T-`` lines as they are (already
  Moses-tokenised; no further tokenisation) = fairseq's ``BLEU4`` / ``multi-bleu.perl``.
* ``bleu_detok``: sacreBLEU (13a tokenisation) of the Moses-detokenised hypotheses against the
  detokenised references: the ``--ref`` file (sentence i = line i, e.g. ``raw/test.de`` written by
  ``prepare_offline``) or, without it, the detokenised ``T-`` lines. ``--lowercase`` for data that
  were lower-cased before BPE (IWSLT'14 recipe, ``prepare_offline``).
* ``chrf``: sacreBLEU's chrF (character 6-grams, beta = 2; Popovic 2015) of the same detokenised
  pair, lower-cased with ``--lowercase``: it still separates systems when short sentences leave few
  matching 4-grams for BLEU.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Optional, Sequence, TextIO

from .errors import InputFileError, UsageError, run_cli


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
) -> Dict[str, float]:
    """Both BLEU numbers (see the module docstring) for one generation log."""
    entries = parse_generate_output(generate_lines)
    ids = sorted(i for i, e in entries.items() if "H" in e and "T" in e)
    if not ids:
        raise UsageError("no H-/T- line pairs found: is this fairseq-generate output?")
    hyps_tok = [entries[i]["H"] for i in ids]
    refs_tok = [entries[i]["T"] for i in ids]
    if references is not None:
        if max(ids) >= len(references):
            raise UsageError(
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


def read_lines(path: str, what: str) -> List[str]:
    """Lines of a UTF-8 text file ('-' = stdin); a binary or damaged file is one clear error."""
    try:
        if path == "-":
            return sys.stdin.readlines()
        with open(path, encoding="utf-8") as handle:
            return handle.readlines()
    except UnicodeDecodeError as error:
        name = "standard input" if path == "-" else path
        raise InputFileError(f"{name}: not UTF-8 text (byte {error.start}); pass the {what}") from None


def _main(argv: Optional[Sequence[str]], stdout: TextIO) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_plugin.bleu",
        description="Detokenised sacreBLEU, chrF and tokenised (IWSLT-style) BLEU of fairseq-generate output.",
    )
    parser.add_argument("generate_output", nargs="?", default="-", help="fairseq-generate log ('-' = stdin)")
    parser.add_argument("--lang", required=True, help="target language code for Moses detokenisation (de, ru...)")
    parser.add_argument("--ref", default=None, help="detokenised reference file, line i = sentence id i")
    parser.add_argument("--lowercase", action="store_true", help="case-insensitive BLEU (lower-cased data)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    lines = read_lines(args.generate_output, "text output of fairseq-generate")
    references = read_lines(args.ref, "detokenised reference text") if args.ref else None
    try:
        result = score(lines, args.lang, references, lowercase=args.lowercase)
    except UsageError as error:
        raise UsageError(f"{args.generate_output}: {error}") from None
    if args.json:
        print(json.dumps(result), file=stdout)
    else:
        print(
            f"BLEU (detokenised sacreBLEU) = {result['bleu_detok']:.2f}   "
            f"BLEU (tokenised, IWSLT-style) = {result['bleu_tok']:.2f}   chrF = {result['chrf']:.2f}   "
            f"sentences = {result['sentences']}   [{result['sacrebleu_signature']}]",
            file=stdout,
        )
    return 0


def main(argv: Optional[Sequence[str]] = None, stdout: TextIO = sys.stdout) -> int:
    """CLI; unreadable/corrupt inputs and bad arguments -> one line on stderr, exit status 2."""
    return run_cli(lambda a: _main(a, stdout), argv, prog="bleu")


if __name__ == "__main__":
    sys.exit(main())
