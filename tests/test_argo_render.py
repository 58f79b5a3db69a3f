"""`--render`: the Argo manifest, built without any server, checked offline.

Checked: Argo's Workflow schema made strict (hera's pydantic models, `additionalProperties: false`
everywhere), every template, step and output a step refers to exists, the recursion is guarded by a
condition, the artifact repository is referenced by key, and no S3 key is in the manifest.
"""

import json
import re

import jsonschema
import pytest
from hera.workflows.models import Workflow as HeraWorkflow

from .conftest import run_cli

ACCESS, SECRET = "AKIA-RENDER-TEST-ACCESS", "render-test-secret-9f3b1c"


def strict_schema() -> dict:
    schema = HeraWorkflow.model_json_schema(by_alias=True)

    def strict(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node:
                node.setdefault("additionalProperties", False)
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)

    strict(schema)
    return schema


@pytest.fixture(scope="module")
def manifest(example, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("render")
    j = json.loads((example / "config.json").read_text())
    j["dflow_config"] = {"host": "https://argo.example.org:2746", "namespace": "simplify"}
    j["dflow_s3_config"] = {"endpoint": "minio.example.org:9000", "bucket_name": "simplify", "access_key": ACCESS,
                            "secret_key": SECRET, "repo_key": "simplify-s3",
                            "repo": {"s3": {"bucket": "simplify", "endpoint": "minio.example.org:9000"}}}
    j["step_configs"] = {"run_fp": {"template_config": {"requests": {"cpu": "2"}, "timeout": 3600},
                                    "parallelism": 4, "group_size": 5}}
    for name in ("data", "models"):
        (tmp / name).symlink_to(example / name)
    (tmp / "config.json").write_text(json.dumps(j))
    proc = run_cli([tmp / "config.json", "--render", tmp / "manifest.json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp / "manifest.json").read_text()
    assert ACCESS not in text and SECRET not in text, "an S3 key leaked into the manifest"
    return json.loads(text)


def test_manifest_valid_under_strict_argo_schema(manifest):
    schema = strict_schema()
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(manifest))
    assert not errors, [f"{list(e.absolute_path)}: {e.message[:200]}" for e in errors[:5]]
    broken = json.loads(json.dumps(manifest))
    broken["spec"]["templates"][0]["stepz"] = []  # the strict schema does catch unknown fields
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(broken))


def test_references_exist_and_recursion_is_guarded(manifest):
    templates = {t["name"]: t for t in manifest["spec"]["templates"]}
    assert manifest["spec"]["entrypoint"] in templates
    assert manifest["spec"]["artifactRepositoryRef"] == {"key": "simplify-s3"}
    recursive_calls = 0
    for name, t in templates.items():
        steps = [s for group in t.get("steps", []) for s in group]
        names = {s["name"] for s in steps}
        for s in steps:
            assert s["template"] in templates, f"{name}/{s['name']} calls a missing template {s['template']}"
            text = json.dumps(s)
            for ref, kind, out in re.findall(r"steps\.([\w-]+)\.outputs\.(parameters|artifacts)\.([\w-]+)", text):
                assert ref in names, f"{name}/{s['name']} refers to a missing step {ref}"
                target = templates[next(x for x in steps if x["name"] == ref)["template"]]
                declared = {o["name"] for o in target.get("outputs", {}).get(kind, [])}
                assert out in declared, f"{name}/{s['name']}: {ref} has no output {kind}.{out}"
            if s["template"] == name:  # the loop calls itself: only while select-confs says go on
                recursive_calls += 1
                assert "go_on" in s.get("when", ""), s.get("when")
    assert recursive_calls == 1


def test_stage_settings_and_images_reach_the_pods(manifest):
    scripts = {t["name"]: t for t in manifest["spec"]["templates"]
               if "script" in t and not t["name"].endswith("init-artifact")}
    images = {re.sub(r"-\w{5}(-\w{5})?$", "", n): t["script"]["image"] for n, t in scripts.items()}
    assert images["preptrain"].startswith("dflow-simplify/light:")
    assert images["runtrain"].startswith("dflow-simplify/deepmd:")
    assert images["runfp"].startswith("dflow-simplify/fp-ase:")  # the dftd3 engine's image
    name, runfp = next((n, t) for n, t in scripts.items() if n.startswith("runfp"))
    assert runfp["script"]["resources"]["requests"] == {"cpu": "2"}
    assert runfp["timeout"] == "3600s"
    calls = [s for t in manifest["spec"]["templates"] for g in t.get("steps", []) for s in g
             if s["template"] == name]
    assert len(calls) == 2 and all("withSequence" in s for s in calls)  # iteration 0 and the loop's
    assert '"parallelism": 4' in json.dumps(manifest)
    # inputs are referenced by content-hash keys in the bucket, not embedded
    keys = re.findall(r'"key": "(simplify-inputs/[0-9a-f]{64}/)"', json.dumps(manifest))
    assert len(set(keys)) >= 3
