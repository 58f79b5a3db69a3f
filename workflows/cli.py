"""`submit_simplify.py config.json [--check] [--output DIR]`: validate, run (local mode), resume, report.

Local mode (the default: no Argo host in `dflow_config`) runs the workflow in dflow's debug mode under
`<output>/work`. Running the same command again on the same output folder resumes the workflow:
every step that finished (by key) is reused.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

from .config import ConfigError, SimplifyConfig, load_config

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="submit_simplify.py", description="DP-GEN simplify on dflow")
    p.add_argument("config", help="DP-GEN simplify parameter file (JSON)")
    p.add_argument("--check", action="store_true", help="validate the config and exit")
    p.add_argument("-o", "--output", help="output folder (default: ./<workflow name>)")
    p.add_argument("--render", metavar="FILE",
                   help="write the Argo Workflow manifest (JSON) that would be submitted, contacting no server")
    return p


def workflow_name(config_path: Path) -> str:
    """simplify-<config name>, or simplify-<folder> for generic names like config.json."""
    stem = config_path.stem
    if stem.lower() in ("config", "simplify", "input", "param", "params"):
        stem = config_path.resolve().parent.name
    stem = "".join(c if c.isalnum() else "-" for c in stem.lower()).strip("-") or "run"
    return f"simplify-{stem}"[:40].rstrip("-")


def config_digest(cfg: SimplifyConfig) -> str:
    blob = json.dumps({"jdata": cfg.jdata, "roots": cfg.pick_roots, "models": cfg.iter0_models}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def summary(cfg: SimplifyConfig) -> str:
    j = cfg.jdata
    return (f"config OK: {len(cfg.systems)} system(s), {cfg.n_frames} frames in pick_data; "
            f"{j['numb_models']} models ({j['train_backend']}, start: {cfg.init_mode}); fp_style {cfg.fp_style}; "
            f"pick {j['init_pick_number']} then <= {j['iter_pick_number']} per iteration; "
            f"f_trust [{j['model_devi_f_trust_lo']}, {j['model_devi_f_trust_hi']})")


def _set_local_mode(workdir: Path) -> None:
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
    """Prints a row per iteration as soon as it is known, from a background thread."""

    def __init__(self, wf):
        self.wf, self.printed, self.stop = wf, set(), threading.Event()

    def poll(self) -> None:
        from .report import iteration_rows

        try:
            rows = iteration_rows(self.wf.query_step())
        except Exception:  # the workflow folder is being written; try again later
            return
        for r in rows:
            if r["iteration"] not in self.printed and r["fp_done"]:
                self.printed.add(r["iteration"])
                print(f"[iteration {r['iteration']}] pool {r.get('n_pool')}  candidate {r.get('n_candidate')}  "
                      f"accurate {r.get('n_accurate')}  failed {r.get('n_failed')}  selected {r.get('n_selected')}  "
                      f"relabeled {r['n_relabeled']}", flush=True)

    def run(self) -> None:
        while not self.stop.wait(3.0):
            self.poll()


def run_local(cfg: SimplifyConfig, config_path: Path, output: Path) -> int:
    output.mkdir(parents=True, exist_ok=True)
    workdir = output / "work"
    _set_local_mode(workdir)  # before any Step is built: dflow renders expressions per mode
    from .build import build_workflow

    state_file = output / "workflow.json"
    digest = config_digest(cfg)
    wf_id = None
    if state_file.exists():
        prev = json.loads(state_file.read_text())
        if prev.get("config_digest") != digest:
            print(f"error: {output} holds a run of a different config; use another --output", file=sys.stderr)
            return EXIT_CONFIG
        wf_id = prev["workflow_id"]
        print(f"resuming workflow {wf_id} in {output}")
    wf = build_workflow(cfg, workflow_name(config_path), output / "staging", workflow_id=wf_id)
    printer = TablePrinter(wf)
    thread = threading.Thread(target=printer.run, daemon=True)
    if wf_id is None:
        # dflow picks the id at submit; record it as soon as the workflow folder exists
        thread_id = threading.Thread(target=_record_id, args=(workdir, wf, state_file, digest), daemon=True)
        thread_id.start()
    thread.start()
    t0 = time.time()
    wf.submit()
    printer.stop.set()
    _write_state(state_file, wf.id, digest)
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
    from .argo import ArgoSettingsError, argo_host, keys_withheld, set_argo_mode

    dflow_conf = dict(cfg.jdata["dflow_config"])
    dflow_conf["host"] = argo_host(dflow_conf) or "https://127.0.0.1:2746"  # rendering needs no server
    try:
        set_argo_mode(dflow_conf, cfg.jdata["dflow_s3_config"])  # before any Step is built
    except ArgoSettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    from .build import build_workflow
    from .inputs import InputStager

    with keys_withheld(), tempfile.TemporaryDirectory() as staging:
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
            errors = [ln for ln in log.read_text(errors="replace").splitlines() if re.match(r"^\w*(Error|Exception)\b", ln)]
            if errors:
                out.append(f"{phase.parent.name}: {errors[-1]}")
    return out


def _write_state(state_file: Path, wf_id: str, digest: str) -> None:
    state_file.write_text(json.dumps({"workflow_id": wf_id, "config_digest": digest}))


def _record_id(workdir: Path, wf, state_file: Path, digest: str) -> None:
    for _ in range(600):
        if wf.id is not None and (workdir / wf.id).exists():
            _write_state(state_file, wf.id, digest)
            return
        time.sleep(0.1)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config_path = Path(args.config)
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(summary(cfg))
    if args.check:
        return 0
    if args.render:
        return render(cfg, config_path, Path(args.render))
    if cfg.jdata["dflow_config"].get("host"):
        print("error: dflow_config.host: submission to an Argo server is not available in this version; "
              "remove 'host' to run locally", file=sys.stderr)
        return EXIT_CONFIG
    output = Path(args.output) if args.output else Path.cwd() / workflow_name(config_path)
    return run_local(cfg, config_path.resolve(), output.resolve())


if __name__ == "__main__":
    sys.exit(main())

