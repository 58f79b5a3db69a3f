"""ruff, configured in pyproject.toml, over the whole repository."""

import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(ROOT / ".venv" / "bin" / "ruff")
    proc = subprocess.run([ruff, "check", str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]


def test_no_import_cycle_between_the_cli_and_the_run_commands():
    """runs.py and submit.py are loaded by the CLI; neither imports cli.py, and submit.py does not import runs.py."""
    code = ("import sys; import dflow_simplify.workflows.submit as s; "
            "print('dflow_simplify.workflows.runs' in sys.modules, 'dflow_simplify.workflows.cli' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]
    for name in ("runs.py", "submit.py", "record.py"):
        assert "from .cli" not in (ROOT / "workflows" / name).read_text()
