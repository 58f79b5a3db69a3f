"""Heavy stages as batch jobs (Slurm, PBS, LSF, ... through dpdispatcher): dflow's DispatcherExecutor from a
stage's `executor` block.

    "step_configs": {"run_fp": {"group_size": 10, "executor": {
        "type": "dispatcher",
        "machine": {"batch_type": "Slurm", "context_type": "LocalContext", "remote_root": "/scratch/me/jobs"},
        "resources": {"number_node": 1, "cpu_per_node": 4, "queue_name": "cpu",
                      "custom_flags": ["#SBATCH --time=02:00:00"], "source_list": ["/home/me/simplify-env.sh"]},
        "poll_interval": 5}}}

`machine` and `resources` are dpdispatcher's Machine and Resources, as in a DP-GEN machine.json
(dflow's own names `machine_dict`, `resources_dict` are accepted too); `poll_interval` is the seconds between
dpdispatcher's status checks (its own default, 30 s, is the largest cost of a short step); any other key is a
DispatcherExecutor argument (host, username, port, remote_root, retry_on_submission_error, ...).

Each step (each slice of RunTrain and RunFP) is one job; a job that fails or is cancelled is submitted once more
(machine.retry_count, 1 unless set), then its step fails with the job's error. In local mode the wrapper runs
on this machine and submits from here; a LocalContext job runs this interpreter (remote_command) and keeps its
files under `<output>/jobs` unless `remote_root` says otherwise. A wrapper stopped mid-job and run again (a
resumed run) finds its job by dpdispatcher's submission hash and waits for it instead of submitting it again.
"""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path

DEFAULT_POLL_INTERVAL = 5  # seconds; dpdispatcher's own 30 s was 30-40% of DP-GEN's wall time on short steps
DEFAULT_RETRIES = 1  # a failed or cancelled job is submitted once more, then the step fails (dpdispatcher's: 3)
ALIASES = {"machine": "machine_dict", "resources": "resources_dict"}  # DP-GEN machine.json names
OWN_KEYS = ("type", "poll_interval")


def dispatcher_parameters() -> list[str]:
    from dflow.plugins.dispatcher import DispatcherExecutor

    return [p for p in inspect.signature(DispatcherExecutor.__init__).parameters if p != "self"]


def _secret_keys(node, where: str) -> list[str]:
    if isinstance(node, dict):
        found = [f"{where}.{k}" for k in node if k.lower() in ("password", "passwd", "secret", "token")]
        return found + [x for k, v in node.items() for x in _secret_keys(v, f"{where}.{k}")]
    return []


def check_executor(executor: dict, where: str) -> None:
    """ValueError naming the key when an executor block is not what DispatcherExecutor and dpdispatcher take."""
    if executor.get("type") != "dispatcher":
        raise ValueError(f"{where}.type: expected \"dispatcher\" (dflow's DispatcherExecutor), got "
                         f"{executor.get('type')!r}")
    known = set(dispatcher_parameters()) | set(ALIASES) | set(OWN_KEYS)
    unknown = sorted(set(executor) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; expected machine, resources, poll_interval or a "
                         f"DispatcherExecutor argument {dispatcher_parameters()}")
    for alias, name in ALIASES.items():
        if alias in executor and name in executor:
            raise ValueError(f"{where}: both {alias!r} and {name!r} given; they are the same setting")
        value = executor.get(alias, executor.get(name))
        if value is not None and not isinstance(value, dict):
            raise ValueError(f"{where}.{alias}: expected a dict (dpdispatcher's {alias.capitalize()}), got {value!r}")
    poll = executor.get("poll_interval")
    if poll is not None and (not isinstance(poll, (int, float)) or isinstance(poll, bool) or poll <= 0):
        raise ValueError(f"{where}.poll_interval: expected a positive number of seconds, got {poll!r}")
    if executor.get("private_key_file"):
        raise ValueError(f"{where}.private_key_file: dflow would upload the SSH key into the bucket; give the "
                         "dispatcher pods the key from the cluster side instead (machine.remote_profile."
                         "key_filename naming a key inside the executor's image or a mounted path)")
    secrets = _secret_keys(executor, where)
    if secrets:
        raise ValueError(f"{', '.join(secrets)}: would be written into the workflow manifest; use an SSH key "
                         "(machine.remote_profile.key_filename) or the cluster's own credentials instead")


def machine_of(executor: dict) -> dict:
    return dict(executor.get("machine", executor.get("machine_dict")) or {})


def is_remote(executor: dict | None) -> bool:
    """Whether the jobs run where this machine's files are not (a context other than LocalContext)."""
    return bool(executor) and machine_of(executor).get("context_type", "SSHContext") != "LocalContext"


def wrapper_preamble(seconds: float) -> str:
    """A preamble for the wrapper script, around dpdispatcher's run_submission (which DispatcherExecutor calls
    without check_interval): jobs are checked every `seconds`; on SIGTERM (`stop`), dflow's handler cancels the
    unfinished jobs and then the wrapper ends (polling on, dpdispatcher would submit the cancelled jobs again)."""
    return ("import os as _os, signal as _signal, sys as _sys, dpdispatcher as _dd\n"
            "def _run_submission(self, *args, _run=_dd.Submission.run_submission, **kwargs):\n"
            "    cancel_jobs = _signal.getsignal(_signal.SIGTERM)\n"
            "    def _stop(signum, frame):\n"
            "        if callable(cancel_jobs):\n"
            "            cancel_jobs(signum, frame)\n"
            "        _sys.stdout.flush()\n"
            "        _os._exit(128 + signum)\n"
            "    _signal.signal(_signal.SIGTERM, _stop)\n"
            f"    kwargs.setdefault('check_interval', {seconds!r})\n"
            "    return _run(self, *args, **kwargs)\n"
            "_dd.Submission.run_submission = _run_submission\n")


# after the jobs ended, their ids in the step's log (a recovered job's too, which dpdispatcher does not log)
JOB_IDS_SCRIPT = "print('batch job(s): ' + ' '.join(str(j.job_id) for j in submission.belonging_jobs), flush=True)\n"
JOB_IDS_LINE = r"^batch job\(s\): (.+)$"


def make_executor(executor: dict, jobs_root: Path | None = None):
    """dflow's DispatcherExecutor for a checked executor block; `jobs_root`: where LocalContext jobs go when
    the block names no remote_root (local mode: `<output>/jobs`)."""
    from dflow.plugins.dispatcher import DispatcherExecutor

    kwargs = {ALIASES.get(k, k): v for k, v in executor.items() if k not in OWN_KEYS}
    machine = machine_of(executor)  # over DispatcherExecutor's defaults (batch_type Slurm, SSHContext)
    local_jobs = machine.get("context_type") == "LocalContext" and jobs_root is not None
    if local_jobs and "remote_root" not in machine and "remote_root" not in kwargs:
        machine["remote_root"] = str(jobs_root)
    machine.setdefault("retry_count", DEFAULT_RETRIES)
    kwargs["machine_dict"] = machine
    if local_jobs and not kwargs.get("remote_command"):
        # this interpreter, not the `python3` of the job's login shell (`#!/bin/bash -l` resets PATH)
        kwargs["remote_command"] = sys.executable
    poll = executor.get("poll_interval", DEFAULT_POLL_INTERVAL)
    kwargs["pre_script"] = wrapper_preamble(poll) + kwargs.get("pre_script", "")
    kwargs["post_script"] = JOB_IDS_SCRIPT + kwargs.get("post_script", "")
    return DispatcherExecutor(**kwargs)


def cancel_jobs_left(jobs_root: Path) -> list[str]:
    """The batch jobs of a stopped local run that are still queued or running (dpdispatcher's records of its
    LocalContext submissions under `jobs_root`), cancelled through dpdispatcher: their ids. A wrapper killed
    before its SIGTERM handler ran would leave them behind."""
    from dpdispatcher import Machine, Submission
    from dpdispatcher.submission import JobStatus

    cancelled = []
    for record in sorted(Path(jobs_root).glob("*/*.json")):
        data = json.loads(record.read_text())
        if not isinstance(data, dict) or "belonging_jobs" not in data or "machine" not in data:
            continue
        machine = Machine.load_from_dict(data["machine"])
        submission = Submission.deserialize(data, machine=machine)
        for job in submission.belonging_jobs:
            if job.job_id and machine.check_status(job) in (JobStatus.waiting, JobStatus.running, JobStatus.unknown):
                machine.kill(job)
                cancelled.append(str(job.job_id))
    return cancelled
