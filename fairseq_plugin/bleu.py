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
from typing import List, Optional, Sequence, TextIO

from lskd_core.bleu import detokenize, parse_generate_output, score

from .errors import InputFileError, UsageError, run_cli

__all__ = ["parse_generate_output", "detokenize", "score", "read_lines", "main"]


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
    except ValueError as error:
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
