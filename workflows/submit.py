"""Run or submit a validated config: local (dflow's debug mode under `<output>/work`, resumed by running
again on the same output folder) or on Argo (inputs uploaded to S3 once, by content hash; `<output>/workflow.json`
records the run). Sets dflow's mode, once, before any Step is built; cli.py and runs.py call in here.
"""

from __future__ import annotations

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
from .record import RECORD, RunRecord
from .superop import StageOps


def workflow_name(config_path: Path) -> str:
    """simplify-<config name>, or simplify-<folder> for generic names like config.json."""
    stem = config_path.stem
    if stem.lower() in ("config", "simplify", "input", "param", "params"):
        stem = config_path.resolve().parent.name
    stem = "".join(c if c.isalnum() else "-" for c in stem.lower()).strip("-") or "run"
    return f"simplify-{stem}"[:40].rstrip("-")


def config_digest(cfg: SimplifyConfig) -> str:
    blob = json.dumps({"jdata": cfg.jdata, "roots": cfg.pick_uri or cfg.pick_roots, "models": cfg.iter0_models}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def set_local_mode(workdir: Path) -> None:
    from dflow import config as dflow_config

    # dflow runs each OP as `python3` from PATH: make that this interpreter, venv activated or not
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    dflow_config["mode"] = "debug"
    dflow_config["debug_workdir"] = str(workdir.resolve())
    # step inputs as hard links: no symlinks into other steps, and pick_data's bytes are never duplicated
    # (the OPs only read their inputs; dflow falls back to copies across file systems)
    dflow_config["debug_copy_method"] = "link"


class TablePrinter:
    """Prints, from a background thread, a line per step as it ends and a row per iteration as soon as it is known."""

    def __init__(self, wf):
        self.wf, self.printed, self.seen, self.stop = wf, set(), set(), threading.Event()

    def poll(self) -> None:
        from .report import iteration_rows, step_events

        try:
            steps = self.wf.query_step()
            events = step_events(steps, self.seen)
            rows = iteration_rows(steps)
        except Exception:  # the workflow folder is being written; try again later
            return
        for line in events:
            print(line, flush=True)
        for r in rows:
            if r["iteration"] not in self.printed and r["fp_done"]:
                self.printed.add(r["iteration"])
                print(f"[iteration {r['iteration']}] pool {r.get('n_pool')}  candidate {r.get('n_candidate')}  "
                      f"accurate {r.get('n_accurate')}  failed {r.get('n_failed')}  selected {r.get('n_selected')}  "
                      f"relabeled {r['n_relabeled']}", flush=True)

    def run(self) -> None:
        while not self.stop.wait(3.0):
            self.poll()


def run_local(cfg: SimplifyConfig, config_path: Path, output: Path, ops: StageOps = StageOps()) -> int:
    """Run (or resume) the workflow in dflow's debug mode; `ops` the OP class of each stage."""
    output.mkdir(parents=True, exist_ok=True)
    workdir = output / "work"
    set_local_mode(workdir)  # before any Step is built: dflow renders expressions per mode
    from dflow import config as dflow_config

    from .argo import set_s3
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
    def save_record() -> None:
        RunRecord.of(cfg, wf.id, digest, "local", str(config_path), debug_s3=bool(dflow_config["debug_s3"])).save(output)

    stager = InputStager(local=not dflow_config["debug_s3"])
    wf = build_workflow(cfg, workflow_name(config_path), output / "staging", workflow_id=wf_id, stage=stager,
                        ops=ops, local=True)
    printer = TablePrinter(wf)
    thread = threading.Thread(target=printer.run, daemon=True)
    if wf_id is None:
        # dflow picks the id at submit; record it as soon as the workflow folder exists
        thread_id = threading.Thread(target=_record_id, args=(workdir, wf, save_record), daemon=True)
        thread_id.start()
    thread.start()
    t0 = time.time()
    wf.submit()
    printer.stop.set()
    save_record()
    status = wf.query_status()
    if status != "Succeeded":
        for line in failed_step_errors(workdir / wf.id):
            print(f"error: {line}", file=sys.stderr)
        print(f"error: workflow {wf.id} {status}; logs under {workdir / wf.id}. "
              f"Run the same command again to resume.", file=sys.stderr)
        return 1
    printer.poll()
    from .report import collect_outputs

    report = collect_outputs(wf, cfg, output, wall_time=time.time() - t0)
    print(f"done: converged={report['converged']}, relabeled {report['n_relabeled']} of {report['n_frames']} frames; "
          f"models in {output / 'models'}, dataset in {output / 'dataset'}, report {output / 'report.json'}")
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
    """`<step key>: <last exception line>` for every failed OP step of a local run."""
    out = []
    for phase in sorted(wf_dir.glob("*/phase")):
        log = phase.parent / "log.txt"
        if phase.read_text().strip() == "Failed" and log.exists():
            # the exception's last line, its class without the module (dflow.python...FatalError: ...)
            errors = [m.group(1) for ln in log.read_text(errors="replace").splitlines()
                      if (m := re.match(r"^(?:[A-Za-z_][\w]*\.)*(\w*(?:Error|Exception)\b.*)", ln))]
            if errors:
                out.append(f"{phase.parent.name}: {errors[-1]}")
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
    from .argo import secrets_withheld, set_argo_mode, ui_link

    settings = set_argo_mode(cfg.jdata["dflow_config"], cfg.jdata["dflow_s3_config"])  # before any Step
    from .build import build_workflow
    from .inputs import InputStager

    output.mkdir(parents=True, exist_ok=True)
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
