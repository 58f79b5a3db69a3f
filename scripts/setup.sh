#!/usr/bin/env bash
# Set up a fresh Debian / Python 3.11 machine: a .venv at the repository root with the package,
# DeePMD-kit on the TensorFlow (CPU) backend and the test tools. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e ".[tensorflow,test]"
python -c "import deepmd, dflow, dpdata, dftd3; print('set-up OK: deepmd-kit', deepmd.__version__)"
