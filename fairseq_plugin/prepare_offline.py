"""Build a small real En->De / En->Ru parallel corpus offline from Debian packages and binarise it.

The paper's NMT experiments (Table 5: En->De, Table B.2: En->Ru) use IWSLT'14, which needs the
internet (see ``examples/translation/prepare-iwslt14.sh``). For tests and the CPU demo this module
builds a miniature of the same pipeline from dictionary example sentences shipped by Debian:

* en-de: the Ding dictionary (package ``trans-de-en``, ``/usr/share/trans/de-en``), lines
  ``German :: English`` whose ``|``-separated senses are aligned one to one; many senses are
  example sentences or multi-word phrases.
* en-ru: the example phrases inside the entries of Mueller's English-Russian dictionary
  (package ``mueller7-dict``, ``/usr/share/dictd/mueller7.dict.dz`` + ``.index``), written as
  ``english phrase русский перевод`` within an entry.

Pipeline (same steps as the IWSLT'14 recipe): extract pairs -> clean (annotations removed, length
and ratio filters, de-duplicated on the source side so no source sentence crosses splits) ->
deterministic hash-ordered train/valid/test split -> Moses tokenisation (sacremoses) and
lower-casing -> joint BPE (subword-nmt) learnt on train only -> ``fairseq-preprocess
--joined-dictionary`` into ``OUT/bin``.

Both sources are GPL: nothing derived from them is stored in this repository; the corpus is only
generated into ``OUT`` at run time.

Usage::

    python -m fairseq_plugin.prepare_offline --pair en-de --out data/ende [--max-pairs N] [--bpe-size N]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import unicodedata
import zlib
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from lskd_core.atomic import atomic_write_json, atomic_write_text

from .errors import InputFileError, MissingInputError, UsageError, run_cli

Pair = Tuple[str, str]  # (english source, foreign target)

DING_PATH = "/usr/share/trans/de-en"
MUELLER_DICT = "/usr/share/dictd/mueller7.dict.dz"
MUELLER_INDEX = "/usr/share/dictd/mueller7.index"
# Debian package that provides each source, named in the error when a file is missing.
SOURCES = {
    "en-de": {"package": "trans-de-en", "files": [DING_PATH], "env": "LSKD_DING_PATH",
              "licence": "GPL-2+ (Ding, Frank Richter, TU Chemnitz)"},
    "en-ru": {"package": "mueller7-dict", "files": [MUELLER_DICT, MUELLER_INDEX], "env": "LSKD_MUELLER_DICT",
              "licence": "GPL (Mueller's English-Russian dictionary, 7th ed., as packaged by Debian)"},
}
PAIRS = tuple(SOURCES)

# Dictionary annotations that are not translated text: {gender/pos}, [domain], (comments), <abbr>.
_ANNOTATION = re.compile(r"\s*(\{[^}]*\}|\[[^\]]*\]|\([^)]*\)|<[^>]*>)")
_SPACES = re.compile(r"\s+")
_CYRILLIC = re.compile(r"[А-Яа-яЁё]")
_LATIN = re.compile(r"[A-Za-z]")


def _clean_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    text = _ANNOTATION.sub("", text)
    return _SPACES.sub(" ", text).strip(" ,;:")


def read_ding_pairs(path: str) -> List[Pair]:
    """(English, German) sense pairs from the Ding dictionary (one ``|``-separated sense per pair).

    Lines read ``German senses :: English senses``; a line whose two sides have a different number
    of senses is skipped because its senses cannot be aligned. Senses listing alternatives
    (``;`` or ``/``) or elided text (``…``) are skipped: they are not single translations.
    """
    pairs: List[Pair] = []
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith("#") or " :: " not in line:
                continue
            german, english = line.rstrip("\n").split(" :: ", 1)
            de_senses, en_senses = german.split(" | "), english.split(" | ")
            if len(de_senses) != len(en_senses):
                continue
            for de, en in zip(de_senses, en_senses):
                if any(mark in de or mark in en for mark in (";", "/", "…", "...")):
                    continue
                pairs.append((_clean_text(en), _clean_text(de)))
    return pairs


def _b64_number(text: str) -> int:
    """dictd index offsets/lengths are base64 digits (A=0 ... /=63), most significant first."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    value = 0
    for char in text:
        value = value * 64 + alphabet.index(char)
    return value


# An example inside a Mueller entry: Latin-script phrase, then its Cyrillic translation.
_MUELLER_EXAMPLE = re.compile(r"^([A-Za-z][A-Za-z0-9'’ ,.!?\-]*?[A-Za-z0-9.!?'])\s+([А-Яа-яЁё«].*)$")
_MUELLER_SPLIT = re.compile(r"[;:]|\s\d+[.)]\s|\s_[IVX]+\s")
_MUELLER_LABEL = re.compile(r"(^|\s)_\S+")  # grammatical/domain labels such as _n. _разг.
_MUELLER_ENUM = re.compile(r"(^|\s)[а-я]\)")  # а) б) sub-sense markers: several translations


def read_mueller_pairs(dict_path: str, index_path: str) -> List[Pair]:
    """(English, Russian) example phrases from Mueller's dictionary (dictd format).

    Entries are located through the ``.index`` file (headword, base64 offset, base64 length); each
    entry body is split at ``;``/``:`` and sense numbers, and a segment that starts with a Latin
    phrase followed by Cyrillic text is an example with its translation.
    """
    opener = gzip.open if dict_path.endswith(".dz") or dict_path.endswith(".gz") else open
    try:
        with opener(dict_path, "rb") as handle:
            data = handle.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as error:  # truncated or damaged .dz
        raise InputFileError(
            f"{dict_path}: corrupt compressed dictionary ({error}); reinstall the package or point "
            f"--source-file at an intact copy"
        ) from None
    pairs: List[Pair] = []
    with open(index_path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3 or fields[0].startswith("00database"):
                continue
            start, length = _b64_number(fields[1]), _b64_number(fields[2])
            body = data[start:start + length].decode("utf-8", errors="replace")
            body = " ".join(body.split("\n")[1:])  # first line repeats the headword
            body = _SPACES.sub(" ", re.sub(r"\[[^\]]*\]", "", body))  # drop IPA transcriptions
            for segment in _MUELLER_SPLIT.split(body):
                segment = _MUELLER_LABEL.sub(" ", segment)
                segment = _SPACES.sub(" ", re.sub(r"\{[^}]*\}|\([^)]*\)", "", segment)).strip()
                match = _MUELLER_EXAMPLE.match(segment)
                if not match:
                    continue
                english, russian = match.group(1), match.group(2)
                if _LATIN.search(russian) or _MUELLER_ENUM.search(russian) or "=" in russian:
                    continue
                pairs.append((_clean_text(english), _clean_text(russian)))
    return pairs


def clean_pairs(
    pairs: Iterable[Pair], min_words: int = 3, max_words: int = 50, max_ratio: float = 3.0
) -> List[Pair]:
    """Length/ratio filters, de-duplication on the (case-folded) source side.

    De-duplicating on the source means one English sentence can never sit in two splits; the
    first pair in input order wins.
    """
    seen = set()
    kept: List[Pair] = []
    for source, target in pairs:
        n_src, n_tgt = len(source.split()), len(target.split())
        if min(n_src, n_tgt) < min_words or max(n_src, n_tgt) > max_words:
            continue
        if max(n_src, n_tgt) > max_ratio * min(n_src, n_tgt):
            continue
        key = source.casefold()
        if key in seen:
            continue
        seen.add(key)
        kept.append((source, target))
    return kept


def _pair_rank(pair: Pair, seed: int) -> str:
    return hashlib.sha1(f"{seed}\t{pair[0]}\t{pair[1]}".encode("utf-8")).hexdigest()


def split_pairs(
    pairs: Sequence[Pair],
    valid_size: int,
    test_size: int,
    seed: int = 1,
    max_pairs: Optional[int] = None,
    eval_min_words: int = 1,
) -> Dict[str, List[Pair]]:
    """Deterministic split: pairs ordered by a seeded hash, then test, valid, train in that order.

    The order depends only on the pairs' text and the seed (not on file order or Python's hash
    randomisation), so the same package version always gives the same corpus. Test and valid are
    drawn only from pairs whose both sides have at least ``eval_min_words`` words (shorter pairs,
    e.g. single dictionary words, may still train the model); ``max_pairs`` caps the total.
    """
    ordered = sorted(pairs, key=lambda pair: _pair_rank(pair, seed))
    if max_pairs is not None:
        ordered = ordered[:max_pairs]
    eligible = [pair for pair in ordered if min(len(pair[0].split()), len(pair[1].split())) >= eval_min_words]
    if valid_size + test_size >= len(eligible):
        raise UsageError(
            f"valid_size + test_size ({valid_size} + {test_size}) must leave training pairs out of "
            f"{len(eligible)} pairs"
        )
    held_out = set(eligible[:test_size + valid_size])
    return {
        "test": eligible[:test_size],
        "valid": eligible[test_size:test_size + valid_size],
        "train": [pair for pair in ordered if pair not in held_out],
    }


def default_eval_size(num_pairs: int) -> int:
    """Valid/test size when not given: 5 % of the corpus, clipped to [50, 1000] sentences."""
    return int(min(1000, max(50, num_pairs // 20)))


def _require(module: str, pip_name: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise SystemExit(
            f"prepare_offline needs the Python package {pip_name!r}: pip install {pip_name}"
        ) from None


def tokenize_lines(lines: Sequence[str], lang: str, lowercase: bool = True) -> List[str]:
    """Moses punctuation normalisation + tokenisation (sacremoses), then lower-casing (IWSLT'14)."""
    sacremoses = _require("sacremoses", "sacremoses")
    normalizer = sacremoses.MosesPunctNormalizer(lang=lang)
    tokenizer = sacremoses.MosesTokenizer(lang=lang)
    out = []
    for line in lines:
        text = tokenizer.tokenize(normalizer.normalize(line), escape=False, return_str=True)
        out.append(text.lower() if lowercase else text)
    return out


def learn_joint_bpe(train_lines: Iterable[str], codes_path: Path, num_merges: int) -> None:
    """Joint subword-nmt BPE on the concatenated training source and target (train split only)."""
    learn_bpe = _require("subword_nmt.learn_bpe", "subword-nmt")
    # subword-nmt draws a tqdm bar per merge on stderr; keep logs readable.
    with open(codes_path, "w", encoding="utf-8") as out, contextlib.redirect_stderr(io.StringIO()):
        learn_bpe.learn_bpe(list(train_lines), out, num_merges, min_frequency=2)


def apply_bpe(lines: Sequence[str], codes_path: Path) -> List[str]:
    apply_mod = _require("subword_nmt.apply_bpe", "subword-nmt")
    with open(codes_path, encoding="utf-8") as codes:
        bpe = apply_mod.BPE(codes, separator="@@")
    return [bpe.process_line(line) for line in lines]


def _write_lines(path: Path, lines: Sequence[str]) -> None:
    atomic_write_text(path, "".join(line.replace("\n", " ") + "\n" for line in lines))


def binarize(bpe_dir: Path, bin_dir: Path, src: str, tgt: str, workers: int = 1) -> None:
    """``fairseq-preprocess --joined-dictionary`` (run as a subprocess of this Python)."""
    command = [
        sys.executable, "-m", "fairseq_cli.preprocess",
        "--source-lang", src, "--target-lang", tgt,
        "--trainpref", str(bpe_dir / "train"), "--validpref", str(bpe_dir / "valid"),
        "--testpref", str(bpe_dir / "test"),
        "--destdir", str(bin_dir), "--joined-dictionary", "--workers", str(workers),
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"fairseq-preprocess failed ({' '.join(command)}):\n{result.stderr[-4000:]}")


def _package_version(package: str) -> Optional[str]:
    """The installed Debian package's version (recorded so a corpus can be traced), None off Debian."""
    try:
        proc = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True,
                              check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def source_files(pair: str, source_file: Optional[str] = None) -> List[str]:
    """The Debian files to read for ``pair``; a clear error names the package when one is missing."""
    if pair not in SOURCES:
        raise UsageError(f"pair must be one of {PAIRS}, got {pair!r}")
    spec = SOURCES[pair]
    if source_file is None:
        source_file = os.environ.get(spec["env"])
    files = list(spec["files"])
    if source_file is not None:
        files[0] = source_file
        if pair == "en-ru":
            files[1] = re.sub(r"\.dict(\.dz)?$", "", source_file) + ".index"
    for path in files:
        if not os.path.isfile(path):
            raise MissingInputError(
                f"{path} not found: the {pair} offline corpus is built from the Debian package "
                f"{spec['package']!r}; install it with `apt-get install {spec['package']}` "
                f"(or point --source-file / {spec['env']} at a copy)"
            )
    return files


def read_pairs(pair: str, source_file: Optional[str] = None) -> List[Pair]:
    files = source_files(pair, source_file)
    if pair == "en-de":
        return read_ding_pairs(files[0])
    return read_mueller_pairs(files[0], files[1])


def prepare(
    pair: str,
    out: str,
    max_pairs: Optional[int] = None,
    bpe_size: int = 8000,
    valid_size: Optional[int] = None,
    test_size: Optional[int] = None,
    seed: int = 1,
    source_file: Optional[str] = None,
    workers: int = 1,
    min_words: int = 3,
    max_words: int = 50,
    train_min_words: Optional[int] = None,
) -> Dict:
    """Run the whole pipeline into ``out``; returns (and writes ``out/prepare.json``) the summary.

    Layout: ``raw/`` cleaned detokenised text (sacreBLEU references), ``tok/`` tokenised
    lower-cased text, ``bpe/`` BPE codes and segmented text, ``bin/`` the fairseq data.
    """
    if max_pairs is not None and int(max_pairs) < 3:
        raise UsageError(f"max_pairs must be at least 3, got {max_pairs!r}")
    if int(bpe_size) < 1:
        raise UsageError(f"bpe_size must be a positive number of merges, got {bpe_size!r}")
    if not 1 <= int(min_words) <= int(max_words):
        raise UsageError(f"need 1 <= min_words <= max_words, got min_words={min_words!r}, max_words={max_words!r}")
    train_min = int(min_words) if train_min_words is None else int(train_min_words)
    if not 1 <= train_min <= int(min_words):
        raise UsageError(f"need 1 <= train_min_words <= min_words, got train_min_words={train_min_words!r}, "
                         f"min_words={min_words!r}")
    src, tgt = pair.split("-")
    pairs = clean_pairs(read_pairs(pair, source_file), min_words=train_min, max_words=int(max_words))
    total = len(pairs) if max_pairs is None else min(len(pairs), int(max_pairs))
    valid_size = default_eval_size(total) if valid_size is None else int(valid_size)
    test_size = default_eval_size(total) if test_size is None else int(test_size)
    splits = split_pairs(pairs, valid_size, test_size, seed=seed, max_pairs=max_pairs, eval_min_words=int(min_words))

    root = Path(out)
    dirs = {name: root / name for name in ("raw", "tok", "bpe")}
    for directory in dirs.values():
        directory.mkdir(parents=True, exist_ok=True)
    tokenized: Dict[str, Dict[str, List[str]]] = {}
    for split, split_pairs_ in splits.items():
        sources = [s for s, _ in split_pairs_]
        targets = [t for _, t in split_pairs_]
        _write_lines(dirs["raw"] / f"{split}.{src}", sources)
        _write_lines(dirs["raw"] / f"{split}.{tgt}", targets)
        tokenized[split] = {src: tokenize_lines(sources, src), tgt: tokenize_lines(targets, tgt)}
        for lang in (src, tgt):
            _write_lines(dirs["tok"] / f"{split}.{lang}", tokenized[split][lang])

    codes = dirs["bpe"] / "code"
    learn_joint_bpe(tokenized["train"][src] + tokenized["train"][tgt], codes, int(bpe_size))
    for split in splits:
        for lang in (src, tgt):
            _write_lines(dirs["bpe"] / f"{split}.{lang}", apply_bpe(tokenized[split][lang], codes))

    bin_dir = root / "bin"
    binarize(dirs["bpe"], bin_dir, src, tgt, workers=workers)
    summary = {
        "pair": pair, "source": src, "target": tgt, "seed": seed, "bpe_merges": int(bpe_size),
        "lowercase": True, "tokenizer": "moses (sacremoses)", "bpe": "subword-nmt, joint, train only",
        "sizes": {split: len(items) for split, items in splits.items()},
        "words": {"min": int(min_words), "max": int(max_words), "train_min": train_min},
        "available_pairs": len(pairs), "package": SOURCES[pair]["package"],
        "package_version": _package_version(SOURCES[pair]["package"]),
        "licence": SOURCES[pair]["licence"],
        "bin": str(bin_dir),
    }
    atomic_write_json(root / "prepare.json", summary, ensure_ascii=False)
    return summary


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fairseq_plugin.prepare_offline",
        description="Build a small En->De / En->Ru corpus from Debian dictionaries (offline) and binarise it.",
    )
    parser.add_argument("--pair", required=True, choices=PAIRS)
    parser.add_argument("--out", required=True, help="output directory (fairseq data in OUT/bin)")
    parser.add_argument("--max-pairs", type=int, default=None, help="use at most N sentence pairs (all by default)")
    parser.add_argument("--bpe-size", type=int, default=8000, help="number of joint BPE merges (default 8000)")
    parser.add_argument("--valid-size", type=int, default=None, help="valid sentences (default 5%%, 50..1000)")
    parser.add_argument("--test-size", type=int, default=None, help="test sentences (default 5%%, 50..1000)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the deterministic split")
    parser.add_argument("--source-file", default=None,
                        help="dictionary file to read instead of the Debian default location")
    parser.add_argument("--min-words", type=int, default=3,
                        help="drop pairs with a side shorter than this many words (default 3)")
    parser.add_argument("--max-words", type=int, default=50,
                        help="drop pairs with a side longer than this many words (default 50)")
    parser.add_argument("--train-min-words", type=int, default=None,
                        help="training pairs may be this short (e.g. 1: single dictionary words teach the "
                             "lexicon); valid/test keep --min-words (default: --min-words)")
    parser.add_argument("--workers", type=int, default=1, help="fairseq-preprocess workers")
    return parser


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    _main.out = args.out  # type: ignore[attr-defined]  (names the output when the OS does not)
    summary = prepare(
        args.pair, args.out, max_pairs=args.max_pairs, bpe_size=args.bpe_size,
        valid_size=args.valid_size, test_size=args.test_size, seed=args.seed,
        source_file=args.source_file, workers=args.workers, min_words=args.min_words, max_words=args.max_words,
        train_min_words=args.train_min_words,
    )
    print(json.dumps(summary, ensure_ascii=False))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI; bad input, missing/corrupt sources and OS errors -> one line, exit status 2."""
    _main.out = None  # type: ignore[attr-defined]
    return run_cli(_main, argv, prog="prepare_offline", fallback_path=lambda: getattr(_main, "out", None))


if __name__ == "__main__":
    sys.exit(main())
