#!/usr/bin/env bash
# Prepare IWSLT'14 En->De or En->Ru for fairseq: the data of the paper's Table 5 (En->De) and
# Table B.2 (En->Ru), following Shen et al.'s fairseq recipe. Needs the internet (or an archive).
#
#   bash examples/translation/prepare-iwslt14.sh en-de runs/data/iwslt14.en-de [de-en.tgz]
#   bash examples/translation/prepare-iwslt14.sh en-ru runs/data/iwslt14.en-ru [en-ru.tgz]
#
# Steps: download + extract -> strip tags (train.tags.*, XML dev/test) -> Moses tokenisation
# (sacremoses) + lower-casing -> clean train (1..175 tokens, ratio 1.5) -> valid = every 23rd
# training pair, test = dev2010 + tst2010..2012 -> joint BPE (subword-nmt, $BPE_TOKENS merges,
# train only) -> fairseq-preprocess --joined-dictionary into OUT/bin.
# OUT/raw/test.<tgt> is the detokenised reference for sacreBLEU (python -m fairseq_plugin.bleu).
#
# Environment: BPE_TOKENS (10000), WORKERS (4), PYTHON (python), IWSLT14_URL (archive URL).
# The En->Ru archive comes from the WIT3 IWSLT 2014 release; if its URL is unreachable, download
# en-ru.tgz by hand from https://wit3.fbk.eu (2014-01, texts/en/ru) and pass it as the 3rd argument.
set -euo pipefail

PAIR=${1:?usage: prepare-iwslt14.sh en-de|en-ru OUT_DIR [ARCHIVE.tgz]}
OUT=${2:?usage: prepare-iwslt14.sh en-de|en-ru OUT_DIR [ARCHIVE.tgz]}
ARCHIVE=${3:-}
BPE_TOKENS=${BPE_TOKENS:-10000}
WORKERS=${WORKERS:-4}
PYTHON=${PYTHON:-python}

case "$PAIR" in
  en-de) ARCHIVE_PAIR=de-en; URL=${IWSLT14_URL:-http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz} ;;
  en-ru) ARCHIVE_PAIR=en-ru; URL=${IWSLT14_URL:-https://wit3.fbk.eu/archive/2014-01/texts/en/ru/en-ru.tgz} ;;
  *) echo "error: PAIR must be en-de or en-ru, got '$PAIR'" >&2; exit 2 ;;
esac

"$PYTHON" -c "import sacremoses, subword_nmt, fairseq" 2>/dev/null || {
  echo "error: needs sacremoses, subword-nmt and fairseq in $PYTHON (pip install sacremoses subword-nmt fairseq-fixed)" >&2
  exit 2
}

mkdir -p "$OUT/orig"
if [ -z "$ARCHIVE" ]; then
  ARCHIVE="$OUT/orig/$ARCHIVE_PAIR.tgz"
  if [ ! -s "$ARCHIVE" ]; then
    echo "downloading $URL"
    if command -v curl >/dev/null; then
      curl -fL --retry 3 -o "$ARCHIVE.part" "$URL"
    else
      wget -O "$ARCHIVE.part" "$URL"
    fi
    mv "$ARCHIVE.part" "$ARCHIVE"
  fi
fi
tar -xzf "$ARCHIVE" -C "$OUT/orig"
ORIG="$OUT/orig/$ARCHIVE_PAIR"
# Some WIT3 archives nest a second archive per pair.
if [ ! -d "$ORIG" ] && [ -f "$OUT/orig/texts/${PAIR%%-*}/${PAIR##*-}/$ARCHIVE_PAIR.tgz" ]; then
  tar -xzf "$OUT/orig/texts/${PAIR%%-*}/${PAIR##*-}/$ARCHIVE_PAIR.tgz" -C "$OUT/orig"
fi

"$PYTHON" -m fairseq_plugin.prepare_iwslt --pair "$PAIR" --orig "$ORIG" --out "$OUT" \
  --bpe-size "$BPE_TOKENS" --workers "$WORKERS"
echo "fairseq data in $OUT/bin"
