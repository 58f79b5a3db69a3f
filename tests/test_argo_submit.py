"""Contract tests of the Argo path (no Argo here): what `submit_simplify.py` sends to Argo's API, recorded
by a local HTTP endpoint, with the inputs uploaded to a real S3 endpoint (moto's server) on 127.0.0.1.

Checked: `POST /api/v1/workflows/{namespace}` with the bearer token, a body whose workflow is valid under
Argo's schema made strict, inputs uploaded once by content hash (a second submission uploads 0 bytes),
no secret (S3 keys, token) in the request, the output or the record; status/stop/delete/resubmit calls.
"""

import json

import jsonschema
import pytest

from .conftest import run_cli
from .servers import ArgoRecorder, MotoS3
from .test_argo_render import strict_schema

ACCESS, SECRET, TOKEN = "AKIA-CONTRACT-ACCESS", "contract-secret-5e1d0a", "contract-token-c0ffee"
BUCKET = "simplify-test"


@pytest.fixture(scope="session")
def example(example_inputs):
    """This module needs the example's config and data only: stand-in models, no training."""
    return example_inputs


@pytest.fixture(scope="module")
def servers():
    s3, argo = MotoS3(BUCKET), ArgoRecorder()
    yield s3, argo
    s3.close()
    argo.close()


@pytest.fixture(scope="module")
def argo_config(example, servers, tmp_path_factory):
    s3, argo = servers
    tmp = tmp_path_factory.mktemp("argo-submit")
    j = json.loads((example / "config.json").read_text())
    j["dflow_config"] = {"host": argo.host, "namespace": "simplify", "token": TOKEN}
    j["dflow_s3_config"] = {"endpoint": s3.endpoint, "bucket_name": BUCKET, "access_key": ACCESS,
                            "secret_key": SECRET, "secure": False, "repo_key": "simplify-s3",
                            "repo": {"s3": {"bucket": BUCKET, "endpoint": "minio.simplify:9000"}}}
    for name in ("data", "models"):
        (tmp / name).symlink_to(example / name)
    (tmp / "config.json").write_text(json.dumps(j))
    return tmp


def _inputs_bytes(example) -> int:
    return sum(p.stat().st_size for d in ("data/pick", "models") for p in (example / d).rglob("*") if p.is_file())


def test_submit_posts_a_valid_workflow_with_the_token_and_no_secret(example, servers, argo_config):
    s3, argo = servers
    mark, n_req = len(s3.log), len(argo.requests)
    proc = run_cli([argo_config / "config.json", "-o", argo_config / "run1"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    posts = [r for r in argo.requests[n_req:] if r["method"] == "POST"]
    assert len(posts) == 1 and posts[0]["path"] == "/api/v1/workflows/simplify"
    assert posts[0]["headers"]["Authorization"] == f"Bearer {TOKEN}"
    manifest = posts[0]["body"]["workflow"]
    errors = list(jsonschema.Draft202012Validator(strict_schema()).iter_errors(manifest))
    assert not errors, [f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:5]]
    record = json.loads((argo_config / "run1" / "workflow.json").read_text())
    wf_id = record["workflow_id"]
    assert record["mode"] == "argo" and wf_id.startswith(manifest["metadata"]["generateName"])
    assert f"{argo.host}/workflows/simplify/{wf_id}" in proc.stdout
    for text in (json.dumps(posts[0]), proc.stdout, proc.stderr, json.dumps(record)):
        for secret in (ACCESS, SECRET, TOKEN):
            assert secret not in text.replace(f"Bearer {TOKEN}", "")  # the header is where the token belongs
    # the inputs are in the bucket under the keys the manifest names; their bytes went up once
    keys = {a["s3"]["key"] for a in _artifacts(manifest) if "s3" in a}
    assert any(k.startswith("simplify-inputs/") for k in keys)
    assert s3.bytes_up(mark) >= _inputs_bytes(example)


def test_resubmitting_unchanged_inputs_uploads_nothing(servers, argo_config):
    s3, argo = servers
    mark = len(s3.log)
    proc = run_cli([argo_config / "config.json", "-o", argo_config / "run2"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "0 uploaded" in proc.stdout
    assert s3.bytes_up(mark) == 0 and not [e for e in s3.log[mark:] if e[0] == "PUT"]


def test_status_stop_delete_and_resubmit_reach_the_api(servers, argo_config):
    s3, argo = servers
    run = argo_config / "run1"
    wf_id = json.loads((run / "workflow.json").read_text())["workflow_id"]
    argo.phase = "Running"
    n = len(argo.requests)
    assert "Running" in run_cli(["status", run]).stdout
    assert run_cli(["stop", run]).returncode == 0
    assert ("PUT", f"/api/v1/workflows/simplify/{wf_id}/stop") in [(r["method"], r["path"]) for r in argo.requests[n:]]
    assert run_cli(["delete", run]).returncode == 2  # still running: refused
    argo.phase = "Stopped"
    assert run_cli(["delete", run]).returncode == 0
    assert ("DELETE", f"/api/v1/workflows/simplify/{wf_id}") in [(r["method"], r["path"]) for r in argo.requests[n:]]
    assert all(r["headers"].get("Authorization") == f"Bearer {TOKEN}" for r in argo.requests[n:])
    n = len(argo.requests)
    proc = run_cli(["resubmit", run])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [r["path"] for r in argo.requests[n:] if r["method"] == "POST"] == ["/api/v1/workflows/simplify"]


def test_bad_argo_settings_fail_before_anything_is_sent(servers, argo_config):
    s3, argo = servers
    j = json.loads((argo_config / "config.json").read_text())
    j["dflow_config"]["hots"] = "typo"
    (argo_config / "bad.json").write_text(json.dumps(j))
    n, mark = len(argo.requests), len(s3.log)
    proc = run_cli([argo_config / "bad.json", "-o", argo_config / "bad"])
    assert proc.returncode == 2 and "dflow_config: unknown key(s) ['hots']" in proc.stderr
    assert len(argo.requests) == n and len(s3.log) == mark


def _artifacts(node):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "artifacts" and isinstance(v, list):
                yield from (a for a in v if isinstance(a, dict))
            yield from _artifacts(v)
    elif isinstance(node, list):
        for v in node:
            yield from _artifacts(v)
