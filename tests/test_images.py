"""images/: every Dockerfile lints clean, the tags build.sh makes are the workflow's default images, and
the Python pins are consistent.

The smoke test (opt-in: SIMPLIFY_PODMAN_SMOKE=1; needs root, podman, runc and debootstrap, ~6 min)
builds a Debian base with debootstrap, the light and fp-ase images with images/build.sh, and runs
SelectConfs (light) and RunFP with the dftd3 engine (fp-ase) inside them the way an Argo pod runs
them: dflow's generated script, parameters substituted, artifacts under /tmp/inputs. Their outputs
must equal the same OPs run on this machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import dpdata
import numpy as np
import pytest

from dflow_simplify.workflows.step_config import IMAGE_DEEPMD, IMAGE_FP, IMAGE_LIGHT, StageSettings

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "images"
HADOLINT = Path(sys.executable).with_name("hadolint")
DOCKERFILES = sorted(IMAGES.glob("*/Dockerfile"))


def hadolint(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "style", str(path)],
                          capture_output=True, text=True)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_lints_clean(dockerfile):
    proc = hadolint(dockerfile)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def test_hadolint_is_strict_enough_to_fail(tmp_path):
    """The lint above is live: an unpinned apt package, a root user and a missing --no-cache-dir fail it."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian:12.11-slim\nRUN apt-get update && apt-get install -y python3\n"
                   "RUN pip install dpdata\n")
    out = hadolint(bad).stdout
    assert {"DL3008", "DL3009", "DL3013", "DL3042"} <= set(re.findall(r"DL\d{4}", out)), out


def build_tags(*args: str, device: str = "cpu") -> dict[str, str]:
    proc = subprocess.run(["bash", str(IMAGES / "build.sh"), "--print", *args], capture_output=True, text=True,
                          check=True, env=dict(os.environ, DEVICE=device))
    return dict(line.split() for line in proc.stdout.splitlines())


def test_build_script_tags_are_the_workflow_defaults():
    tags = build_tags()
    assert tags == {"light": IMAGE_LIGHT, "deepmd": IMAGE_DEEPMD, "fp-ase": IMAGE_FP["dftd3"],
                    "fp-cp2k": IMAGE_FP["cp2k"]}
    assert IMAGE_FP["ase"] == IMAGE_FP["dftd3"] and IMAGE_FP["none"] == IMAGE_LIGHT
    assert build_tags("--registry", "reg.example.org/team/", "deepmd", device="cuda") == {
        "deepmd": "reg.example.org/team/" + IMAGE_DEEPMD + "-cuda"}
    bad = subprocess.run(["bash", str(IMAGES / "build.sh"), "--print", "vasp"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument vasp" in bad.stderr


def _pins(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)(\[[a-z0-9,\-]+\])?==([\w.+\-]+)", line)
            assert m, f"{path.name}: {line!r} is not pinned as name==version"
            pins[m.group(1).lower().replace("_", "-")] = m.group(3)
    return pins


def test_python_requirements_are_pinned_and_locked():
    for req in (IMAGES / "requirements").glob("*.txt"):
        assert _pins(req), req
    light, lock = _pins(IMAGES / "requirements" / "light.txt"), _pins(IMAGES / "requirements" / "light.lock")
    assert {k: lock.get(k) for k in light} == light  # the lock agrees with the direct pins
    assert "pydflow" in lock and "deepmd-kit" not in lock  # the light image stays light
    deepmd = _pins(IMAGES / "requirements" / "deepmd-cpu.txt")
    assert deepmd["deepmd-kit"] == _pins(IMAGES / "requirements" / "deepmd-cuda.txt")["deepmd-kit"]


# ---------------------------------------------------------------- smoke test: build and run with podman

SMOKE = os.environ.get("SIMPLIFY_PODMAN_SMOKE") == "1"
BASE_TAG = "localhost/dflow-simplify-base:bookworm"


@pytest.fixture(scope="module")
def built_images(tmp_path_factory):
    from tests.argo_pod import podman_env

    cache = Path(os.environ.get("SIMPLIFY_PODMAN_CACHE", Path.home() / ".cache" / "dflow-simplify-podman"))
    env = podman_env(cache)
    have = subprocess.run(["podman", "image", "exists", BASE_TAG], env=env).returncode == 0
    if not have:
        ca = {"EXTRA_CA_DIR": "/usr/local/share/ca-certificates"} if list(
            Path("/usr/local/share/ca-certificates").glob("*.crt")) else {}
        subprocess.run(["bash", str(IMAGES / "debootstrap-base.sh"), BASE_TAG, str(tmp_path_factory.mktemp("rootfs"))],
                       env={**env, **ca}, check=True)
    subprocess.run(["bash", str(IMAGES / "build.sh"), "--engine", "podman", "--base", BASE_TAG, "light", "fp-ase"],
                   env=dict(env, BUILD_EXTRA_ARGS="--network host"), check=True)
    return env


def _template(stage: str, op, fp_style: str):
    from dflow import config
    from dflow.python import PythonOPTemplate

    mode = config["mode"]
    config["mode"] = "default"  # the script Argo would get
    try:
        kwargs = StageSettings({}, fp_style).template(stage)
        return PythonOPTemplate(op, **kwargs), kwargs["image"]
    finally:
        config["mode"] = mode


def _run_locally(op_cls, inputs: dict, where: Path, monkeypatch):
    from dflow.python import OPIO

    where.mkdir(parents=True)
    monkeypatch.chdir(where)
    return op_cls().execute(OPIO(inputs))


def _read_param(pod: Path, name: str):
    return json.loads((pod / "outputs" / "parameters" / name).read_text())


def _systems_equal(a: Path, b: Path, labeled: bool) -> None:
    cls = dpdata.LabeledSystem if labeled else dpdata.System
    sa, sb = cls(str(a), fmt="deepmd/npy"), cls(str(b), fmt="deepmd/npy")
    assert sa.get_nframes() == sb.get_nframes() > 0
    keys = ("coords", "cells") + (("energies", "forces") if labeled else ())
    for k in keys:
        np.testing.assert_allclose(sa[k], sb[k], rtol=0, atol=1e-10, err_msg=k)


@pytest.mark.slow
@pytest.mark.skipif(not SMOKE, reason="opt-in: SIMPLIFY_PODMAN_SMOKE=1 (root, podman, runc, debootstrap; ~6 min)")
def test_ops_run_in_their_images_as_an_argo_pod_runs_them(built_images, tmp_path, monkeypatch):
    from dflow_simplify.ops.loop_state import LoopState
    from dflow_simplify.ops.run_fp import RunFP
    from dflow_simplify.ops.select_confs import SelectConfs
    from dflow_simplify.workflows.build import select_parameters
    from dflow_simplify.workflows.config import load_config
    from tests.argo_pod import run_in_pod
    from tests.test_config import _mapbi3

    cfg = load_config(_mapbi3(tmp_path, fp_style="dftd3", init_pick_number=5))
    state = tmp_path / "state0.json"
    LoopState.initial(cfg.systems).dump(state)
    select_params = dict(select_parameters(cfg).as_dict(), group_size=3)

    # SelectConfs (iteration 0: random pick) in the light image
    template, image = _template("select_confs", SelectConfs, cfg.fp_style)
    assert image == IMAGE_LIGHT
    params = {"select_params": select_params, "iter_index": 0}
    pod = run_in_pod(image, template, params, {"state": [state], "pick_data": cfg.pick_roots},
                     tmp_path / "select", built_images)
    local = _run_locally(SelectConfs, {"state": state, "model_devi": None, "pick_data": [Path(r) for r in cfg.pick_roots],
                                       **params}, tmp_path / "select-local", monkeypatch)
    pod_state = next((pod / "outputs" / "artifacts" / "state").rglob("state.json"))
    assert json.loads(pod_state.read_text()) == json.loads(Path(local["state"]).read_text())
    assert _read_param(pod, "n_selected") == local["n_selected"] == 5
    assert _read_param(pod, "n_fp_groups") == local["n_fp_groups"] == 2

    # RunFP with the dftd3 engine in the fp-ase image, on the first group the pod extracted
    group = next((pod / "outputs" / "artifacts" / "fp_inputs").rglob("000000"))
    template, image = _template("run_fp", RunFP, cfg.fp_style)
    assert image == IMAGE_FP["dftd3"]
    params = {"type_map": cfg.jdata["type_map"], "fp_style": "dftd3", "fp_params": cfg.jdata["fp_params"],
              "skip_bad_box": ""}
    pod = run_in_pod(image, template, params, {"frames": [group]}, tmp_path / "fp", built_images)
    local = _run_locally(RunFP, {"frames": group, "fp_files": None, **params}, tmp_path / "fp-local", monkeypatch)
    assert _read_param(pod, "n_labeled") == local["n_labeled"] == 3 and _read_param(pod, "n_failed") == 0
    pod_sys = sorted(p.parent for p in (pod / "outputs" / "artifacts" / "labeled_data").rglob("type.raw"))
    local_sys = sorted(p.parent for p in Path(local["labeled_data"]).resolve().rglob("type.raw"))
    assert [p.name for p in pod_sys] == [p.name for p in local_sys]
    for a, b in zip(pod_sys, local_sys):
        _systems_equal(a, b, labeled=True)
    # and the D3 correction really was added: dispersion lowers every frame's energy
    def total_energy(roots):
        return sum(dpdata.LabeledSystem(str(p), fmt="deepmd/npy")["energies"].sum() for p in roots)

    source = [p.parent for p in group.rglob("type.raw")]
    assert total_energy(pod_sys) < total_energy(source) - 0.01
