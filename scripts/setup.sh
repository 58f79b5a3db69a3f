#!/usr/bin/env bash
# Set up a fresh Debian / Python 3.11 machine: a .venv at the repository root with the package and
# DeePMD-kit 3.2.0 for both backends (TensorFlow CPU and PyTorch CPU), the test tools, Debian's CP2K and Chromium.
# Safe to re-run.
#
# The PyPI deepmd-kit wheel's PyTorch op library is built for torch 2.11 and does not load with the
# CPU torch 2.13.0 this machine provides, so deepmd-kit is built from its sdist (a few minutes, once:
# pip caches the wheel). torch is pinned so that pip never pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
# CP2K (Debian's package) for the cp2k FP engine, its tests and examples/ag-au-cp2k; Chromium and its driver
# for the tests that open report.html in a headless browser (tests/browser.py)
if ! command -v cp2k.psmp >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    export DEBIAN_FRONTEND=noninteractive
    PACKAGES="cp2k chromium chromium-driver"
    $SUDO apt-get install -y -q $PACKAGES >/dev/null || { $SUDO apt-get update -q && $SUDO apt-get install -y -q $PACKAGES >/dev/null; }
fi
# podman, runc and debootstrap for the opt-in image smoke test (SIMPLIFY_PODMAN_SMOKE=1)
if [ "${SIMPLIFY_PODMAN_SMOKE:-}" = 1 ] && ! command -v podman >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q podman runc debootstrap >/dev/null
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==2.13.0" "tensorflow-cpu==2.21.0" e3nn
if ! python -c "import deepmd.pt.cxx_op" >/dev/null 2>&1; then
    DP_ENABLE_PYTORCH=1 CMAKE_ARGS=-DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON \
        python -m pip install -q --no-binary deepmd-kit "deepmd-kit==3.2.0"
fi
python -m pip install -q -e ".[test]"
# DP-GEN 0.14 in an environment of its own: the reference of the conformance tests and the benchmarks
if [ ! -x .venv-dpgen/bin/dpgen ]; then
    python3 -m venv .venv-dpgen && .venv-dpgen/bin/python -m pip install -q "dpgen==0.14.0"
fi
python -c "import deepmd.pt.cxx_op, deepmd.tf, dflow, dpdata, dftd3; print('set-up OK: deepmd-kit', __import__('deepmd').__version__, 'with TensorFlow and PyTorch')"
