"""`python -m tests.run_fake_loop CONFIG OUTPUT`: run_local with the FAKE stages of tests/fake_ops.py, as the CLI
runs the real ones; a process of its own, as dflow's debug mode refuses to resume a workflow whose process is
alive, and a module apart from the OPs' (dflow inlines the source of OPs defined in `__main__`)."""

import sys
from pathlib import Path

from dflow_simplify.workflows.config import load_config
from dflow_simplify.workflows.submit import run_local
from tests.fake_ops import fake_stages

if __name__ == "__main__":
    config, output = sys.argv[1:]
    sys.exit(run_local(load_config(config), Path(config).resolve(), Path(output).resolve(), ops=fake_stages()))
