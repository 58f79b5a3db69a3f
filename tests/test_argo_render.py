"""`--render`: the Argo manifest, built without any server, checked offline.

Checked: Argo's Workflow schema made strict (hera's pydantic models, `additionalProperties: false`
everywhere), every template, step and output a step refers to exists, the recursion is guarded by a
condition, the artifact repository is referenced by key, and no S3 key is in the manifest.
"""

import json
import os
import re
from pathlib import Path

import jsonschema
import pytest
from hera.workflows.models import Workflow as HeraWorkflow

from .conftest import run_cli, run_main

ACCESS, SECRET, TOKEN = "AKIA-RENDER-TEST-ACCESS", "render-test-secret-9f3b1c", "render-test-token-4d2e"


@pytest.fixture(scope="session")
def example(example_inputs):
    """This module needs the example's config and data only: stand-in models, no training."""
    return example_inputs


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
    j["dflow_config"] = {"host": "https://argo.example.org:2746", "namespace": "simplify",
                         "service_account": "simplify-workflow", "token": TOKEN}
    j["dflow_s3_config"] = {"endpoint": "minio.example.org:9000", "bucket_name": "simplify", "access_key": ACCESS,
                            "secret_key": SECRET, "repo_key": "simplify-s3",
                            "repo": {"s3": {"bucket": "simplify", "endpoint": "minio.example.org:9000"}}}
    j["step_configs"] = {"run_fp": {"template_config": {"requests": {"cpu": "2"}, "timeout": 3600},
                                    "parallelism": 4, "group_size": 5},
                         "run_train": {"template_config": {"limits": {"nvidia.com/gpu": "1"}}},
                         "model_devi": {"template_config": {"limits": {"nvidia.com/gpu": "1"}}, "shard_size": 64}}
    for name in ("data", "models"):
        (tmp / name).symlink_to(example / name)
    (tmp / "render.json").write_text(json.dumps(j))  # the workflow's name: simplify-render
    proc = run_cli([tmp / "render.json", "--render", tmp / "manifest.json"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = (tmp / "manifest.json").read_text()
    assert ACCESS not in text and SECRET not in text, "an S3 key leaked into the manifest"
    assert TOKEN not in text, "the Argo token leaked into the manifest"
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
    assert manifest["spec"]["serviceAccountName"] == "simplify-workflow"  # dflow alone always writes "argo"
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
    keys = re.findall(r'"key": "(simplify-inputs/[0-9a-f]{64})"', json.dumps(manifest))
    assert len(set(keys)) >= 3


GOLDEN = Path(__file__).parent / "data" / "golden" / "argo-manifest.json"


def normalized(manifest: dict) -> dict:
    """Random suffixes of template names and input content hashes replaced; each OP script reduced to its
    lines naming this package (the rest is dflow's own boilerplate, which changes with dflow's version)."""
    text = json.dumps(manifest, indent=1, sort_keys=True)
    names = sorted({t["name"] for t in manifest["spec"]["templates"]}, key=len, reverse=True)
    for n in names:
        text = re.sub(rf'"{re.escape(n)}"', '"' + re.sub(r"(-[a-z0-9]{5})+(?=(-init-artifact)?$)", "-*", n) + '"', text)
    text = re.sub(r"[0-9a-f]{64}", "<sha256>", text)
    out = json.loads(text)
    for t in out["spec"]["templates"]:
        if "script" in t:
            t["script"]["source"] = [ln for ln in t["script"]["source"].splitlines() if "dflow_simplify" in ln]
    return out


def test_manifest_matches_the_golden_file(manifest):
    """Any change to the workflow's structure shows here; regenerate with UPDATE_GOLDEN=1 after checking it."""
    got = normalized(manifest)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
    assert got == json.loads(GOLDEN.read_text()), "the rendered workflow changed (UPDATE_GOLDEN=1 to accept)"


HPC = {"type": "dispatcher", "host": "hpc.example.org", "username": "alice", "image": "dflow-simplify/deepmd:0.1.0",
       "machine_dict": {"batch_type": "Slurm", "context_type": "SSHContext", "remote_root": "/scratch/alice/simplify",
                        "remote_profile": {"key_filename": "/home/alice/.ssh/id_ed25519"}},
       "resources_dict": {"number_node": 1, "cpu_per_node": 8, "queue_name": "cpu", "group_size": 1}}


def _render_with(example, tmp_path, step_configs, capsys=None, **dflow_config) -> tuple:
    """Render the example with these settings; with `capsys`, in this process (for refusals only)."""
    j = json.loads((example / "config.json").read_text())
    j["dflow_config"] = {"host": "https://argo.example.org:2746", "namespace": "simplify", **dflow_config}
    j["dflow_s3_config"] = {"endpoint": "minio.example.org:9000", "bucket_name": "simplify"}
    j["step_configs"] = step_configs
    for name in ("data", "models"):
        (tmp_path / name).symlink_to(example / name)
    (tmp_path / "config.json").write_text(json.dumps(j))
    args = [tmp_path / "config.json", "--render", tmp_path / "m.json"]
    proc = run_main(args, capsys) if capsys else run_cli(args)
    return proc, (json.loads((tmp_path / "m.json").read_text()) if proc.returncode == 0 else None)


def test_hpc_executor_runs_training_through_dpdispatcher(example, tmp_path):
    proc, manifest = _render_with(example, tmp_path, {"run_train": {"executor": HPC}})
    assert proc.returncode == 0, proc.stderr[-2000:]
    train = [t for t in manifest["spec"]["templates"] if t["name"].startswith("runtrain")
             and not t["name"].endswith("init-artifact")]
    assert train and all(t["script"]["image"] == HPC["image"] for t in train)
    assert all("dpdispatcher" in t["script"]["source"] and "hpc.example.org" in t["script"]["source"] for t in train)
    assert not list(jsonschema.Draft202012Validator(strict_schema()).iter_errors(manifest))
    helpers = {t["script"]["image"] for t in manifest["spec"]["templates"] if t["name"].endswith("init-artifact")}
    assert helpers == {"dflow-simplify/light:0.1.0"}  # no python:3.8 pulled from a public registry


def test_retries_are_for_transient_errors_only(example, tmp_path):
    """With retry_on_transient_error, Argo retries a pod only on exit code 1 (dflow's TransientError and any
    unexpected exception); deterministic stops (a ratio_failed stop, a bad parameter) raise FatalError,
    which exits 2 (tests/test_loop_wiring.py shows PrepTrain's ratio_failed stop raising it)."""
    proc, manifest = _render_with(example, tmp_path, {"prep_train": {"template_config": {"retry_on_transient_error": 3}}})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (prep,) = [t for t in manifest["spec"]["templates"] if t["name"].startswith("preptrain")]
    assert prep["retryStrategy"]["limit"] == 3 and prep["retryStrategy"]["expression"] == "asInt(lastRetry.exitCode) == 1"
    assert "except FatalError" in prep["script"]["source"] and "sys.exit(2)" in prep["script"]["source"]


@pytest.mark.parametrize("bad, message", [
    ({"type": "slurm"}, 'run_fp.executor.type: expected "dispatcher"'),
    ({"type": "dispatcher", "hots": "x"}, "run_fp.executor: unknown key(s) ['hots']"),
    ({"type": "dispatcher", "private_key_file": "id_rsa"}, "would upload the SSH key into the bucket"),
    ({"type": "dispatcher", "machine_dict": {"remote_profile": {"password": "x"}}},
     "run_fp.executor.machine_dict.remote_profile.password: would be written into the workflow manifest"),
])
def test_bad_executor_is_refused_before_anything_is_built(example, tmp_path, bad, message, capsys):
    proc, _ = _render_with(example, tmp_path, {"run_fp": {"executor": bad}}, capsys)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1500:]


def _artifacts(manifest, name) -> tuple[list, list]:
    """The declarations of the artifact `name` (template inputs) and the arguments giving it (steps)."""
    declared, given = [], []
    for t in manifest["spec"]["templates"]:
        declared += [a for a in t.get("inputs", {}).get("artifacts", []) if a["name"] == name]
        for s in (s for g in t.get("steps", []) for s in g):
            given += [a for a in s.get("arguments", {}).get("artifacts", []) if a["name"] == name]
    return declared, given


def test_pick_data_on_a_volume_is_read_in_place_never_an_artifact(example, tmp_path):
    """dflow_config.pick_data_volume: ModelDevi and SelectConfs mount the claim read-only and read pick_data at
    its paths; no step downloads it (on Argo, a per-iteration download of the whole data set otherwise)."""
    volume = {"claim_name": "shared-datasets", "mount_path": str(tmp_path)}
    proc, manifest = _render_with(example, tmp_path, {}, pick_data_volume=volume)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(jsonschema.Draft202012Validator(strict_schema()).iter_errors(manifest))
    # declared optional by the two OPs, never given by any step: nothing to download
    declared, given = _artifacts(manifest, "pick_data")
    assert len(declared) == 2 and all(a["optional"] and "s3" not in a for a in declared) and given == []
    assert any("s3" in a for a in _artifacts(manifest, "state")[1])  # the other inputs still are artifacts
    readers = [t for t in manifest["spec"]["templates"] if t["name"].startswith(("modeldevi", "selectconfs"))
               and not t["name"].endswith("init-artifact")]
    assert {t["name"].split("-")[0] for t in readers} == {"modeldevi", "selectconfs"}
    for t in readers:
        assert t["volumes"] == [{"name": "pick-data", "persistentVolumeClaim": {"claimName": "shared-datasets",
                                                                               "readOnly": True}}]
        assert t["script"]["volumeMounts"] == [{"name": "pick-data", "mountPath": str(tmp_path), "readOnly": True}]
    others = [t for t in manifest["spec"]["templates"] if "script" in t and t not in readers]
    assert others and not any(t.get("volumes") or t["script"].get("volumeMounts") for t in others)
    assert str(tmp_path / "data" / "pick") in json.dumps(manifest)  # in pick_data_paths, a parameter


@pytest.mark.parametrize("volume, message", [
    ({"claim_name": "Datasets", "mount_path": "/data"}, "pick_data_volume.claim_name: expected a PersistentVolumeClaim"),
    ({"claim_name": "datasets", "mount_path": "data"}, "pick_data_volume.mount_path: expected an absolute path"),
    ({"claim_name": "datasets", "mount_path": "/data", "size": 1}, "dflow_config.pick_data_volume: expected"),
    ({"claim_name": "datasets", "mount_path": "/elsewhere"}, "is not under dflow_config.pick_data_volume.mount_path"),
])
def test_bad_pick_data_volume_is_refused(example, tmp_path, volume, message, capsys):
    proc, _ = _render_with(example, tmp_path, {}, capsys, pick_data_volume=volume)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-1500:]


def _script_templates(manifest, prefix: str) -> list[dict]:
    return [t for t in manifest["spec"]["templates"] if t["name"].startswith(prefix)
            and not t["name"].endswith("init-artifact")]


def test_gpu_stages_get_the_cuda_image_and_their_gpus(manifest):
    """RunTrain and ModelDevi ask for a GPU (step_configs limits): the CUDA variant of the DeePMD-kit image by
    default, the limit in the pod spec; the other stages stay on CPU images without GPUs."""
    for prefix in ("runtrain", "modeldevi"):
        (t,) = _script_templates(manifest, prefix)
        assert t["script"]["image"] == "dflow-simplify/deepmd:0.1.0-cuda"
        assert t["script"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    for prefix in ("preptrain", "selectconfs", "runfp"):
        for t in _script_templates(manifest, prefix):
            assert "cuda" not in t["script"]["image"] and "limits" not in t["script"].get("resources", {})


def test_model_devi_runs_one_slice_per_shard(manifest):
    """200 frames in shards of 64: the loop gets the four shard indices (a fixed-size parameter) and ModelDevi
    runs as a sequence of that many slices."""
    (devi,) = _script_templates(manifest, "modeldevi")
    (call,) = [s for t in manifest["spec"]["templates"] for g in t.get("steps", []) for s in g
               if s["template"] == devi["name"]]
    assert call["withSequence"]["count"] == "{{=len(sprig.fromJson(inputs.parameters['model_devi_shards']))}}"
    text = json.dumps(manifest)
    assert '"name": "model_devi_shards", "value": "[0, 1, 2, 3]"' in text.replace("\n", "")


def test_gpus_shards_and_a_pick_data_volume_render_valid(example, tmp_path):
    volume = {"claim_name": "shared-datasets", "mount_path": str(tmp_path)}
    gpu = {"template_config": {"limits": {"nvidia.com/gpu": 2}, "requests": {"nvidia.com/gpu": 2}}}
    proc, manifest = _render_with(example, tmp_path, {"run_train": gpu, "model_devi": {**gpu, "shard_size": 50}},
                                  pick_data_volume=volume)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(jsonschema.Draft202012Validator(strict_schema()).iter_errors(manifest))
    (devi,) = _script_templates(manifest, "modeldevi")
    assert devi["script"]["image"].endswith("-cuda") and devi["script"]["volumeMounts"][0]["readOnly"]


def test_a_gpu_count_that_is_no_number_is_refused(example, tmp_path, capsys):
    bad = {"model_devi": {"template_config": {"limits": {"nvidia.com/gpu": "one"}}}}
    proc, _ = _render_with(example, tmp_path, bad, capsys)
    assert proc.returncode == 2 and "step_configs.model_devi.template_config: nvidia.com/gpu" in proc.stderr
