"""IWSLT'14 En->De / En->Ru preparation (text side of ``examples/translation/prepare-iwslt14.sh``).

The paper's NMT tables (Table 5: En->De, Table B.2: En->Ru) use IWSLT'14 TED data "following
Shen et al.", i.e. fairseq's IWSLT'14 recipe: tags stripped, Moses tokenisation, lower-casing,
length/ratio cleaning of train (1..175 tokens, ratio <= 1.5), valid = every 23rd training pair,
test = dev2010 + tst2010..2012 (+ TEDX dev2012 when present), joint BPE (10k merges) learnt on
train, ``fairseq-preprocess --joined-dictionary``.

This module runs on an already downloaded and extracted archive (the shell script downloads it)::

    python -m fairseq_plugin.prepare_iwslt --pair en-de --orig DIR/orig/de-en --out DIR [--bpe-size 10000]

and writes ``raw/`` (detokenised text; ``raw/test.<tgt>`` is the sacreBLEU reference), ``tok/``,
``bpe/`` and ``bin/`` like :mod:`fairseq_plugin.prepare_offline`.
"""

from __future__ import annotations

import argparse
import glob
import html
import json
import os
import re
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .errors import InputFileError, MissingInputError, UsageError, run_cli
from .prepare_offline import _write_lines, apply_bpe, binarize, learn_joint_bpe, tokenize_lines

_TRAIN_SKIP = re.compile(r"^\s*<(url|talkid|keywords|speaker|reviewer|translator|doc|/doc)\b")
_TRAIN_STRIP = re.compile(r"</?(title|description)>")
_SEG = re.compile(r"<seg[^>]*>(.*?)</seg>")


def read_train_tags(path: str) -> List[str]:
    """Text lines of a ``train.tags.*`` file: metadata lines dropped, title/description unwrapped."""
    lines = []
    for line in _read_text(path).splitlines():
        if _TRAIN_SKIP.match(line):
            continue
        lines.append(html.unescape(_TRAIN_STRIP.sub("", line)).strip())
    return lines


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except UnicodeDecodeError as error:
        raise InputFileError(
            f"{path}: not UTF-8 text (byte {error.start}); the archive is damaged: extract it again"
        ) from None


def read_xml_segments(path: str) -> List[str]:
    """``<seg id=..>text</seg>`` contents of an IWSLT dev/test XML file, in file order."""
    return [html.unescape(m.group(1)).strip() for m in _SEG.finditer(_read_text(path))]


def eval_files(orig: str, archive_pair: str, lang: str) -> List[str]:
    """dev2010, tst2010-2012 (and TEDX dev2012) files of one language, in the recipe's order."""
    order = ["TED.dev2010", "TEDX.dev2012", "TED.tst2010", "TED.tst2011", "TED.tst2012"]
    found = []
    for name in order:
        found += sorted(glob.glob(os.path.join(orig, f"IWSLT14.{name}.{archive_pair}.{lang}.xml")))
    return found


def clean_tokenized(src: Sequence[str], tgt: Sequence[str], min_len: int = 1, max_len: int = 175,
                    ratio: float = 1.5) -> List[int]:
    """Indices kept by Moses' clean-corpus-n rules (token counts in [min, max], length ratio)."""
    keep = []
    for i, (s, t) in enumerate(zip(src, tgt)):
        ns, nt = len(s.split()), len(t.split())
        if min_len <= ns <= max_len and min_len <= nt <= max_len and max(ns, nt) <= ratio * min(ns, nt):
            keep.append(i)
    return keep


def prepare_iwslt(pair: str, orig: str, out: str, bpe_size: int = 10000, workers: int = 4) -> Dict:
    """Run the recipe on an extracted archive directory ``orig``; returns the summary dict."""
    if pair not in ("en-de", "en-ru"):
        raise UsageError(f"pair must be en-de or en-ru, got {pair!r}")
    src, tgt = pair.split("-")
    archive_pair = "de-en" if pair == "en-de" else "en-ru"
    train_files = {lang: os.path.join(orig, f"train.tags.{archive_pair}.{lang}") for lang in (src, tgt)}
    for path in train_files.values():
        if not os.path.isfile(path):
            raise MissingInputError(f"{path} not found: is {orig} the extracted IWSLT'14 {archive_pair} archive?")
    train_raw = {lang: read_train_tags(path) for lang, path in train_files.items()}
    if len(train_raw[src]) != len(train_raw[tgt]):
        raise UsageError(f"train sides differ in length: {len(train_raw[src])} vs {len(train_raw[tgt])} lines")
    test_raw: Dict[str, List[str]] = {}
    for lang in (src, tgt):
        files = eval_files(orig, archive_pair, lang)
        if not files:
            raise MissingInputError(f"no IWSLT14.*.{archive_pair}.{lang}.xml dev/test files in {orig}")
        test_raw[lang] = [seg for path in files for seg in read_xml_segments(path)]

    tok_train = {lang: tokenize_lines(train_raw[lang], lang) for lang in (src, tgt)}
    keep = clean_tokenized(tok_train[src], tok_train[tgt])
    valid_idx = [i for n, i in enumerate(keep) if n % 23 == 0]
    train_idx = [i for n, i in enumerate(keep) if n % 23 != 0]
    splits = {
        "train": {lang: (train_idx, train_raw[lang], tok_train[lang]) for lang in (src, tgt)},
        "valid": {lang: (valid_idx, train_raw[lang], tok_train[lang]) for lang in (src, tgt)},
    }
    root = Path(out)
    for name in ("raw", "tok", "bpe"):
        (root / name).mkdir(parents=True, exist_ok=True)
    tokenized: Dict[str, Dict[str, List[str]]] = {}
    for split, sides in splits.items():
        tokenized[split] = {}
        for lang, (idx, raw, tok) in sides.items():
            _write_lines(root / "raw" / f"{split}.{lang}", [raw[i] for i in idx])
            tokenized[split][lang] = [tok[i] for i in idx]
    tokenized["test"] = {lang: tokenize_lines(test_raw[lang], lang) for lang in (src, tgt)}
    for lang in (src, tgt):
        _write_lines(root / "raw" / f"test.{lang}", test_raw[lang])
    for split in tokenized:
        for lang in (src, tgt):
            _write_lines(root / "tok" / f"{split}.{lang}", tokenized[split][lang])
    codes = root / "bpe" / "code"
    learn_joint_bpe(tokenized["train"][src] + tokenized["train"][tgt], codes, int(bpe_size))
    for split in tokenized:
        for lang in (src, tgt):
            _write_lines(root / "bpe" / f"{split}.{lang}", apply_bpe(tokenized[split][lang], codes))
    binarize(root / "bpe", root / "bin", src, tgt, workers=workers)
    summary = {"pair": pair, "source": src, "target": tgt, "bpe_merges": int(bpe_size), "lowercase": True,
               "sizes": {split: len(tokenized[split][src]) for split in tokenized}, "bin": str(root / "bin")}
    tmp = root / "prepare.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, root / "prepare.json")
    return summary


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = argparse.ArgumentParser(prog="python -m fairseq_plugin.prepare_iwslt", description=__doc__.split("\n")[0])
    parser.add_argument("--pair", required=True, choices=("en-de", "en-ru"))
    parser.add_argument("--orig", required=True, help="extracted archive directory (holds train.tags.*)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--bpe-size", type=int, default=10000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args(argv)
    _main.out = args.out  # type: ignore[attr-defined]
    summary = prepare_iwslt(args.pair, args.orig, args.out, args.bpe_size, args.workers)
    print(json.dumps(summary))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI; bad input, missing/corrupt archive files and OS errors -> one line, exit status 2."""
    _main.out = None  # type: ignore[attr-defined]
    return run_cli(_main, argv, prog="prepare_iwslt", fallback_path=lambda: getattr(_main, "out", None))


if __name__ == "__main__":
    sys.exit(main())
