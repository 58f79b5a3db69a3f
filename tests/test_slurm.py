"""The example through a real one-node Slurm (scripts/slurm-local.sh): training, model deviation and labeling
as batch jobs through dpdispatcher, in local mode; over SSH to 127.0.0.1 too."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dflow_simplify.workflows.dispatch import JOB_IDS_LINE
from tests.conftest import ROOT, SHORT, dataset_frame_ids, example_config, run_cli

pytestmark = pytest.mark.slow
SCRIPT = ROOT / "scripts" / "slurm-local.sh"
DISPATCHED = re.compile(r"--(run-train-\d+|model-devi-\d+|run-fp-\d+)$")


def _script(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=900)


def _unavailable(why: str):
    if os.environ.get("CI"):  # CI runs these: a machine that cannot is a failure there, not a skip
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(scope="session")
def slurm():
    """The one-node cluster, started by the repository's script (stopped after unless it was up before)."""
    if os.geteuid() != 0:
        _unavailable("scripts/slurm-local.sh needs root (it installs slurm-wlm and starts munged, slurmctld, slurmd)")
    was_up = _script("status").returncode == 0
    started = _script("start")
    if started.returncode:
        _unavailable(f"scripts/slurm-local.sh start failed: {started.stderr.strip()[-800:]}")
    yield
    if not was_up:
        _script("stop")


@pytest.fixture(scope="session")
def sshd(slurm) -> Path:
    """An sshd on 127.0.0.1:2222 letting root in with the key it returns."""
    started = _script("ssh")
    if started.returncode:
        _unavailable(f"scripts/slurm-local.sh ssh failed: {started.stderr.strip()[-800:]}")
    return Path(re.search(r"key (\S+)", started.stdout).group(1))


def _slurm_config(folder: Path, edit=None) -> Path:
    """examples/ag-au-emt-d3/config-slurm.json cut short as the plain reference run (SHORT), in `folder`,
    edited by `edit`."""
    return example_config(folder, "config-slurm.json", edit, **SHORT)


def _dispatched_dirs(out: Path) -> dict[str, Path]:
    return {d.name: d for d in (out / "work").glob("*/iter-*") if DISPATCHED.search(d.name)}


def _dispatched(out: Path) -> dict[str, Path]:
    return {n: d for n, d in _dispatched_dirs(out).items() if (d / "log.txt").exists()}


def _phase(step: Path) -> str:
    return (step / "phase").read_text().strip() if (step / "phase").exists() else ""


def _job_ids(step: Path) -> list[str]:
    found = re.findall(JOB_IDS_LINE, (step / "log.txt").read_text(errors="replace"), re.M)
    return found[-1].split() if found else []


def _in_queue() -> set[str]:
    return set(subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split())


def _known_jobs() -> set[int]:
    """Every job the controller knows of, finished ones too (MinJobAge keeps them an hour)."""
    shown = subprocess.run(["scontrol", "show", "job"], capture_output=True, text=True).stdout
    return {int(i) for i in re.findall(r"JobId=(\d+)", shown)}


def _submitted_jobs(out: Path) -> set[str]:
    """The jobs this run submitted (dpdispatcher's job id files; the step logs are written at its end)."""
    return {f.read_text().strip() for f in (out / "jobs").glob("*/*_job_id")}


def _live_jobs(out: Path) -> set[str]:
    """The jobs of this run in the queue now."""
    return _submitted_jobs(out) & _in_queue()


def _same_results(out: Path, reference: Path) -> None:
    got, ref = (json.loads((r / "report.json").read_text()) for r in (out, reference))
    for k in ("workflow_id", "wall_time_s"):
        got.pop(k), ref.pop(k)
    assert got == ref  # iterations, counts, the final models' errors: all of it
    assert dataset_frame_ids(out) == dataset_frame_ids(reference)


def _state(out: Path) -> str:
    """What a failed wait shows: the queue with Slurm's reasons, the node, the dispatched steps' phases, the
    run's own output."""
    queue = subprocess.run(["squeue", "-o", "%i %j %T %r"], capture_output=True, text=True).stdout
    node = subprocess.run(["sinfo", "-N", "-o", "%N %T %E"], capture_output=True, text=True).stdout
    phases = {n: _phase(d) for n, d in sorted(_dispatched_dirs(out).items())}
    log = out.parent / "cli.txt"
    tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
    return f"queue:\n{queue}node:\n{node}steps: {phases}\nrun's output:\n{tail}"


def _wait_for(proc: subprocess.Popen, out: Path, found, what: str, timeout: float = 300):
    """What `found()` returns once it is not empty, while the run goes on; `what` says what never came."""
    deadline = time.time() + timeout
    while not (value := found()):
        if proc.poll() is not None or time.time() > deadline:
            pytest.fail(f"{what} (run exit code {proc.poll()})\n{_state(out)}")
        time.sleep(0.3)
    return value


@contextlib.contextmanager
def _running(config: Path, out: Path, **streams):
    """The CLI on `config` in the background, in a session of its own, its output in cli.txt beside `out`
    unless `streams` say otherwise. On the way out it is killed as a group if it still runs, and its jobs are
    cancelled if the test failed: a failed test leaves nothing behind to take the node from the next."""
    cmd = [sys.executable, str(ROOT / "submit_simplify.py"), str(config), "-o", str(out)]
    with open(out.parent / "cli.txt", "w") as log:
        proc = subprocess.Popen(cmd, start_new_session=True, **{"stdout": log, "stderr": log, **streams})
        failed = True
        try:
            yield proc
            failed = False
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(60)
            ids = _submitted_jobs(out)
            if failed and ids:
                subprocess.run(["scancel", "-Q", *ids])


def test_the_example_runs_as_slurm_jobs_and_resumes_after_the_controller_is_killed(short_run, slurm, tmp_path):
    config = _slurm_config(tmp_path / "inputs")
    out = tmp_path / "run"
    known = _known_jobs()

    def training_jobs() -> set[str]:
        steps = _dispatched_dirs(out).items()
        training = any(_phase(d) == "Running" for n, d in steps if n.startswith("iter-000001--run-train"))
        return _live_jobs(out) if training else set()

    # kill this side (the CLI, dflow, dpdispatcher's wrappers) while iteration 1's training jobs are in the queue
    with _running(config, out) as proc:
        running = _wait_for(proc, out, training_jobs, "iteration 1's training never reached the queue", timeout=900)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(60)

    again = run_cli([config, "-o", out])  # the same command again resumes
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "resuming workflow" in again.stdout

    steps = _dispatched(out)
    kinds = {re.sub(r"-\d+$", "", DISPATCHED.search(n).group(1)) for n in steps}
    assert kinds == {"run-train", "model-devi", "run-fp"}
    jobs = {name: _job_ids(step) for name, step in steps.items()}
    assert all(len(ids) == 1 for ids in jobs.values()), jobs  # every step ran as one Slurm job
    labeled = (steps["iter-000000--run-fp-000000"] / "outputs" / "parameters" / "n_labeled").read_text()
    assert json.loads(labeled)[0]["dflow_list_item"] == 10  # one job labeled the group's 10 frames (group_size)
    ids = {int(ids[0]) for ids in jobs.values()}
    assert len(ids) == len(steps)
    assert {int(i) for i in running} <= ids  # the jobs running when this side died were waited for, not redone
    assert _known_jobs() - known == ids  # and no step submitted a second job
    for job in ids:  # Slurm's own record of each
        shown = subprocess.run(["scontrol", "show", "job", str(job)], capture_output=True, text=True).stdout
        assert "JobState=COMPLETED" in shown and f"WorkDir={out / 'jobs'}" in shown, shown
    _same_results(out, short_run)  # equal to the plain local run of the same config


def test_a_cancelled_job_fails_its_step_and_the_run_says_so(example, slurm, tmp_path):
    """scancel on a labeling job (held pending by --begin so that it can be cancelled) with no retry left: the
    run ends at once with the step and the job named, and its record says Failed."""
    def hold_and_no_retry(j):
        fp = j["step_configs"]["run_fp"]["executor"]
        fp["machine"]["retry_count"] = 0
        fp["resources"]["custom_flags"] = ["#SBATCH --begin=now+600"]

    config = _slurm_config(tmp_path / "inputs", hold_and_no_retry)
    out = tmp_path / "run"
    with _running(config, out, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        # iteration 0's labeling is the first batch job of a run
        job = next(iter(_wait_for(proc, out, lambda: _live_jobs(out), "no labeling job reached the queue")))
        subprocess.run(["scancel", job], check=True)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 1, stdout[-1500:] + stderr[-1500:]
    assert re.search(rf"error: iter-000000--run-fp-000000: RuntimeError: .*batch job \S+ {job} failed 1 times", stderr), \
        stderr[-2000:]
    assert "run the same command again to resume" in stderr
    assert "Failed" in run_cli(["status", out]).stdout


def test_the_loop_runs_over_ssh_to_the_cluster(short_run, slurm, sshd, tmp_path):
    """SSHContext: dpdispatcher uploads each job's files over SFTP to a remote_root of the 'cluster' (here
    127.0.0.1) and submits there; pick_data goes along as an artifact. One training iteration (stop_iter)."""
    remote = tmp_path / "remote"

    def over_ssh(j):
        j["stop_iter"] = 1
        for stage in ("run_train", "model_devi", "run_fp"):
            ex = j["step_configs"][stage]["executor"]
            ex["machine"] = {"batch_type": "Slurm", "context_type": "SSHContext", "remote_root": str(remote),
                             "remote_profile": {"hostname": "127.0.0.1", "port": 2222, "username": "root",
                                                "key_filename": str(sshd)}}
            ex["remote_command"] = sys.executable  # the cluster's Python with dflow-simplify installed

    config = _slurm_config(tmp_path / "inputs", over_ssh)
    out = tmp_path / "run"
    proc = run_cli([config, "-o", out])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    reference = json.loads((short_run / "report.json").read_text())
    assert report["iterations"][0] == reference["iterations"][0]  # the same frames picked and labeled
    same_deviation = ("n_pool", "n_candidate", "n_accurate")  # iteration 1 classified the same (then stop_iter)
    assert [report["iterations"][1][k] for k in same_deviation] == [reference["iterations"][1][k] for k in same_deviation]
    steps = _dispatched(out)
    assert len(steps) == 1 + 2 + 1  # iteration 0's labeling; 2 trainings and model-devi
    assert all(len(_job_ids(step)) == 1 for step in steps.values())
    assert not list((out / "jobs").glob("*"))  # nothing went through this side's LocalContext folder
    devi = steps["iter-000001--model-devi-000000"]
    assert (devi / "inputs" / "artifacts" / "pick_data").exists()  # sent along, not read in place


def test_stop_cancels_the_jobs_the_run_waits_for(example, slurm, tmp_path):
    def hold(j):
        j["step_configs"]["run_fp"]["executor"]["resources"]["custom_flags"] = ["#SBATCH --begin=now+600"]

    config = _slurm_config(tmp_path / "inputs", hold)
    out = tmp_path / "run"
    with _running(config, out) as proc:
        jobs = _wait_for(proc, out, lambda: _live_jobs(out), "no labeling job reached the queue")
        assert run_cli(["stop", out]).returncode == 0
        proc.wait(60)
        deadline = time.time() + 30
        while _live_jobs(out) and time.time() < deadline:
            time.sleep(0.5)
        # the jobs it waited for are cancelled, and none was submitted again in their place
        assert not _live_jobs(out), _state(out)
        assert _submitted_jobs(out) == jobs
