#!/usr/bin/env bash
# The Table 5 grid in miniature on the CPU, offline: a small En->De (or En->Ru) corpus built from
# Debian dictionaries, 1-layer 64-dim transformers, a few hundred updates per model.
# 2 teachers + 8 students; about 10-20 minutes on 2 cores. BLEU is tiny: this checks the
# pipeline (LS teacher -> ls_kd students -> beam search -> BLEU), not the paper's numbers.
#
#   bash examples/translation/table5_offline_cpu.sh [en-de|en-ru] [DATA_DIR] [OUT_DIR]
set -euo pipefail
PAIR=${1:-en-de}
DATA=${2:-runs/data/offline.$PAIR}
OUT=${3:-runs/table5-offline.$PAIR}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -f "$DATA/bin/dict.en.txt" ] || "$PYTHON" -m fairseq_plugin.prepare_offline --pair "$PAIR" --out "$DATA" \
  --max-pairs "${MAX_PAIRS:-12000}" --bpe-size "${BPE_SIZE:-2000}"
"$PYTHON" "$HERE/table5_grid.py" --data "$DATA" --out "$OUT" --preset cpu "${@:4}"
