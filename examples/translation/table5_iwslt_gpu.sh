#!/usr/bin/env bash
# Table 5 (En->De) / Table B.2 (En->Ru) on IWSLT'14 with a GPU: alpha in {0, 0.1} x T in {1, 2, 3, 64}.
# 2 teachers + 8 students of transformer_iwslt_de_en (each ~50k updates; roughly 2-4 h per model
# on one modern GPU with --fp16).
#
#   bash examples/translation/table5_iwslt_gpu.sh [en-de|en-ru] [DATA_DIR] [OUT_DIR]
set -euo pipefail
PAIR=${1:-en-de}
DATA=${2:-runs/data/iwslt14.$PAIR}
OUT=${3:-runs/table5-iwslt14.$PAIR}
PYTHON=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -f "$DATA/bin/dict.en.txt" ] || bash "$HERE/prepare-iwslt14.sh" "$PAIR" "$DATA"
"$PYTHON" "$HERE/table5_grid.py" --data "$DATA" --out "$OUT" --preset gpu "${@:4}"
