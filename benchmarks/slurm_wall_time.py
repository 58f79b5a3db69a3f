"""Wall time of the example through a real one-node Slurm against plain local mode, side by side.

    scripts/slurm-local.sh start && .venv/bin/python benchmarks/slurm_wall_time.py

Rules, fixed before the first run: the Ag-Au example (examples/ag-au-emt-d3, after make_example.py), one run
per setting, one after the other on an otherwise idle machine, in this order:
  plain   config.json, local mode (every step a subprocess here)
  slurm   config-slurm.json: training, model deviation and labeling as Slurm jobs, poll_interval 2 s
  poll30  the same with poll_interval 30 s (dpdispatcher's own default, what DP-GEN polls with)
Each is the CLI's wall time for the whole run; the results must be equal (report.json without its run id and
wall time), else the script says so. Printed: seconds, the ratio to plain, the number of batch jobs.
"""

from __future__ import annotations

import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dflow_simplify.workflows.dispatch import JOB_IDS_LINE

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ag-au-emt-d3"
JOB_LINE = re.compile(JOB_IDS_LINE, re.M)


def config_for(name: str, folder: Path) -> Path:
    if name == "plain":
        return EXAMPLE / "config.json"
    j = json.loads((EXAMPLE / "config-slurm.json").read_text())
    if name == "poll30":
        for conf in j["step_configs"].values():
            conf["executor"]["poll_interval"] = 30
    folder.mkdir(parents=True)
    for sub in ("data", "models"):
        (folder / sub).symlink_to(EXAMPLE / sub)
    (folder / "config.json").write_text(json.dumps(j))
    return folder / "config.json"


def run(name: str, root: Path) -> dict:
    out = root / name / "run"
    config = config_for(name, root / name / "inputs")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "submit_simplify.py"), str(config), "-o", str(out)],
                          capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{name}: the run failed:\n{proc.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    jobs = sum(len(JOB_LINE.findall(p.read_text(errors="replace"))) for p in (out / "work").glob("*/iter-*/log.txt"))
    for key in ("workflow_id", "wall_time_s"):
        report.pop(key)
    return {"wall_s": wall, "jobs": jobs, "report": report}


def main() -> None:
    if subprocess.run(["bash", str(ROOT / "scripts" / "slurm-local.sh"), "status"], capture_output=True).returncode:
        sys.exit("no Slurm: run scripts/slurm-local.sh start first")
    results = {}
    with tempfile.TemporaryDirectory(prefix="slurm-wall-") as tmp:
        for name in ("plain", "slurm", "poll30"):
            results[name] = run(name, Path(tmp))
            print(f"{name}: {results[name]['wall_s']:.1f} s, {results[name]['jobs']} batch jobs", flush=True)
    same = all(r["report"] == results["plain"]["report"] for r in results.values())
    print(f"\nmachine: {platform.node()}, {platform.processor() or platform.machine()}; results equal: {same}")
    print("| setting | wall time (s) | ratio to plain | batch jobs |")
    print("| --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['wall_s']:.0f} | {r['wall_s'] / results['plain']['wall_s']:.2f} | {r['jobs']} |")


if __name__ == "__main__":
    main()
