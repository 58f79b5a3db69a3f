"""A run's record (`<output>/workflow.json`) and the commands on a run: status, watch, download,
resubmit, stop, delete. The same commands serve local runs (dflow's debug mode, under `<output>/work`)
and Argo runs; `ID` is a run's output folder, or an Argo workflow id with `--config` for the settings.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError, load_config, read_raw_config
from .record import RECORD, RunRecord

DONE = ("Succeeded", "Failed", "Error", "Terminated", "Stopped")


class RunError(RuntimeError):
    pass


@dataclass
class Run:
    """A run attached to: its record, its output folder (None for a bare Argo id), its config, dflow's Workflow."""
    record: RunRecord
    output: Path | None
    cfg: object
    wf: object


def attach(run_id: str, config_path: str | None = None, needs_config: bool = True) -> Run:
    """Resolve `run_id`, set dflow's mode for it, and return a Workflow handle (no step is built).
    The record carries the settings: the config is loaded (and validated) only when `needs_config`
    (download, resubmit), when it is given with --config, or for an Argo id without a record."""
    from dflow import Workflow

    folder = Path(run_id)
    if (folder / RECORD).exists():
        record = RunRecord.load(folder)
        needs_config = needs_config or bool(config_path) or (record.mode != "local" and not record.dflow_config)
        config_path = config_path or record.config
    elif config_path:
        record = RunRecord(workflow_id=run_id, config_digest="", mode="argo")
        folder, needs_config = None, True
    else:
        raise RunError(f"{run_id}: neither a run's output folder (no {RECORD} in it) nor an Argo workflow id "
                       f"given with --config CONFIG (for the Argo and S3 settings)")
    if record.debug_s3:  # as the run was made: its inputs (an s3:// pick_data too) are in S3
        from dflow import config as dflow_config

        dflow_config["debug_s3"] = True
    cfg = None
    if needs_config:
        if not config_path or not Path(config_path).exists():
            raise RunError(f"{run_id}: the run's config {config_path!r} is not there; give it with --config")
        try:
            cfg = load_config(Path(config_path))
        except ConfigError as e:
            raise RunError(str(e)) from e
    if record.mode == "local":
        from .submit import set_local_mode

        set_local_mode(folder / "work")
    else:
        from .argo import ArgoSettingsError, set_argo_mode

        if cfg:
            argo_conf, s3_conf = cfg.jdata["dflow_config"], cfg.jdata["dflow_s3_config"]
        else:
            argo_conf, s3_conf = record_settings(record)
        try:
            set_argo_mode(argo_conf, s3_conf)
        except ArgoSettingsError as e:
            raise RunError(str(e)) from e
    return Run(record, folder, cfg, Workflow(id=record.workflow_id))


def record_settings(record: RunRecord) -> tuple[dict, dict]:
    """The Argo and S3 settings of a record, with the secrets (token, S3 keys) the config file gives, if it
    still exists (read, not validated: its inputs may have moved); DFLOW_* variables give them otherwise."""
    from .argo import SECRET_CONFIG, SECRET_KEYS

    argo_conf, s3_conf = dict(record.dflow_config), dict(record.dflow_s3_config)
    if record.config and Path(record.config).is_file():
        try:
            raw = read_raw_config(record.config)
        except ConfigError:
            raw = {}
        argo_conf.update({k: v for k, v in (raw.get("dflow_config") or {}).items() if k in SECRET_CONFIG})
        s3_conf.update({k: v for k, v in (raw.get("dflow_s3_config") or {}).items() if k in SECRET_KEYS})
    return argo_conf, s3_conf


def _status(run: Run) -> str:
    if run.record.mode != "local":
        return run.wf.query_status()
    wf_dir = run.output / "work" / run.record.workflow_id
    if not wf_dir.exists():
        return "NotStarted"
    st = run.wf.query_status()
    if st == "Running" and not _alive(wf_dir / "pid"):
        return "Stopped"  # its process ended without finishing (stopped, killed, machine restarted)
    return st


def _alive(pid_file: Path) -> bool:
    import psutil

    try:
        return psutil.pid_exists(int(pid_file.read_text()))
    except (OSError, ValueError):
        return False


def _end_process_tree(pid_file: Path, grace: float = 30) -> None:
    """SIGTERM to the local run's process and all its descendants (what dflow's terminate sends; a batch job's
    wrapper cancels its job on it), then wait for them to end, SIGKILL for any still alive after `grace` s."""
    import psutil

    try:
        main = psutil.Process(int(pid_file.read_text()))
        procs = [*main.children(recursive=True), main]
    except (OSError, ValueError, psutil.Error):
        return
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass


def _running_steps(steps, st: str) -> list[str]:
    """The running pods of a run whose status `st` says it still runs (a stopped run's steps keep their phase)."""
    if st not in ("Running", "Pending"):
        return []
    return sorted(s.key or s.displayName for s in steps if s.phase == "Running" and getattr(s, "type", "") == "Pod")


def status(run: Run) -> int:
    from .report import format_table, iteration_rows

    st = _status(run)
    print(f"workflow {run.record.workflow_id} ({run.record.mode}): {st}")
    if st != "NotStarted":
        steps = run.wf.query_step()
        print(format_table(iteration_rows(steps)))
        running = _running_steps(steps, st)
        if running:
            print("running: " + ", ".join(running))
    return 0 if st in ("Succeeded", "Running", "Pending") else 1


def watch(run: Run, interval: float = 5.0) -> int:
    """A live per-iteration table with the running steps and the frames relabeled so far."""
    from rich.console import Group
    from rich.live import Live
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table
    from rich.text import Text

    from .report import ITER_COLUMNS, iteration_rows

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    task = progress.add_task("frames relabeled", total=run.cfg.n_frames if run.cfg else run.record.n_frames)

    def view(st: str, rows: list[dict], running: list[str]):
        table = Table(title=f"{run.record.workflow_id}: {st}")
        for c in ITER_COLUMNS:
            table.add_column(c.replace("n_", ""), justify="right")
        for r in rows:
            table.add_row(*("" if r.get(c) is None else str(r.get(c)) for c in ITER_COLUMNS))
        progress.update(task, completed=sum(r["n_relabeled"] for r in rows))
        return Group(table, progress, Text(f"running: {', '.join(running) or '-'}"))

    with Live(view("Pending", [], []), refresh_per_second=1) as live:
        while True:
            st = _status(run)
            steps = run.wf.query_step() if st != "NotStarted" else []
            live.update(view(st, iteration_rows(steps), _running_steps(steps, st)))
            if st in DONE:
                break
            time.sleep(interval)
    return 0 if st == "Succeeded" else 1


def download(run: Run, target: Path) -> int:
    """models/, dataset/ and report.json, as a local run writes them."""
    from .output import check_output, run_inputs
    from .report import collect_outputs

    st = _status(run)
    if st != "Succeeded":
        raise RunError(f"workflow {run.record.workflow_id} is {st}: only a succeeded run has final models; "
                       "`status` shows how far it got")
    check_output(target, run_inputs(run.cfg))
    target.mkdir(parents=True, exist_ok=True)
    report = collect_outputs(run.wf, run.cfg, target)
    print(f"downloaded: {report['n_in_dataset']} relabeled frames, models and report.json into {target}")
    return 0


def stop(run: Run) -> int:
    st = _status(run)
    if st in DONE or st == "NotStarted":
        print(f"workflow {run.record.workflow_id} is {st}: nothing to stop")
        return 0
    if run.record.mode == "local":
        _end_process_tree(run.output / "work" / run.record.workflow_id / "pid")
        from .dispatch import cancel_jobs_left

        cancelled = cancel_jobs_left(run.output / "jobs")
        if cancelled:
            print(f"cancelled the batch job(s) the run left behind: {', '.join(cancelled)}")
    else:
        run.wf.stop()
    print(f"workflow {run.record.workflow_id}: stop requested; `resubmit` continues it later")
    return 0


def delete(run: Run) -> int:
    st = _status(run)
    if st in ("Running", "Pending"):
        raise RunError(f"workflow {run.record.workflow_id} is {st}: `stop` it first")
    if run.record.mode == "local":
        for sub in ("work", "staging"):
            shutil.rmtree(run.output / sub, ignore_errors=True)
        (run.output / RECORD).unlink(missing_ok=True)
        kept = [p.name for p in run.output.iterdir()] if run.output.exists() else []
        print(f"deleted the local workflow {run.record.workflow_id}; kept in {run.output}: {', '.join(kept) or '-'}")
    else:
        run.wf.delete()
        print(f"deleted workflow {run.record.workflow_id} from Argo (its S3 objects stay in the bucket)")
    return 0


def run_command(name: str, run_id: str, config: str | None, output: str | None) -> int:
    from .argo import ArgoSettingsError
    from .output import OutputError

    try:
        run = attach(run_id, config, needs_config=name in ("download", "resubmit"))
        if name == "status":
            return status(run)
        if name == "watch":
            return watch(run)
        if name == "download":
            return download(run, Path(output) if output else (run.output or Path.cwd() / run.record.workflow_id))
        if name == "stop":
            return stop(run)
        if name == "delete":
            return delete(run)
        if name == "resubmit":
            from .submit import resubmit

            return resubmit(run)
    except (RunError, ArgoSettingsError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    raise ValueError(name)
