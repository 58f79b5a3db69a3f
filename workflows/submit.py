"""Run or submit a validated config: local (dflow's debug mode under `<output>/work`, resumed by running
again on the same output folder) or on Argo (inputs uploaded to S3 once, by content hash; `<output>/workflow.json`
records the run). Sets dflow's mode, once, before any Step is built; cli.py and runs.py call in here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from .config import EXIT_CONFIG, SimplifyConfig
from .output import output_lock, workflow_name
from .record import RECORD, RunRecord
from .recovery import NO_SPACE, NO_SPACE_PATH, SpaceWatch, atomic_dflow_writes, is_no_space, mend, no_space_message
from .superop import StageOps


def config_digest(cfg: SimplifyConfig) -> str:
    """The run's fingerprint: the config, and the paths, sizes and modification times of every local input
    file (pick_data, the starting models, init data), so that a changed input is not resumed as the same."""
    local = [p for p in [*cfg.pick_roots, *cfg.iter0_models, *cfg.init_data] if not p.startswith("s3://")]
    blob = json.dumps({"jdata": cfg.jdata, "roots": cfg.pick_uri or cfg.pick_roots, "models": cfg.iter0_models,
                       "files": file_stats(local)}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def file_stats(paths: list[str]) -> list[tuple[str, int, int]]:
    """(path, size, mtime in ns) of every file under `paths`, links followed once."""
    from dflow_simplify.ops.data import walk_once

    out = []
    for top in paths:
        files = [top] if os.path.isfile(top) else [os.path.join(d, f) for d, fs in walk_once(top) for f in fs]
        for f in files:
            try:
                st = os.stat(f)
            except OSError:  # a dangling link: its absence is part of the fingerprint
                continue
            out.append((f, st.st_size, st.st_mtime_ns))
    return sorted(out)


def set_local_mode(workdir: Path) -> None:
    from dflow import config as dflow_config

    # dflow runs each OP as `python3` from PATH: make that this interpreter, venv activated or not
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    dflow_config["mode"] = "debug"
    dflow_config["debug_workdir"] = str(workdir.resolve())
    # step inputs as copies: no link into the user's files or another step's (pick_data, the one big input,
    # is read in place: build.py passes its paths, not an artifact)
    dflow_config["debug_copy_method"] = "copy"
    _lighter_debug_copies()
    atomic_dflow_writes()


def _lighter_debug_copies() -> None:
    """dflow's debug mode deep-copies a sliced step, and the scope it runs in, once per slice: 3-10 s between
    two steps here, more with every iteration and model. Two things made those copies heavy: every S3Artifact
    holds its own Argo client Configuration (loggers, handlers), never changed once made, so copies may share
    it; and a finished sliced step keeps its per-slice copies (`parallel_steps`), which dflow reads only while
    the step runs (its outputs are gathered by then), so they are dropped once it ended."""
    from argo.workflows.client.configuration import Configuration
    from dflow.step import Step

    Configuration.__deepcopy__ = lambda self, memo: self
    if getattr(Step.run, "_drops_slices", False):
        return
    run = Step.run

    def run_then_drop_slices(self, *args, **kwargs):
        try:
            return run(self, *args, **kwargs)
        finally:
            self.parallel_steps = []

    run_then_drop_slices._drops_slices = True
    Step.run = run_then_drop_slices


class ProgressPrinter:
    """While a local run goes, from a background thread: a row per iteration as soon as its labels are in, a
    line per failed step at once, and, on a terminal, a live status line with the last step that ended
    (every step's line with `verbose`). Prints to `out`, the terminal the run started with."""

    def __init__(self, wf, out, verbose: bool = False):
        from rich.console import Console

        self.wf, self.verbose, self.printed, self.seen, self.stop = wf, verbose, set(), set(), threading.Event()
        self.console = Console(file=out, highlight=False, soft_wrap=True)
        self.status = self.console.status("starting", spinner="line") if self.console.is_terminal else None
        self.t0, self.last = time.time(), "starting"

    def say(self, line: str) -> None:
        self.console.print(line, markup=False)

    def poll(self) -> None:
        from .report import iteration_rows, step_events

        try:
            steps = self.wf.query_step()
            events = step_events(steps, self.seen)
            rows = iteration_rows(steps)
        except Exception:  # the workflow folder is being written; try again later
            return
        for line in events:
            if self.verbose or line.split(";")[0].endswith(("failed", "error")):
                self.say(line)
            else:
                self.last = line
        if self.status is not None:  # the last step that ended, and the run's elapsed time
            self.status.update(f"[{time.strftime('%H:%M:%S', time.gmtime(time.time() - self.t0))}] {self.last}")
        for r in rows:
            if r["iteration"] not in self.printed and r["fp_done"]:
                self.printed.add(r["iteration"])
                self.say(f"[iteration {r['iteration']}] pool {r.get('n_pool')}  candidate {r.get('n_candidate')}  "
                         f"accurate {r.get('n_accurate')}  failed {r.get('n_failed')}  selected {r.get('n_selected')}  "
                         f"relabeled {r['n_relabeled']}")

    def run(self) -> None:
        if self.status is not None:
            self.status.start()
        while not self.stop.wait(3.0):
            self.poll()
        if self.status is not None:
            self.status.stop()


def run_local(cfg: SimplifyConfig, config_path: Path, output: Path, ops: StageOps = StageOps(),
              verbose: bool = False) -> int:
    """Run (or resume) the workflow in dflow's debug mode, holding the output folder's lock; `ops` the OP
    class of each stage. Each step's own output goes to its log.txt under `<output>/work`; `verbose` relays
    it to the terminal too."""
    with output_lock(output):
        try:
            return _run_local(cfg, config_path, output, ops, verbose)
        except OSError as e:  # this process's own writes (dflow's records, the run's record, the report)
            if not is_no_space(e):
                raise
            print(f"error: {no_space_message(output, [e.filename] if e.filename else [])}", file=sys.stderr)
            return 1


def _run_local(cfg: SimplifyConfig, config_path: Path, output: Path, ops: StageOps, verbose: bool) -> int:
    workdir = output / "work"
    set_local_mode(workdir)  # before any Step is built: dflow renders expressions per mode
    from dflow import config as dflow_config

    from .argo import keys_in_memory, set_s3
    from .build import build_workflow
    from .inputs import InputStager

    if dflow_config["debug_s3"]:  # DFLOW_DEBUG_S3: inputs uploaded to and read from S3, as on Argo
        set_s3(cfg.jdata["dflow_s3_config"])

    digest = config_digest(cfg)
    wf_id = None
    prev = previous_run(output, digest)
    if isinstance(prev, int):
        return prev
    if prev is not None:
        wf_id = prev.workflow_id
        print(f"resuming workflow {wf_id} in {output}")
        if (workdir / wf_id).is_dir():
            mend(workdir / wf_id)

    def save_record() -> None:
        RunRecord.of(cfg, wf.id, digest, "local", str(config_path), debug_s3=bool(dflow_config["debug_s3"])).save(output)

    with contextlib.ExitStack() as scope:
        # a local run with its inputs in S3: the keys stay in this process (dflow writes s3_config into every
        # OP script it runs, under work/)
        secrets = scope.enter_context(keys_in_memory()) if dflow_config["debug_s3"] else None
        stager = InputStager(local=not dflow_config["debug_s3"], secrets=secrets)
        wf = build_workflow(cfg, workflow_name(config_path), output / "staging", workflow_id=wf_id, stage=stager,
                            ops=ops, local=True)
        printer = ProgressPrinter(wf, sys.stdout, verbose)
        thread = threading.Thread(target=printer.run, daemon=True)
        if wf_id is None:
            # dflow picks the id at submit; record it as soon as the workflow folder exists
            thread_id = threading.Thread(target=_record_id, args=(workdir, wf, save_record), daemon=True)
            thread_id.start()
        thread.start()
        t0 = time.time()
        if not verbose:  # dflow relays every OP's output to sys.stdout (its forked workers too)
            scope.enter_context(contextlib.redirect_stdout(scope.enter_context(open(os.devnull, "w"))))
        space = scope.enter_context(contextlib.redirect_stderr(SpaceWatch(sys.stderr)))
        wf.submit()
    printer.stop.set()
    thread.join()
    save_record()
    status = wf.query_status()
    if status != "Succeeded":
        printer.poll()
        failures = failed_step_errors(workdir / wf.id)
        for line in failures:
            print(f"error: {line}", file=sys.stderr)
        logs = "\n".join(failures)
        if space.seen or NO_SPACE.search(logs):
            print(f"error: workflow {wf.id} {status}: "
                  f"{no_space_message(output, space.paths + NO_SPACE_PATH.findall(logs))}", file=sys.stderr)
            return 1
        again = ("the failure above is deterministic: fix its cause first; running the same command again then "
                 "resumes" if failures and all(": FatalError" in ln for ln in failures)
                 else "run the same command again to resume")
        print(f"error: workflow {wf.id} {status}; logs under {workdir / wf.id}; {again}.", file=sys.stderr)
        return 1
    printer.poll()
    from .report import collect_outputs

    report = collect_outputs(wf, cfg, output, wall_time=time.time() - t0)
    print(f"done: converged={report['converged']}, relabeled {report['n_relabeled']} of {report['n_frames']} frames; "
          f"models in {output / 'models'}, dataset in {output / 'dataset'}, report {output / 'report.html'}")
    return 0


def render(cfg: SimplifyConfig, config_path: Path, target: Path) -> int:
    """The manifest an Argo submission would send: Argo and S3 settings from the config (DFLOW_* otherwise),
    input keys computed from content hashes, no upload, no server, no S3 keys in it."""
    from .argo import argo_host, secrets_withheld, set_argo_mode

    dflow_conf = dict(cfg.jdata["dflow_config"])
    dflow_conf["host"] = argo_host(dflow_conf) or "https://127.0.0.1:2746"  # rendering needs no server
    set_argo_mode(dflow_conf, cfg.jdata["dflow_s3_config"])  # before any Step is built
    from .build import build_workflow
    from .inputs import InputStager

    with secrets_withheld(), tempfile.TemporaryDirectory() as staging:
        wf = build_workflow(cfg, workflow_name(config_path), staging, stage=InputStager(render=True))
        manifest = wf.to_dict()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(manifest, indent=1, default=str))
    print(f"manifest written to {target} (not submitted)")
    return 0


def failed_step_errors(wf_dir: Path) -> list[str]:
    """`<step key>: <last exception line> (log: <its log.txt>)` for every failed OP step of a local run."""
    out = []
    for phase in sorted(wf_dir.glob("*/phase")):
        log = phase.parent / "log.txt"
        if phase.read_text().strip() == "Failed" and log.exists():
            # the exception's last line, its class without the module (dflow.python...FatalError: ...)
            text = log.read_text(errors="replace")
            errors = [m.group(1) for ln in text.splitlines()
                      if (m := re.match(r"^(?:[A-Za-z_][\w]*\.)*(\w*(?:Error|Exception)\b.*)", ln))]
            job = re.search(r"^Underlying job error: (.+)$", text, re.M)  # dpdispatcher's, on a batch job
            if errors:
                where = f"; batch {job.group(1).rstrip('.')}" if job else ""
                out.append(f"{phase.parent.name}: {errors[-1]}{where} (log: {log})")
    return out


def previous_run(output: Path, digest: str):
    """The record of the run in `output`, None if there is none, an exit code if it is another config's."""
    if not (output / RECORD).exists():
        return None
    prev = RunRecord.load(output)
    if prev.config_digest != digest:
        print(f"error: {output} holds a run of a different config; use another --output", file=sys.stderr)
        return EXIT_CONFIG
    return prev


def _record_id(workdir: Path, wf, save_record) -> None:
    for _ in range(600):
        if wf.id is not None and (workdir / wf.id).exists():
            save_record()
            return
        time.sleep(0.1)


def submit_argo(cfg: SimplifyConfig, config_path: Path, output: Path, reuse_from=None) -> int:
    """Upload the inputs (once: content hash), build the workflow with the secrets withheld, submit it,
    print the Argo UI link and record the run in `<output>/workflow.json`. `reuse_from`: a workflow whose
    finished steps the new one reuses (resubmit)."""
    with output_lock(output):
        return _submit_argo(cfg, config_path, output, reuse_from)


def _submit_argo(cfg: SimplifyConfig, config_path: Path, output: Path, reuse_from) -> int:
    from .argo import secrets_withheld, set_argo_mode, ui_link

    settings = set_argo_mode(cfg.jdata["dflow_config"], cfg.jdata["dflow_s3_config"])  # before any Step
    from .build import build_workflow
    from .inputs import InputStager

    digest = config_digest(cfg)
    reuse = None
    if reuse_from is not None:
        reuse = reusable_steps(reuse_from)
        print(f"reusing {len(reuse)} finished steps of {reuse_from.id}")
    with secrets_withheld() as secrets, tempfile.TemporaryDirectory() as staging:
        stager = InputStager(secrets=secrets)
        wf = build_workflow(cfg, workflow_name(config_path), staging, stage=stager, token=secrets["token"])
        print(f"inputs: {len(stager.uploaded)} uploaded, {len(stager.reused)} already in the bucket")
        try:
            wf.submit(reuse_step=reuse)
        except Exception as e:  # the Argo client's errors carry the HTTP status and Argo's message
            print(f"error: submitting to {settings['host']} (namespace {settings['namespace']}) failed: "
                  f"{type(e).__name__}: {str(e)[:2000]}", file=sys.stderr)
            return 1
    RunRecord.of(cfg, wf.id, digest, "argo", str(config_path), host=settings["host"],
                 namespace=settings["namespace"]).save(output)
    print(f"submitted: {ui_link(settings['host'], settings['namespace'], wf.id)}")
    print(f"follow it with `submit_simplify.py watch {output}`, then `submit_simplify.py download {output}`")
    return 0


def resubmit(run) -> int:
    """Local: resume in place (finished steps are reused by key). Argo: a new workflow reusing them."""
    config_path = Path(run.record.config)
    if run.record.mode == "local":
        return run_local(run.cfg, config_path, run.output)
    return submit_argo(run.cfg, config_path, run.output or Path.cwd() / workflow_name(config_path), reuse_from=run.wf)


def reusable_steps(wf) -> list:
    """Every finished step with a key: a resubmitted workflow takes their outputs instead of running them."""
    return [s for s in wf.query_step() if getattr(s, "key", None) and s.phase == "Succeeded"]
