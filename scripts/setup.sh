#!/usr/bin/env bash
# Creates or updates the virtual environment at $VENV (default .venv) with everything the tests and
# the demo need, and installs the offline data packages when possible. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
APT_PACKAGES="dataset-fashion-mnist wordnet-base trans-de-en mueller7-dict"
# slurm-wlm + munge: the SLURM launcher's tests start a private single-node SLURM from these
# (tests/slurm_cluster.py; nothing is configured system-wide). LSKD_SETUP_SLURM=0 leaves them out.
if [ "${LSKD_SETUP_SLURM:-1}" != 0 ]; then
  APT_PACKAGES="$APT_PACKAGES slurm-wlm munge"
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating virtual environment $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"

echo "[setup] installing lskd (editable) with torch, torchvision and test tools"
$PIP install -q --upgrade "pip>=23" setuptools wheel
$PIP install -q -c constraints.txt -e ".[vision,dev]"

# fairseq-fixed builds C extensions against the installed torch, so build it without isolation
# (an isolated build would install a second torch just to compile). It declares torchaudio as a
# dependency, which translation never imports and which would pull a different torch: install it
# without dependencies and add the ones translation uses explicitly.
if ! "$VENV/bin/python" -c "import fairseq" >/dev/null 2>&1; then
  echo "[setup] building fairseq-fixed (compiles C extensions; pip caches the wheel)"
  $PIP install -q cython "numpy>=1.22"
  $PIP install -q -c constraints.txt --no-build-isolation --no-deps fairseq-fixed
fi
$PIP install -q -c constraints.txt "hydra-core" "omegaconf" regex "sacrebleu>=2.0" bitarray \
  scikit-learn packaging cffi sentencepiece sacremoses subword-nmt

# Plain `fairseq-train --criterion ls_kd` (no --user-dir): a .pth import hook that loads
# fairseq_plugin right after fairseq itself is imported, and nothing otherwise.
"$VENV/bin/python" -m fairseq_plugin.autoload install

missing=""
for pkg in $APT_PACKAGES; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing Debian packages:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing
  else
    echo "[setup] Debian packages are missing (offline data sets / local SLURM for tests). Run as root:"
    echo "    apt-get update && apt-get install -y$missing"
    echo "(tests and the demo that need them are skipped or fail with this hint until then)"
  fi
fi
echo "[setup] done: $VENV"
