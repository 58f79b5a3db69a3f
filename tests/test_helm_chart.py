"""helm/dflow-simplify: lints strictly, renders offline (helm's Go SDK through helm-python-sdk), every
rendered object is valid under `kubernetes-validate --strict`, bad values are refused by
values.schema.json, and what the chart creates is what a rendered workflow refers to."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

helm = pytest.importorskip("helm_python")

from dflow_simplify.workflows.step_config import IMAGE_DEEPMD, IMAGE_FP, IMAGE_LIGHT  # noqa: E402

from .conftest import run_cli  # noqa: E402
from .test_config import _mapbi3  # noqa: E402

CHART = Path(__file__).resolve().parents[1] / "helm" / "dflow-simplify"
K8S_VERSIONS = ("1.25.0", "1.37.0")  # the oldest and newest schemas kubernetes-validate has

EXTERNAL = {  # an existing S3 endpoint, keys in the user's own Secret, the Argo UI behind an ingress
    "s3": {"endpoint": "s3.example.org:443", "insecure": False, "existingSecret": "team-s3-keys",
           "prefix": "simplify/", "region": "eu-west-1"},
    "minio": {"enabled": False},
    "workflow": {"legacyExecutorRBAC": True, "imagePullSecrets": ["registry-pull"]},
    "argoServer": {"ingress": {"enabled": True, "className": "nginx", "host": "argo.example.org",
                               "tlsSecret": "argo-tls",
                               "annotations": {"nginx.ingress.kubernetes.io/backend-protocol": "HTTPS"}}},
}
KEYS = {"s3": {"accessKey": "chart-test-access", "secretKey": "chart-test-secret-5a7c"}}


def render(values: dict | None = None) -> tuple[list[dict], str]:
    chart = helm.Chart.load(str(CHART))
    out = chart.render(values, name="sim", namespace="simplify", is_install=True)
    notes = "".join(v for k, v in out.items() if k.endswith("NOTES.txt"))
    docs = [d for k, v in out.items() if not k.endswith("NOTES.txt") for d in yaml.safe_load_all(v) if d]
    return docs, notes


def find(docs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


@pytest.mark.parametrize("values", [None, EXTERNAL], ids=["bundled-minio", "external-s3"])
def test_chart_lints_strictly(values):
    report = helm.lint(str(CHART), values, strict=True)
    serious = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not serious, report


@pytest.mark.parametrize("values", [None, KEYS, EXTERNAL], ids=["bundled-minio", "given-keys", "external-s3"])
def test_every_rendered_object_is_valid_kubernetes(values):
    docs, _ = render(values)
    assert docs
    for doc in docs:
        for version in K8S_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)  # raises on any unknown or malformed field


def test_artifact_repository_names_the_secret_the_chart_creates():
    docs, notes = render(KEYS)
    (cm,) = find(docs, "ConfigMap", "artifact-repositories")
    assert cm["metadata"]["annotations"]["workflows.argoproj.io/default-artifact-repository"] == "simplify-s3"
    repo = yaml.safe_load(cm["data"]["simplify-s3"])["s3"]
    assert repo["bucket"] == "simplify" and repo["endpoint"] == "sim-dflow-simplify-minio.simplify.svc:9000"
    assert repo["keyFormat"] == "{{workflow.name}}/{{pod.name}}"  # Argo's placeholders survive helm's templating
    (secret,) = find(docs, "Secret", repo["accessKeySecret"]["name"])
    keys = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert keys == {"accesskey": "chart-test-access", "secretkey": "chart-test-secret-5a7c"}
    assert repo["secretKeySecret"] == {"name": secret["metadata"]["name"], "key": "secretkey"}
    # MinIO and its bucket job read the same Secret
    (minio,) = find(docs, "Deployment")
    refs = [e["valueFrom"]["secretKeyRef"] for e in minio["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert {r["name"] for r in refs} == {secret["metadata"]["name"]}
    (job,) = find(docs, "Job")
    assert "store/simplify" in job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    # the keys are only in the Secret: not in any other object, nor in the notes
    others = yaml.safe_dump_all([d for d in docs if d["kind"] != "Secret"]) + notes
    assert "chart-test-access" not in others and "chart-test-secret-5a7c" not in others
    # data outlives the release
    for obj in find(docs, "Secret") + find(docs, "PersistentVolumeClaim"):
        assert obj["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_generated_keys_when_none_are_given():
    docs, _ = render()
    (secret,) = find(docs, "Secret")
    keys = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert len(keys["accesskey"]) == 20 and len(keys["secretkey"]) == 40


def test_workflow_pods_get_only_what_argos_executor_needs():
    docs, _ = render()
    (role,) = find(docs, "Role")
    assert role["rules"] == [{"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"],
                              "verbs": ["create", "patch"]}]
    (binding,) = find(docs, "RoleBinding")
    (sa,) = find(docs, "ServiceAccount")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": "simplify"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_external_s3_and_argo_ui_ingress():
    docs, notes = render(EXTERNAL)
    assert not find(docs, "Deployment") and not find(docs, "Secret") and not find(docs, "Job")  # no MinIO, user's Secret
    (cm,) = find(docs, "ConfigMap")
    repo = yaml.safe_load(cm["data"]["simplify-s3"])["s3"]
    assert repo["endpoint"] == "s3.example.org:443" and repo["insecure"] is False and repo["region"] == "eu-west-1"
    assert repo["accessKeySecret"] == {"name": "team-s3-keys", "key": "accesskey"}
    assert repo["keyFormat"] == "simplify/{{workflow.name}}/{{pod.name}}"
    (ing,) = find(docs, "Ingress")
    assert ing["metadata"]["namespace"] == "argo" and ing["spec"]["tls"][0]["secretName"] == "argo-tls"
    assert ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"] == {"name": "argo-server",
                                                                                 "port": {"number": 2746}}
    (sa,) = find(docs, "ServiceAccount")
    assert sa["imagePullSecrets"] == [{"name": "registry-pull"}]
    (role,) = find(docs, "Role")
    assert any("pods" in r["resources"] for r in role["rules"])  # legacy executors


BAD_VALUES = [
    ({"s3": {"bucket": "Bad_Bucket"}}, "bucket"),
    ({"s3": {"prefix": "no-trailing-slash"}}, "prefix"),
    ({"s3": {"endpoint": "https://s3.example.org"}}, "endpoint"),
    ({"s3": {"secretKey": "short"}}, "secretKey"),
    ({"s3": {"existingSecret": "keys", "accessKey": "abc", "secretKey": "abcdefgh"}}, "accessKey"),
    ({"minio": {"enabled": False}}, "endpoint"),
    ({"minio": {"enabled": False}, "s3": {"endpoint": "s3.example.org:443"}}, "existingSecret"),
    ({"minio": {"imagePullPolicy": "Sometimes"}}, "imagePullPolicy"),
    ({"minio": {"persistence": {"size": "lots"}}}, "size"),
    ({"minio": {"replicas": 3}}, "replicas"),
    ({"workflow": {"serviceAccount": {"name": "Simplify_SA"}}}, "name"),
    ({"argoServer": {"ingress": {"enabled": True, "servicePort": 99999}}}, "servicePort"),
    ({"typo": 1}, "typo"),
]


@pytest.mark.parametrize("values,key", BAD_VALUES, ids=[k for _, k in BAD_VALUES])
def test_bad_values_fail_at_install_time(values, key):
    chart = helm.Chart.load(str(CHART))
    with pytest.raises(helm.HelmError) as err:
        chart.render(values, name="sim", namespace="simplify", is_install=True)
    assert key in str(err.value), str(err.value)


def test_notes_settings_drive_a_workflow_that_uses_what_the_chart_made(tmp_path):
    """The dflow_s3_config and service account the chart's notes print, put into a config, render a
    workflow that names the chart's artifact repository and service account."""
    docs, notes = render(KEYS)
    s3 = json.loads(re.search(r'"dflow_s3_config": (\{.*\})', notes).group(1))
    sa = re.search(r'"service_account": "([^"]+)"', notes).group(1)
    s3["endpoint"] = "127.0.0.1:9000"
    path = _mapbi3(tmp_path, fp_style="dftd3", dflow_s3_config=s3,
                   dflow_config={"host": "https://argo.example.org:2746", "namespace": "simplify",
                                 "service_account": sa, "image_registry": "reg.example.org/team/"})
    proc = run_cli([path, "--render", tmp_path / "manifest.json"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    spec = json.loads((tmp_path / "manifest.json").read_text())["spec"]
    (cm,) = find(docs, "ConfigMap", "artifact-repositories")
    assert spec["artifactRepositoryRef"] == {"key": next(iter(cm["data"]))}
    assert spec["serviceAccountName"] == find(docs, "ServiceAccount")[0]["metadata"]["name"]
    # the stage images come from the user's registry, where images/build.sh --registry pushed them
    images = {t["script"]["image"] for t in spec["templates"] if "script" in t}
    assert images == {"reg.example.org/team/" + i for i in (IMAGE_LIGHT, IMAGE_FP["dftd3"], IMAGE_DEEPMD)}


def test_image_registry_must_be_a_prefix(tmp_path):
    path = _mapbi3(tmp_path, fp_style="dftd3", dflow_config={"host": "https://argo.example.org:2746",
                                                             "image_registry": "reg.example.org/team"})
    proc = run_cli([path, "--render", tmp_path / "manifest.json"])
    assert proc.returncode == 2 and "dflow_config.image_registry" in proc.stderr, proc.stderr[-2000:]
