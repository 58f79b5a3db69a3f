"""The real super-OP, driven in dflow's debug mode through several iterations with FAKE training and model
deviation (tests/fake_ops.py): recursion, the stop conditions, resume, step keys, failed frames, the probe.
PrepTrain, SelectConfs and RunFP are the real OPs (RunFP in labeled mode, or with ASE's EMT); about 90 s in all."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dpdata
import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from dflow_simplify.ops.classified import read_classified
from dflow_simplify.ops.loop_state import LoopState, flatten
from tests.conftest import ROOT, dataset_frame_ids, run_cli, tiny_training_param

TYPE_MAP = ["Ag", "Au"]


@pytest.fixture(scope="module")
def pick_data(tmp_path_factory) -> Path:
    """Two systems of 4-atom fcc cells, 30 frames each, labeled by EMT (the 'new level' of labeled mode)."""
    root = tmp_path_factory.mktemp("pick")
    rng = np.random.default_rng(0)
    multi = dpdata.MultiSystems(type_map=TYPE_MAP)
    for n_au in (0, 2):
        frames = None
        for _ in range(30):
            atoms = bulk("Ag", "fcc", a=4.1, cubic=True)
            atoms.set_chemical_symbols(["Au"] * n_au + ["Ag"] * (4 - n_au))
            atoms.rattle(stdev=0.05, seed=int(rng.integers(1 << 30)))
            atoms.calc = EMT()
            frame = dpdata.LabeledSystem(atoms, fmt="ase/structure", type_map=TYPE_MAP)
            frames = frame if frames is None else frames + frame
        multi.append(frames)
    multi.to_deepmd_npy(str(root), set_size=10**6)
    return root


@pytest.fixture
def fake_env(tmp_path, monkeypatch) -> Path:
    """The OPs' subprocesses import tests.fake_ops; each fake execution is logged to the returned file."""
    monkeypatch.setenv("PYTHONPATH", str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    log = tmp_path / "fake-ops.log"
    monkeypatch.setenv("FAKE_OPS_LOG", str(log))
    return log


def write_config(tmp_path: Path, pick_data: Path, **overrides) -> Path:
    cfg = {
        "type_map": TYPE_MAP, "pick_data": str(pick_data), "labeled": True, "numb_models": 2,
        "init_pick_number": 10, "iter_pick_number": 10,
        "model_devi_f_trust_lo": 0.05, "model_devi_f_trust_hi": 10.0, "pick_seed": 3,
        "default_training_param": tiny_training_param(TYPE_MAP),
        "step_configs": {"run_fp": {"group_size": 10}},
    }
    cfg.update(overrides)
    path = tmp_path / "wiring.json"
    path.write_text(json.dumps(cfg))
    return path


def run(tmp_path: Path, pick_data: Path, out: str = "out", env: dict | None = None,
        **overrides) -> tuple[subprocess.CompletedProcess, Path]:
    """The loop with the fake stages (tests/run_fake_loop.py), as `submit_simplify.py` runs the real ones."""
    path = write_config(tmp_path, pick_data, **overrides)
    output = tmp_path / out
    proc = subprocess.run([sys.executable, "-m", "tests.run_fake_loop", str(path), str(output)], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, **(env or {})})
    return proc, output


def step_dirs(output: Path) -> dict[str, Path]:
    """Step key -> folder of a local run's steps."""
    (wf_dir,) = [p for p in (output / "work").iterdir() if p.name.startswith("simplify-")]
    return {p.name: p for p in wf_dir.iterdir() if (p / "phase").exists()}


FLAKY = {"labeled": False, "fp_style": "ase", "fp_params": {"calculator": "tests.failing_calculator:FlakyEMT"}}


@pytest.fixture(scope="module")
def flaky_run(pick_data, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, list[str]]:
    """One loop: labels by an engine failing on about one frame in five (tests/failing_calculator.py), a probe of
    2 frames per round and a force-error goal the fake probe error (0.5 * exp(-n_train / 8) eV/A) meets in
    iteration 2, while candidates are left (trust lo 0.02)."""
    tmp = tmp_path_factory.mktemp("flaky")
    log = tmp / "fake-ops.log"
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), "FAKE_OPS_LOG": str(log)}
    proc, out = run(tmp, pick_data, env=env, ratio_failed=0.6, probe_number=2, conv_f_rmse=0.1,
                    model_devi_f_trust_lo=0.02, **FLAKY)
    return proc, out, log.read_text().splitlines()


def test_the_loop_recurses_until_the_measured_error_is_met(flaky_run):
    proc, out, log = flaky_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    its = report["iterations"]
    assert [it["n_selected"] for it in its] == [10, 10, 0] and report["stopped_by"] == "converged"
    assert its[-1]["n_candidate"] > 0 and [it["n_probe"] for it in its] == [2, 2, 0]
    assert report["n_in_dataset"] == report["n_relabeled"] < 24
    per_system = report["relabeled_per_system"]  # keyed as pick_data's systems, as many frames as the dataset
    assert sum(n for n, _ in per_system.values()) == report["n_in_dataset"]
    assert all(0 < n <= of == 30 for n, of in per_system.values())  # two systems of 30 frames
    # both models of an iteration train on the same set: all labeled frames but the newest probe
    trained = [int(ln.split("n_train=")[1]) for ln in log if ln.startswith("run-train")]
    assert len(trained) == 4 and trained[0] == trained[1] < trained[2] == trained[3]
    keys = step_dirs(out)
    for i in (1, 2):
        assert {f"iter-{i:06d}--prep-train", f"iter-{i:06d}--run-train-0000", f"iter-{i:06d}--run-train-0001",
                f"iter-{i:06d}--model-devi-000000", f"iter-{i:06d}--select-confs"} <= set(keys)
    # 10 picks in one group of 10, then the probe's 2 frames in a group of their own
    assert {"iter-000000--run-fp-000000", "iter-000000--run-fp-000001"} <= set(keys)
    assert "iter-000000--run-fp-000002" not in keys and "iter-000002--run-fp-000000" not in keys
    assert len(list((out / "models").iterdir())) == 2


def test_model_devi_in_shards_gives_the_same_run(flaky_run, pick_data, tmp_path):
    """shard_size 20: the 60 frames in 3 ModelDevi slices (the middle one across the two systems), each
    evaluating only its frames still in the pool and handing over its candidates; picks, labels and report as
    with one slice."""
    _, ref, _ = flaky_run
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc, out = run(tmp_path, pick_data, env=env, ratio_failed=0.6, probe_number=2, conv_f_rmse=0.1,
                    model_devi_f_trust_lo=0.02, **FLAKY,
                    step_configs={"run_fp": {"group_size": 10}, "model_devi": {"shard_size": 20}})
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, want = (json.loads((d / "report.json").read_text()) for d in (out, ref))
    for k in ("workflow_id", "wall_time_s"):
        got.pop(k), want.pop(k)
    assert got == want
    assert dataset_frame_ids(out) == dataset_frame_ids(ref)
    keys = step_dirs(out)
    assert {k for k in keys if k.startswith("iter-000001--model-devi-")} == {f"iter-000001--model-devi-{i:06d}"
                                                                            for i in range(3)}
    # shard 1 holds frames 20-39: the last ten of one system and the first ten of the other
    shard = read_classified(next(keys["iter-000001--model-devi-000001"].rglob("shard.000001/model_devi.npz")))
    first, second = sorted(LoopState.load(next(keys["iter-000001--prep-train"].rglob("state.json"))).systems)
    allowed = {(first, i) for i in range(20, 30)} | {(second, i) for i in range(10)}
    assert set(shard.candidates + shard.failed) <= allowed and 0 < shard.n_pool <= 20


def test_the_terminal_shows_iterations_not_the_steps_output(flaky_run):
    """Each step's own output goes to its log file under work/; the terminal gets a row per iteration."""
    proc, out, _ = flaky_run
    assert "FAKE TRAINER NOTICE" not in proc.stdout + proc.stderr
    assert "FAKE TRAINER NOTICE" in (step_dirs(out)["iter-000001--run-train-0000"] / "log.txt").read_text()
    lines = proc.stdout.splitlines()
    assert sum(ln.startswith("[iteration ") for ln in lines) == 3 and len(lines) <= 10, proc.stdout


def test_failed_labels_go_back_to_the_pool_once_then_retire(flaky_run):
    proc, out, _ = flaky_run
    report = json.loads((out / "report.json").read_text())
    assert report["n_fp_failed"] > 0
    steps = step_dirs(out)
    state = LoopState.load(steps["iter-000002--select-confs"] / "outputs" / "artifacts" / "state" / "state.json")
    retired, retried = set(flatten(state.fp_failed)), set(flatten(state.fp_retry))
    assert retired | retried and not (retired | retried) & set(flatten(state.picked))
    failures = [f for p in out.rglob("failures.json") if "outputs" in str(p) for f in json.loads(p.read_text())]
    assert failures and all("injected failure" in f["reason"] for f in failures)


def test_a_failed_run_resumes_reusing_every_finished_step(tmp_path, pick_data, fake_env, monkeypatch):
    monkeypatch.setenv("FAKE_TRAIN_FAIL_ABOVE", "0")  # iteration 1's training fails
    proc, out = run(tmp_path, pick_data, stop_iter=1)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "iter-000001--run-train-0000: FatalError: fake training failure" in proc.stderr
    log = step_dirs(out)["iter-000001--run-train-0000"] / "log.txt"
    assert f"(log: {log})" in proc.stderr and "deterministic: fix its cause first" in proc.stderr
    done = {k: (d / "phase").stat().st_mtime_ns for k, d in step_dirs(out).items()
            if (d / "phase").read_text().strip() == "Succeeded"}
    assert {"iter-000000--select-confs", "iter-000000--run-fp-000000", "iter-000001--prep-train"} <= set(done)
    monkeypatch.delenv("FAKE_TRAIN_FAIL_ABOVE")
    proc, out = run(tmp_path, pick_data, stop_iter=1)  # the same command again, on the same output folder
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = step_dirs(out)
    assert {k: (steps[k] / "phase").stat().st_mtime_ns for k in done} == done  # not run again
    assert fake_env.read_text().splitlines().count("run-train 0000 n_train=10") == 2  # failed once, then ran
    report = json.loads((out / "report.json").read_text())
    assert [it["n_selected"] for it in report["iterations"]] == [10, 0] and report["stopped_by"] == "stop_iter"


def test_a_ratio_failed_stop_is_fatal_not_retried(tmp_path, pick_data, fake_env):
    proc, out = run(tmp_path, pick_data, ratio_failed=0.0, **FLAKY)
    assert proc.returncode == 1
    assert "iter-000001--prep-train: FatalError:" in proc.stderr and "more than ratio_failed = 0.0" in proc.stderr
    assert not fake_env.exists()  # nothing trained


def test_status_reads_the_run_record_not_the_config(flaky_run, tmp_path):
    """status/watch/stop/delete need neither the config nor its inputs: the record carries the settings."""
    _, out, _ = flaky_run
    record = json.loads((out / "workflow.json").read_text())
    assert record["n_frames"] == 60 and record["mode"] == "local"
    Path(record["config"]).rename(tmp_path / "moved.json")
    proc = run_cli(["status", out])
    assert proc.returncode == 0 and "Succeeded" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    proc = run_cli(["download", out])  # download writes the report again: it needs the config
    assert proc.returncode == 2 and "is not there; give it with --config" in proc.stderr


def test_a_local_run_with_its_inputs_in_s3_writes_no_key_to_disk(tmp_path, pick_data, fake_env):
    """DFLOW_DEBUG_S3: dflow writes its S3 settings into every OP script under work/; the keys stay in memory."""
    from tests.servers import MotoS3

    access, secret = "AKIA-WIRING-TEST", "wiring-secret-5f3e"
    s3 = MotoS3("wiring")
    try:
        s3_conf = {"endpoint": s3.endpoint, "bucket_name": "wiring", "access_key": access, "secret_key": secret,
                   "secure": False}
        proc, out = run(tmp_path, pick_data, env={"DFLOW_DEBUG_S3": "true"}, stop_iter=1, dflow_s3_config=s3_conf)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert any("GET" == e[0] for e in s3.log) and (out / "report.json").exists()  # the inputs came from S3
    finally:
        s3.close()
    holding = [p for p in out.rglob("*") if p.is_file() and (secret.encode() in p.read_bytes()
                                                             or access.encode() in p.read_bytes())]
    assert not holding, holding[:5]


def test_no_output_parameter_grows_with_the_pick(tmp_path):
    """10,000 frames picked in iteration 0 (4 labeling groups of 2,500), then a training iteration: every output
    parameter of every step stays under 64 KB (Argo caps one at 256 KB, and the workflow object at ~1 MB): the
    frame groups, id lists and reports travel as artifacts."""
    n, root = 12_000, tmp_path / "pick" / "big"
    (root / "set.000").mkdir(parents=True)
    (root / "type.raw").write_text("0\n")
    (root / "type_map.raw").write_text("Ag\nAu\n")
    rng = np.random.default_rng(0)
    arrays = {"coord": rng.uniform(0, 3, (n, 3)), "box": np.tile(np.eye(3).ravel() * 3, (n, 1)),
              "energy": rng.normal(size=n), "force": rng.normal(size=(n, 3))}
    for name, a in arrays.items():
        np.save(root / "set.000" / f"{name}.npy", a)
    env = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc, out = run(tmp_path, tmp_path / "pick", env=env, init_pick_number=10_000, iter_pick_number=10_000,
                    stop_iter=1, step_configs={"run_fp": {"group_size": 2_500}})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["iterations"][0]["n_relabeled"] == 10_000 and len(report["iterations"]) == 2
    sizes = {f"{step}/{f.name}": f.stat().st_size for step, d in step_dirs(out).items()
             for f in (d / "outputs" / "parameters").glob("*") if f.is_file()}
    assert sizes and max(sizes.values()) < 64 * 1024, sorted(sizes.items(), key=lambda kv: -kv[1])[:5]


FAKE_OPS_PATH = {"PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}  # the OPs import tests.*


def _start(tmp_path: Path, pick_data: Path, output: Path, **overrides) -> subprocess.Popen:
    """The loop of `run` in the background, its output in tmp_path/stdout.txt and stderr.txt (files, not pipes:
    a process left alive would keep a pipe open)."""
    path = write_config(tmp_path, pick_data, **overrides)
    with open(tmp_path / "stdout.txt", "w") as out, open(tmp_path / "stderr.txt", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "tests.run_fake_loop", str(path), str(output)], cwd=ROOT,
                                env={**os.environ, **FAKE_OPS_PATH}, stdout=out, stderr=err)


def _wait_for_step(output: Path, key: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Until step `key` of the run in `output` is running (its process started)."""
    import time

    deadline = time.monotonic() + timeout
    while not any((p / key / "pid").exists() for p in (output / "work").glob("simplify-*")):
        assert proc.poll() is None, "the run ended before the step started"
        assert time.monotonic() < deadline, f"{key} did not start"
        time.sleep(0.05)


def _same_run(out: Path, ref: Path) -> None:
    got, want = (json.loads((d / "report.json").read_text()) for d in (out, ref))
    for k in ("workflow_id", "wall_time_s"):
        got.pop(k), want.pop(k)
    assert got == want
    assert dataset_frame_ids(out) == dataset_frame_ids(ref)


def test_kill_9_of_the_main_process_alone_then_the_same_command_resumes(flaky_run, pick_data, tmp_path):
    """As an OOM killer or a closed terminal does: the main process killed in the middle of iteration 1's training
    (its forked pool workers running the RunTrain slices). Every process of the run ends with it; the same
    command takes the folder over at once and finishes with the uninterrupted run's dataset."""
    import time

    import psutil

    from dflow_simplify.workflows.processes import running

    _, ref, _ = flaky_run
    settings = dict(ratio_failed=0.6, probe_number=2, conv_f_rmse=0.1, model_devi_f_trust_lo=0.02, **FLAKY)
    out = tmp_path / "out"
    proc, family = _start(tmp_path, pick_data, out, **settings), []
    try:
        _wait_for_step(out, "iter-000001--run-train-0001", proc)
        family = psutil.Process(proc.pid).children(recursive=True)
        assert len(family) >= 3  # the guard, the pool workers, a slice's OP
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 15
        while any(running(p.pid) for p in family) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in family if running(p.pid)]
    finally:
        for p in [proc, *family]:  # what this test started, should it fail
            if running(p.pid):
                p.kill()
    done = {k: (d / "phase").stat().st_mtime_ns for k, d in step_dirs(out).items()
            if (d / "phase").read_text() == "Succeeded"}
    assert "iter-000001--prep-train" in done
    again, out = run(tmp_path, pick_data, env=FAKE_OPS_PATH, **settings)  # the same command, same output folder
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming workflow" in again.stdout
    steps = step_dirs(out)
    assert {k: (steps[k] / "phase").stat().st_mtime_ns for k in done} == done  # reused, not run again
    _same_run(out, ref)


def test_a_full_disk_stops_the_run_naming_it_and_the_rerun_resumes(flaky_run, pick_data, tmp_path):
    """The output folder's file system (a 32 MB tmpfs) fills up while iteration 1's RunFP runs: the run stops
    with "no space left on" that file system; with space freed, the same command finishes with the
    uninterrupted run's dataset (nothing written half-way was taken for finished)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(disk)], capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    _, ref, _ = flaky_run
    settings = dict(ratio_failed=0.6, probe_number=2, conv_f_rmse=0.1, model_devi_f_trust_lo=0.02, **FLAKY)
    out = disk / "out"
    try:
        proc = _start(tmp_path, pick_data, out, **settings)
        try:
            _wait_for_step(out, "iter-000001--run-fp-000000", proc)
            with open(disk / "filler", "wb", buffering=0) as f:  # whatever else writes on that disk takes the rest
                with pytest.raises(OSError, match="No space left on device"):
                    while True:
                        f.write(b"\0" * (1 << 20))
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
        stderr = (tmp_path / "stderr.txt").read_text()
        assert proc.returncode == 1
        assert f"error: no space left on {disk} (" in stderr or f": no space left on {disk} (" in stderr, stderr[-3000:]
        (disk / "filler").unlink()
        again, out = run(tmp_path, pick_data, out="disk/out", env=FAKE_OPS_PATH, **settings)
        assert again.returncode == 0, again.stderr[-3000:]
        _same_run(out, ref)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def test_download_refuses_a_target_inside_pick_data(flaky_run, pick_data, tmp_path):
    _, out, _ = flaky_run
    config = write_config(tmp_path, pick_data, ratio_failed=0.6, probe_number=2, conv_f_rmse=0.1,
                          model_devi_f_trust_lo=0.02, **FLAKY)  # the run's own config may have been moved away
    proc = run_cli(["download", out, "--config", config, "-o", pick_data / "downloaded"])
    assert proc.returncode == 2 and "the output folder is inside pick_data" in proc.stderr, proc.stderr[-2000:]
    assert not (pick_data / "downloaded").exists()
