"""A real S3 endpoint (moto's server on 127.0.0.1, behind a byte-counting proxy): pick_data is already in
the bucket (`s3://` in the config), the models are uploaded by content hash, the workflow runs in local
mode reading them from S3 (dflow's `debug_s3`), and the outputs are downloaded with `download`. Then, from the
finished run's step folders, the bytes every step would fetch and store on Argo (each artifact is one S3
transfer there), per iteration."""

import json
import os
from pathlib import Path

import boto3
import dpdata
import numpy as np
import pytest

from .conftest import run_cli, run_main
from .servers import MotoS3

BUCKET = "simplify-local"
ACCESS, SECRET = "AKIA-LOCAL-S3-TEST", "local-s3-secret-77a1"


def tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, dirnames, files in os.walk(path, followlinks=True):
        dirnames[:] = [d for d in dirnames if d != ".dflow"]
        total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in files)
    return total


@pytest.fixture(scope="module")
def s3_run(example, tmp_path_factory):
    s3 = MotoS3(BUCKET)
    tmp = tmp_path_factory.mktemp("s3-run")
    put_tree(s3, example / "data" / "pick", "datasets/ag-au/")  # as a user would, before the run
    models = [example / "models" / m for m in ("000", "001")]  # two of the four, numb_models 2
    for m in models:
        put_tree(s3, m, f"models/ag-au/{m.name}/")
    j = json.loads((example / "config.json").read_text())
    j.update(pick_data=f"s3://{BUCKET}/datasets/ag-au", training_iter0_model_path=f"s3://{BUCKET}/models/ag-au",
             numb_models=2, stop_iter=3)
    j["default_training_param"]["training"]["numb_steps"] = 100
    j["dflow_s3_config"] = {"endpoint": s3.endpoint, "bucket_name": BUCKET, "access_key": ACCESS,
                            "secret_key": SECRET, "secure": False}
    (tmp / "config.json").write_text(json.dumps(j))
    env = {**os.environ, "DFLOW_DEBUG_S3": "true"}
    proc = run_cli([tmp / "config.json", "-o", tmp / "out"], env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    yield {"s3": s3, "tmp": tmp, "proc": proc, "run_log": list(s3.log),
           "inputs_bytes": tree_bytes(example / "data" / "pick") + sum(map(tree_bytes, models))}
    s3.close()


def boto(s3: MotoS3):
    """A client straight to moto (not through the counting proxy)."""
    return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{s3.port}", region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="x")


def put_tree(s3: MotoS3, folder: Path, prefix: str) -> None:
    client = boto(s3)
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            client.upload_file(str(f), BUCKET, prefix + str(f.relative_to(folder)))


@pytest.mark.slow  # the example run, real training
def test_inputs_go_up_once_and_are_read_once(s3_run, example):
    s3, log = s3_run["s3"], s3_run["run_log"]
    up = sum(e[2] for e in log if e[0] == "PUT")
    down = sum(e[3] for e in log if e[0] == "GET")
    # pick_data and the models were in the bucket: nothing of them goes up but dflow's catalogs
    assert sorted(e[1] for e in log if e[0] == "PUT" and ("/datasets/" in e[1] or "/models/" in e[1])) == [
        f"/{BUCKET}/datasets/ag-au/.dflow/simplify-catalog", f"/{BUCKET}/models/ag-au/.dflow/simplify-catalog"]
    assert up < 256 * 1024  # the initial state, completion markers, catalogs
    # pick_data feeds 4 select-confs and 3 model-devi steps, the models 3 trainings: still fetched once
    assert s3_run["inputs_bytes"] <= down < 1.3 * s3_run["inputs_bytes"]
    keys = [o["Key"] for o in boto(s3).list_objects_v2(Bucket=BUCKET)["Contents"]]
    assert sum(k.startswith("simplify-inputs/complete/") for k in keys) >= 1  # the initial state
    # (that unchanged inputs are not uploaded again: tests/test_argo_submit.py)


def _steps(out: Path) -> dict[str, Path]:
    wf_id = json.loads((out / "workflow.json").read_text())["workflow_id"]
    return {p.name: p for p in (out / "work" / wf_id).iterdir() if (p / "inputs").is_dir()}


@pytest.mark.slow  # the example run, real training
def test_an_iteration_moves_the_picks_and_models_not_pick_data(s3_run, example):
    """On Argo each input artifact is fetched and each output stored: sum them per step of iteration 2."""
    out = s3_run["tmp"] / "out"
    steps = _steps(out)
    pick_bytes = tree_bytes(example / "data" / "pick")
    it2 = {k: v for k, v in steps.items() if k.startswith("iter-000002--") and k != "iter-000002--next-iteration"}
    assert any("run-fp" in k for k in it2) and "iter-000002--model-devi-000000" in it2
    readers = sorted(k for k, d in it2.items() if (d / "inputs" / "artifacts" / "pick_data").exists())
    assert readers == ["iter-000002--model-devi-000000", "iter-000002--select-confs"]  # the only pick_data reads
    report_dir = steps["iter-000002--select-confs"] / "outputs" / "artifacts" / "report"
    report = json.loads(next(report_dir.rglob("*.json")).read_text())
    n_selected = report["n_selected"]
    frame_bytes = pick_bytes / 200  # the example's 200 frames, all 32 atoms
    fp_in = sum(tree_bytes(d / "inputs" / "artifacts" / "frames") for k, d in it2.items() if "run-fp" in k)
    assert fp_in <= 1.5 * n_selected * frame_bytes + 4096 * len(it2)  # the group's frames only
    by_kind = {kind: 0 for kind in set(KINDS.values())}
    for k, d in it2.items():
        for art in [*(d / "inputs" / "artifacts").iterdir(), *(d / "outputs" / "artifacts").iterdir()]:
            if art.name != ".dflow":
                by_kind[KINDS[art.name]] += tree_bytes(art)
    relabeled = tree_bytes(steps["iter-000002--prep-train"] / "outputs" / "artifacts" / "iter_data")
    print(f"iteration 2 (bytes in step artifacts, debug mode shows each slice the merged outputs): {by_kind}; "
          f"pick_data {pick_bytes}, relabeled so far {relabeled}, selected {n_selected}")
    assert by_kind["pick_data"] == len(readers) * tree_bytes(steps["iter-000002--model-devi-000000"] / "inputs" / "artifacts"
                                                              / "pick_data")
    # besides those two reads: models, the relabeled frames (a few copies: trainers, FP in/out) and index files
    assert by_kind["frames"] <= 12 * relabeled
    assert by_kind["index"] < 256 * 1024


KINDS = {"pick_data": "pick_data", **dict.fromkeys(("model", "models", "init_model", "init_models", "checkpoint",
                                                   "checkpoints"), "models"),
         **dict.fromkeys(("frames", "labeled_data", "iter_data", "new_data", "dataset", "init_data", "fp_inputs",
                          "probe_data"), "frames"),
         **dict.fromkeys(("state", "model_devi", "picked", "report", "failures", "fp_failures", "task_paths",
                          "task_path", "lcurve", "log", "fp_files", "summary", "devi_summary"), "index")}


@pytest.mark.slow  # the example run, real training
def test_download_gives_the_local_layout(s3_run, tmp_path):
    out = s3_run["tmp"] / "out"
    proc = run_cli(["download", out, "-o", tmp_path / "dl"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((tmp_path / "dl" / "report.json").read_text())
    ref = json.loads((out / "report.json").read_text())
    assert got["n_in_dataset"] == ref["n_in_dataset"] > 0 and got["iterations"] == ref["iterations"]
    assert sorted(p.name for p in (tmp_path / "dl" / "models").iterdir()) == \
        sorted(p.name for p in (out / "models").iterdir())
    a = dpdata.MultiSystems().from_deepmd_npy(str(tmp_path / "dl" / "dataset"))
    b = dpdata.MultiSystems().from_deepmd_npy(str(out / "dataset"))
    assert a.get_nframes() == b.get_nframes()
    for name in b.systems:
        np.testing.assert_array_equal(a[name]["energies"], b[name]["energies"])
    status = run_cli(["status", out])
    assert status.returncode == 0 and "Succeeded" in status.stdout and "iter" in status.stdout


@pytest.fixture(scope="module")
def s3_mapbi3():
    s3 = MotoS3(BUCKET)
    put_tree(s3, Path(__file__).parent / "data" / "mapbi3" / "data", "datasets/mapbi3/")
    yield s3
    s3.close()


def _s3_config(tmp_path, s3, pick_data, **changes):
    from .test_config import _mapbi3

    s3_conf = {"endpoint": s3.endpoint, "bucket_name": BUCKET, "access_key": ACCESS, "secret_key": SECRET,
               "secure": False}
    return _mapbi3(tmp_path, fp_style="dftd3", pick_data=pick_data, dflow_s3_config=s3_conf, **changes)


def test_s3_pick_data_is_checked_from_its_index_files(s3_mapbi3, tmp_path):
    """`--check` on pick_data in the bucket: the same systems and frame counts as the local copy, read from
    the index files only (types and boxes, not coordinates or labels)."""
    s3 = s3_mapbi3
    s3.log.clear()
    env = {**os.environ, "DFLOW_DEBUG_S3": "true"}
    proc = run_cli([_s3_config(tmp_path, s3, f"s3://{BUCKET}/datasets/mapbi3/"), "--check"], env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "2 system(s), 24 frames in pick_data" in proc.stdout
    fetched = [e[1].split("?")[0] for e in s3.log if e[0] == "GET" and "/datasets/" in e[1]]
    assert fetched and all(p.endswith(("type.raw", "type_map.raw", "box.npy")) for p in fetched), fetched
    assert not any(e[0] == "PUT" for e in s3.log)  # a check writes nothing


def test_s3_models_and_init_data_are_checked_by_listing(s3_mapbi3, tmp_path):
    s3 = s3_mapbi3
    client = boto(s3)
    for n in (3, 4):
        for i in range(n):
            for name in ("model.ckpt.index", "model.ckpt.data-00000-of-00001", "checkpoint"):
                client.put_object(Bucket=BUCKET, Key=f"models/m{n}/{i:03d}/{name}", Body=b"x")
    client.put_object(Bucket=BUCKET, Key="models/m4/notes.txt", Body=b"x")  # not a model folder
    put_tree(s3, Path(__file__).parent / "data" / "mapbi3" / "data" / "sys.000", "init/mapbi3/sys.000/")
    env = {**os.environ, "DFLOW_DEBUG_S3": "true"}
    good = dict(training_init_model=True, training_iter0_model_path=f"s3://{BUCKET}/models/m4",
                init_data_prefix=f"s3://{BUCKET}/init/mapbi3", init_data_sys=["sys.000"])
    proc = run_cli([_s3_config(tmp_path / "good", s3, f"s3://{BUCKET}/datasets/mapbi3", **good), "--check"], env=env)
    assert proc.returncode == 0 and "start: init_model" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    for change, expected in [({"training_iter0_model_path": f"s3://{BUCKET}/models/m3"}, "expected numb_models = 4"),
                             ({"init_data_sys": ["sys.009"]}, "init_data_sys: 'sys.009'"),
                             ({"init_data_sys": ["sys.*"]}, "wildcards")]:
        path = _s3_config(tmp_path / str(len(str(change))), s3, f"s3://{BUCKET}/datasets/mapbi3", **{**good, **change})
        proc = run_cli([path, "--check"], env=env)
        assert proc.returncode == 2 and expected in proc.stderr, (change, proc.stderr[-2000:])


@pytest.mark.parametrize("pick_data,env,expected", [
    (f"s3://{BUCKET}/datasets/nothing-here", {"DFLOW_DEBUG_S3": "true"}, "holds no object"),
    ("s3://another-bucket/datasets/mapbi3", {"DFLOW_DEBUG_S3": "true"}, "workflow's bucket"),
    (f"s3://{BUCKET}/datasets/mapbi3", {}, "DFLOW_DEBUG_S3=true"),
    ([f"s3://{BUCKET}/datasets/mapbi3", "../data"], {"DFLOW_DEBUG_S3": "true"}, "must be the only entry"),
    (f"s3://{BUCKET}/datasets/*", {"DFLOW_DEBUG_S3": "true"}, "no wildcards"),
], ids=["empty-prefix", "other-bucket", "local-mode", "mixed", "wildcard"])
def test_bad_s3_pick_data_is_named(s3_mapbi3, tmp_path, pick_data, env, expected, capsys, monkeypatch):
    from dflow import config as dflow_config

    monkeypatch.setitem(dflow_config, "debug_s3", bool(env))  # what DFLOW_DEBUG_S3 sets as dflow starts
    proc = run_main([_s3_config(tmp_path, s3_mapbi3, pick_data), "--check"], capsys)
    assert proc.returncode == 2 and "pick_data" in proc.stderr and expected in proc.stderr, proc.stderr[-2000:]


def test_s3_pick_data_renders_as_the_prefix_itself(s3_mapbi3, tmp_path):
    s3 = s3_mapbi3
    path = _s3_config(tmp_path, s3, f"s3://{BUCKET}/datasets/mapbi3",
                      dflow_config={"host": "https://argo.example.org:2746", "namespace": "simplify"})
    s3.log.clear()
    proc = run_cli([path, "--render", tmp_path / "manifest.json"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = (tmp_path / "manifest.json").read_text()
    assert '"key": "datasets/mapbi3"' in text.replace('"key":"', '"key": "')
    assert not any(e[0] == "PUT" for e in s3.log)  # rendering uploads nothing


def test_checking_s3_pick_data_leaves_no_index_folder_and_no_s3_setting(s3_mapbi3, tmp_path, monkeypatch):
    """load_config lists and reads the index in the bucket, then restores dflow's S3 settings and removes
    the index files' temporary folder."""
    import glob
    import tempfile

    from dflow import config as dflow_config
    from dflow import s3_config

    from dflow_simplify.workflows.config import load_config

    monkeypatch.setitem(dflow_config, "debug_s3", True)
    before, leftovers = dict(s3_config), set(glob.glob(os.path.join(tempfile.gettempdir(), "simplify-pick-index-*")))
    cfg = load_config(_s3_config(tmp_path, s3_mapbi3, f"s3://{BUCKET}/datasets/mapbi3/"))
    assert cfg.n_frames == 24 and cfg.pick_uri and cfg.pick_roots == []
    assert dict(s3_config) == before
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "simplify-pick-index-*"))) == leftovers


def test_s3_hdf5_pick_data_is_checked_by_ranged_reads(s3_mapbi3, tmp_path):
    """One large deepmd/hdf5 file in the bucket: `--check` finds its systems and frame counts (the same as the
    local file's) from the few blocks h5py asks for, not the whole object."""
    from dflow_simplify.workflows.config import load_config

    from .test_hdf5_pick_data import mapbi3_h5

    s3 = s3_mapbi3
    small = mapbi3_h5(tmp_path / "small.h5")
    big = dpdata.LabeledSystem(str(small) + "#" + next(iter(__import__("h5py").File(small))), fmt="deepmd/hdf5")
    for _ in range(6):  # 24 * 2^6 = 1536 frames
        big = big + big
    dpdata.MultiSystems(big).to("deepmd/hdf5", str(tmp_path / "big.h5"))
    boto(s3).upload_file(str(tmp_path / "big.h5"), BUCKET, "datasets/one-h5/pick.h5")
    size = (tmp_path / "big.h5").stat().st_size
    s3.log.clear()
    env = {**os.environ, "DFLOW_DEBUG_S3": "true"}
    proc = run_cli([_s3_config(tmp_path / "s3", s3, f"s3://{BUCKET}/datasets/one-h5"), "--check"], env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "1 system(s), 1536 frames in pick_data" in proc.stdout
    fetched = sum(e[3] for e in s3.log if e[0] == "GET" and "/datasets/one-h5/pick.h5" in e[1])
    print(f"check read {fetched} of {size} bytes")
    assert 0 < fetched < size / 10
    local = _s3_config(tmp_path / "local", s3, str(tmp_path / "big.h5"))
    assert sum(load_config(local).systems.values()) == 1536
