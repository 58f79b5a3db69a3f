"""`submit_simplify.py [run] config.json [--check] [--render FILE] [-o DIR]`: validate, run or submit, resume,
report; `submit_simplify.py {status,watch,download,resubmit,stop,delete} ID`: manage a run (see runs.py);
`submit_simplify.py substitute OLD OUT --substitute NEW=OLD`: a similar material's pick_data (ops/substitute.py).

Local mode (the default: no Argo host in `dflow_config` nor DFLOW_HOST) runs the workflow in dflow's
debug mode under `<output>/work`. Running the same command again on the same output folder resumes the
workflow: every step that finished (by key) is reused. With a host, the workflow is submitted to Argo
(inputs uploaded to S3 once, by content hash) and `<output>/workflow.json` records it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import EXIT_CONFIG, ConfigError, SimplifyConfig, load_config

COMMANDS = ("status", "watch", "download", "resubmit", "stop", "delete")


def parser() -> argparse.ArgumentParser:
    """One parser: `run` (implied when the first argument is a config file) and the commands on a run."""
    p = argparse.ArgumentParser(prog="submit_simplify.py", description="DP-GEN simplify on dflow")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="validate, then run locally or submit to Argo (the default command)")
    run.add_argument("config", help="DP-GEN simplify parameter file (JSON)")
    run.add_argument("--check", action="store_true", help="validate the config and exit")
    run.add_argument("-o", "--output", help="output folder (default: ./<workflow name>)")
    run.add_argument("-v", "--verbose", action="store_true",
                     help="local mode: relay every step's own output (kept in its log.txt under <output>/work)")
    run.add_argument("--render", metavar="FILE",
                     help="write the Argo Workflow manifest (JSON) that would be submitted, contacting no server")
    for name in COMMANDS:
        c = sub.add_parser(name, help=f"{name} a run, local or on Argo")
        c.add_argument("id", metavar="ID", help="the run's output folder, or an Argo workflow id (with --config)")
        c.add_argument("--config", help="config with the Argo/S3 settings (default: the run's record)")
        c.add_argument("-o", "--output", help="download: target folder (default: the run's output folder)")
    sub_ = sub.add_parser("substitute", help="a similar material's frames from old ones (unlabeled deepmd/npy)")
    sub_.add_argument("source", help="folder of the old deepmd/npy systems")
    sub_.add_argument("out", help="new folder for the substituted systems")
    sub_.add_argument("--substitute", metavar="NEW=OLD", action="append", required=True,
                      help="NEW takes the place of OLD, as in element_substitution (repeat for more elements)")
    sub_.add_argument("--scale", type=float, default=1.0, help="lattice scaling of cells and positions (default 1)")
    sub_.add_argument("--min-distance", type=float, default=1.0,
                      help="refuse frames whose shortest interatomic distance (A) falls below this (default 1.0)")
    return p


def summary(cfg: SimplifyConfig) -> str:
    j = cfg.jdata
    training = "dp train" if cfg.train_style == "sgd" else "exact output layer" + (", bootstrap" * cfg.exact_bootstrap)
    return (f"config OK: {len(cfg.systems)} system(s), {cfg.n_frames} frames in pick_data; "
            f"{j['numb_models']} models ({j['train_backend']}, start: {cfg.init_mode}, {training}); "
            f"fp_style {cfg.fp_style}; "
            f"pick {j['init_pick_number']} then <= {j['iter_pick_number']} per iteration; "
            f"f_trust [{j['model_devi_f_trust_lo']}, {j['model_devi_f_trust_hi']})"
            + ("" if j["relative_f_epsilon"] is None else f" relative (epsilon {j['relative_f_epsilon']} eV/A)"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    if argv and argv[0] not in COMMANDS + ("run", "substitute", "-h", "--help"):
        argv = ["run", *argv]  # `submit_simplify.py config.json` as before
    args = parser().parse_args(argv)
    if args.command == "substitute":
        return _substitute(args)
    if args.command != "run":
        from .runs import run_command

        return run_command(args.command, args.id, args.config, args.output)
    config_path = Path(args.config)
    try:
        cfg = load_config(config_path)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(summary(cfg))
    for line in cfg.warnings:
        print(f"warning: {line}")
    from .output import OutputError, check_output, run_inputs, workflow_name

    output = Path(args.output) if args.output else Path.cwd() / workflow_name(config_path)
    try:
        if not args.render:  # where the run would write, checked as the run checks it
            check_output(output, run_inputs(cfg))
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check:
        return 0
    from .argo import ArgoSettingsError
    from .inputs import S3Unavailable
    from .recovery import is_no_space, no_space_message

    try:
        return _run(cfg, config_path, output, args)
    except ArgoSettingsError as e:  # dflow_config / dflow_s3_config, found before anything is built or sent
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except S3Unavailable as e:
        print(f"error: uploading the inputs failed: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except OSError as e:
        if not is_no_space(e):
            raise
        print(f"error: {no_space_message(output, [e.filename] if e.filename else [])}", file=sys.stderr)
        return 1


def _substitute(args) -> int:
    from dflow_simplify.ops.substitute import substitute_data

    from .output import OutputError, check_output

    pairs = [p.split("=", 1) for p in args.substitute]
    if any(len(p) != 2 or not all(p) for p in pairs):
        print(f"error: --substitute: expected NEW=OLD (e.g. Cu=Ag), got {args.substitute}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        check_output(Path(args.out), {"the old frames": [args.source]}, flag="OUT")
        out = substitute_data(args.source, args.out, dict(pairs), args.scale, args.min_distance)
    except (ValueError, OutputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    d = out["shortest_distance"]
    print(f"{out['frames']} frames in {out['systems']} system(s) under {args.out}, type_map {out['type_map']}, "
          f"unlabeled; shortest interatomic distance {d['new']} A (old frames {d['old']} A)")
    return 0


def _run(cfg: SimplifyConfig, config_path: Path, output: Path, args) -> int:
    from .submit import render

    if args.render:
        return render(cfg, config_path, Path(args.render))
    return _run_in(cfg, config_path, output, args.verbose)


def _run_in(cfg: SimplifyConfig, config_path: Path, output: Path, verbose: bool) -> int:
    from .argo import argo_host
    from .submit import config_digest, previous_run, run_local, submit_argo

    if argo_host(cfg.jdata["dflow_config"]):
        prev = previous_run(output.resolve(), config_digest(cfg))
        if isinstance(prev, int):
            return prev
        if prev is not None:
            print(f"error: {output} already records the run {prev.workflow_id}; `resubmit {output}` continues it, "
                  "or give another --output", file=sys.stderr)
            return EXIT_CONFIG
        return submit_argo(cfg, config_path.resolve(), output.resolve())
    return run_local(cfg, config_path.resolve(), output.resolve(), verbose=verbose)


if __name__ == "__main__":
    sys.exit(main())

