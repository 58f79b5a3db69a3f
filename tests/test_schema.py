"""The config schema: a doc on every key, the generated reference page current, DP-GEN's unused keys warned about."""

import json

from dflow_simplify.workflows.config import validate
from dflow_simplify.workflows.schema import IGNORED_KEYS, config_args, reference_page
from tests.conftest import ROOT, run_cli


def test_every_key_has_a_doc():
    undocumented = [a.name for a in config_args().sub_fields.values() if not (a.doc or "").strip()]
    assert undocumented == []


def test_the_reference_page_is_current():
    page = (ROOT / "docs" / "config.rst").read_text()
    assert page == reference_page(), "regenerate: python -m dflow_simplify.workflows.schema > docs/config.rst"
    assert all(f"simplify/{name}" in page for name in config_args().sub_fields)


def test_dpgen_keys_accepted_but_unused_are_warned_about_one_line_each(example_inputs, tmp_path):
    j = json.loads((example_inputs / "config.json").read_text())
    assert validate(j, example_inputs).warnings == []
    j.update(mass_map=[107.87, 196.97], shuffle_poscar=False, use_clusters=False, model_devi_engine="lammps")
    warnings = validate(j, example_inputs).warnings
    assert [w.split(":")[0] for w in warnings] == [k for k in IGNORED_KEYS if k in j] and len(warnings) == 4
    (tmp_path / "c.json").write_text(json.dumps(j))
    for name in ("data", "models"):
        (tmp_path / name).symlink_to(example_inputs / name)
    proc = run_cli([tmp_path / "c.json", "--check"])
    assert proc.returncode == 0
    assert [ln for ln in proc.stdout.splitlines() if ln.startswith("warning: ")] == [f"warning: {w}" for w in warnings]

