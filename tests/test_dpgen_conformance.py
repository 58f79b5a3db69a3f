"""Our classification against DP-GEN 0.14's own `post_model_devi`, frame by frame, run in DP-GEN's environment
(scripts/setup.sh installs it into .venv-dpgen): deviations only, energy and force levels, and DP-GEN's
true-error levels (dpgen PR #1321), on 300 frames whose values straddle every level."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from dflow_simplify.ops.selection import ACCURATE, CANDIDATE, FAILED, TrustLevels, classify
from tests.conftest import ROOT

INF = float("inf")
F, E = 3, 6  # max_devi_f and devi_e among dp model-devi's 7 columns


def dpgen_python() -> str | None:
    for candidate in (os.environ.get("DPGEN_PYTHON"), ROOT / ".venv-dpgen" / "bin" / "python", "/tmp/dpgen-venv/bin/python"):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


CASES = {
    "force": {"model_devi_f_trust_lo": 0.1, "model_devi_f_trust_hi": 0.3,
              "model_devi_e_trust_lo": INF, "model_devi_e_trust_hi": INF},
    "energy": {"model_devi_f_trust_lo": INF, "model_devi_f_trust_hi": INF,
               "model_devi_e_trust_lo": 0.01, "model_devi_e_trust_hi": 0.05},
    "both": {"model_devi_f_trust_lo": 0.1, "model_devi_f_trust_hi": 0.3,
             "model_devi_e_trust_lo": 0.01, "model_devi_e_trust_hi": 0.05},
    "true_force": {"model_devi_f_trust_lo": 0.1, "model_devi_f_trust_hi": 0.3,
                   "model_devi_e_trust_lo": INF, "model_devi_e_trust_hi": INF,
                   "true_error_f_trust_lo": 0.05, "true_error_f_trust_hi": 0.4},
    "true_all": {"model_devi_f_trust_lo": 0.1, "model_devi_f_trust_hi": 0.3,
                 "model_devi_e_trust_lo": 0.01, "model_devi_e_trust_hi": 0.05,
                 "true_error_f_trust_lo": 0.05, "true_error_f_trust_hi": 0.4,
                 "true_error_e_trust_lo": 0.005, "true_error_e_trust_hi": 0.08},
}


def _rows(rng, n):
    rows = np.exp(rng.uniform(np.log(1e-3), np.log(1.0), (n, 7)))
    rows[:, E] /= 10  # energies per atom an order below forces, as in practice
    return np.vectorize(lambda x: float(f"{x:.6e}"))(rows)  # the precision of the files DP-GEN reads


def _trust(levels: dict) -> TrustLevels:
    g = levels.get
    return TrustLevels(g("model_devi_f_trust_lo"), g("model_devi_f_trust_hi"), g("model_devi_e_trust_lo"),
                       g("model_devi_e_trust_hi"), g("true_error_f_trust_lo", INF), g("true_error_f_trust_hi", INF),
                       g("true_error_e_trust_lo", INF), g("true_error_e_trust_hi", INF))


@pytest.fixture(scope="module")
def dpgen_verdicts(tmp_path_factory):
    py = dpgen_python()
    if py is None:
        pytest.skip("DP-GEN 0.14 not installed (scripts/setup.sh puts it in .venv-dpgen; or set DPGEN_PYTHON)")
    rng = np.random.default_rng(0)
    n = 300
    devi, err = _rows(rng, n), _rows(rng, n)
    cases = {name: {"devi": devi.tolist(), "true_error": err.tolist(), "trust": levels} for name, levels in CASES.items()}
    tmp = tmp_path_factory.mktemp("dpgen")
    (tmp / "cases.json").write_text(json.dumps(cases))
    proc = subprocess.run([py, str(ROOT / "tests" / "dpgen_post_model_devi.py"), str(tmp / "cases.json"),
                           str(tmp / "work")], capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return devi, err, json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", sorted(CASES))
def test_classification_equals_dpgen_frame_by_frame(dpgen_verdicts, name):
    devi, err, verdicts = dpgen_verdicts
    got = verdicts[name]
    assert "error" not in got, got
    ours = classify({"f": devi[:, F], "e": devi[:, E], "f_err": err[:, F], "e_err": err[:, E]}, _trust(CASES[name]))
    for label, folder in ((CANDIDATE, "picked"), (FAILED, "rest"), (ACCURATE, "accurate")):
        assert [i for i, lab in enumerate(ours) if lab == label] == got[folder], label
    # every class occurs, so the comparison is not vacuous
    assert all(len(got[k]) > 10 for k in ("picked", "rest", "accurate"))
