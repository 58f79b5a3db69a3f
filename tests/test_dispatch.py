"""The executor block of a stage (workflows/dispatch.py): what DispatcherExecutor gets, checked without a cluster.
tests/test_slurm.py runs the example through a real Slurm."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from dargs.dargs import ArgumentKeyError

from dflow_simplify.workflows.dispatch import check_executor, is_remote, make_executor, wrapper_preamble
from dflow_simplify.workflows.step_config import StageSettings, check_step_configs

SLURM = {"type": "dispatcher", "machine": {"batch_type": "Slurm", "context_type": "LocalContext"},
         "resources": {"number_node": 1, "cpu_per_node": 1, "queue_name": "local"}, "poll_interval": 2}


def test_a_local_slurm_job_runs_this_interpreter_under_the_runs_jobs_folder(tmp_path):
    ex = make_executor(SLURM, jobs_root=tmp_path / "jobs")
    assert ex.machine_dict["batch_type"] == "Slurm" and ex.machine_dict["context_type"] == "LocalContext"
    assert ex.machine_dict["remote_root"] == str(tmp_path / "jobs")
    assert ex.machine_dict["retry_count"] == 1
    assert ex.remote_command == [sys.executable]
    assert ex.resources_dict["queue_name"] == "local" and ex.resources_dict["cpu_per_node"] == 1
    assert "check_interval', 2)" in ex.pre_script


def test_the_users_own_settings_win(tmp_path):
    mine = {**SLURM, "machine": {**SLURM["machine"], "remote_root": "/scratch/me", "retry_count": 0},
            "remote_command": "/opt/env/bin/python"}
    ex = make_executor(mine, jobs_root=tmp_path)
    assert ex.machine_dict["remote_root"] == "/scratch/me" and ex.machine_dict["retry_count"] == 0
    assert ex.remote_command == ["/opt/env/bin/python"]


def test_on_argo_nothing_of_this_machine_goes_into_the_job():
    ex = make_executor({"type": "dispatcher", "host": "hpc.example.org", "username": "me",
                        "machine_dict": {"batch_type": "Slurm", "remote_root": "/home/me/jobs"}}, jobs_root=None)
    assert ex.remote_command is None and ex.machine_dict["context_type"] == "SSHContext"
    assert ex.machine_dict["remote_root"] == "/home/me/jobs" and "check_interval', 5)" in ex.pre_script


def test_the_wrapper_polls_at_the_interval_and_ends_once_its_jobs_are_cancelled(tmp_path):
    """The preamble around dpdispatcher's run_submission (a probe stands in for it): check_interval reaches it,
    and SIGTERM runs the handler installed before the call (dflow's: cancel the jobs), then ends the wrapper."""
    probe = ("import os, signal, time, dpdispatcher\n"
             "def probe(self, **kwargs):\n"
             "    print(kwargs, flush=True)\n"
             "    os.kill(os.getpid(), signal.SIGTERM)\n"
             "    time.sleep(5)\n"
             "    print('polled on after SIGTERM', flush=True)\n"
             "dpdispatcher.Submission.run_submission = probe\n")
    call = ("signal.signal(signal.SIGTERM, lambda *_: print('jobs cancelled', flush=True))\n"
            "dpdispatcher.Submission.run_submission(None)\n")
    proc = subprocess.run([sys.executable, "-c", probe + wrapper_preamble(0.5) + call], capture_output=True,
                          text=True, cwd=tmp_path, timeout=60)  # dpdispatcher writes its log where it is imported
    assert proc.stdout.splitlines() == ["{'check_interval': 0.5}", "jobs cancelled"], proc.stdout + proc.stderr
    assert proc.returncode == 128 + signal.SIGTERM


def test_model_devi_training_and_labeling_may_be_dispatched_in_local_mode(tmp_path):
    confs = check_step_configs({s: {"executor": SLURM} for s in ("run_train", "model_devi", "run_fp")})
    settings = StageSettings(confs, "dftd3", local=True, jobs_root=tmp_path)
    for stage in ("run_train", "model_devi", "run_fp"):
        assert settings.step(stage)["executor"].machine_dict["remote_root"] == str(tmp_path)
    with pytest.raises(ArgumentKeyError, match="prep_train"):  # config.py reports it naming the key
        check_step_configs({"prep_train": {"executor": SLURM}})


def test_only_a_context_other_than_local_is_elsewhere():
    assert not is_remote(None) and not is_remote(SLURM)
    assert is_remote({"type": "dispatcher", "host": "hpc"})  # dflow's default: SSHContext
    assert is_remote({"type": "dispatcher", "machine": {"context_type": "SSHContext"}})


@pytest.mark.parametrize("bad, message", [
    ({**SLURM, "machine_dict": {}}, "both 'machine' and 'machine_dict' given"),
    ({**SLURM, "resources": ["cpu"]}, "x.resources: expected a dict"),
    ({**SLURM, "poll_interval": 0}, "x.poll_interval: expected a positive number"),
    ({**SLURM, "poll_interval": "5"}, "x.poll_interval: expected a positive number"),
    ({**SLURM, "machine": {"remote_profile": {"password": "x"}}}, "x.machine.remote_profile.password"),
])
def test_bad_blocks_name_the_key(bad, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_executor(bad, "x")


def test_the_slurm_example_is_the_example_plus_its_executors():
    import json

    example = Path(__file__).resolve().parents[1] / "examples" / "ag-au-emt-d3"
    plain, slurm = (json.loads((example / f).read_text()) for f in ("config.json", "config-slurm.json"))
    for c in (plain, slurm):
        c.pop("_comment")
    assert {k: v for k, v in slurm.items() if k != "step_configs"} == {k: v for k, v in plain.items() if k != "step_configs"}
    assert slurm["step_configs"]["run_fp"]["group_size"] == plain["step_configs"]["run_fp"]["group_size"]
    for stage in ("run_train", "model_devi", "run_fp"):
        check_executor(slurm["step_configs"][stage]["executor"], stage)
