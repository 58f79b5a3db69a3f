"""Build the dflow Workflow from a validated config. Call only after the dflow mode is set."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from dflow import Step, Workflow

from dflow_simplify.ops.fp.base import get_engine
from dflow_simplify.ops.loop_state import LoopState
from dflow_simplify.ops.prep_train import PrepTrainParams
from dflow_simplify.ops.run_train import TrainConfig
from dflow_simplify.ops.select_confs import iter_name
from dflow_simplify.ops.selection import SelectParams, TrustLevels
from dflow_simplify.ops.shards import DEFAULT_SHARD_SIZE, n_shards

from .argo import image_registry
from .config import SimplifyConfig
from .dispatch import is_remote
from .inputs import InputStager
from .step_config import StageSettings
from .superop import SimplifyIteration, StageOps, fp_step, select_step

LOOP_KEY = iter_name(1) + "--iteration"


class SimplifyWorkflow(Workflow):
    """dflow's Workflow, with the pods' service account settable (dflow always writes `argo`)."""

    service_account: str | None = None

    def convert_to_argo(self, reuse_step=None):
        manifest = super().convert_to_argo(reuse_step=reuse_step)
        if self.service_account:
            manifest.spec.service_account_name = self.service_account
        return manifest


def train_config(cfg: SimplifyConfig, init_mode: str) -> TrainConfig:
    j = cfg.jdata
    return TrainConfig(backend=j["train_backend"], init_mode=init_mode, sys_batch_size=j["sys_batch_size"],
                       init_batch_size=j["init_batch_size"], skip_neighbor_stat=j["dp_train_skip_neighbor_stat"],
                       envs=j["step_configs"].get("run_train", {}).get("envs", {}), model_branch=j["model_branch"],
                       train_style=cfg.train_style, exact_refit=j["exact_refit"] and cfg.train_style == "sgd",
                       bootstrap=cfg.exact_bootstrap, seed=j["pick_seed"], type_map=j["type_map"],
                       renamed_types=bool(j["element_substitution"]))


def prep_train_params(cfg: SimplifyConfig) -> PrepTrainParams:
    j = cfg.jdata
    return PrepTrainParams(
        type_map=j["type_map"], seed=j["pick_seed"], activation_func=j["model_devi_activation_func"],
        reuse_iter=j["training_reuse_iter"], ratio_failed=j["ratio_failed"],
        reuse={"numb_steps": j["training_reuse_numb_steps"], "start_lr": j["training_reuse_start_lr"],
               "start_pref_e": j["training_reuse_start_pref_e"], "start_pref_f": j["training_reuse_start_pref_f"]})


def select_parameters(cfg: SimplifyConfig) -> SelectParams:
    j = cfg.jdata
    trust = TrustLevels(
        f_lo=j["model_devi_f_trust_lo"], f_hi=j["model_devi_f_trust_hi"],
        e_lo=j["model_devi_e_trust_lo"], e_hi=j["model_devi_e_trust_hi"],
        f_err_lo=j["true_error_f_trust_lo"], f_err_hi=j["true_error_f_trust_hi"],
        e_err_lo=j["true_error_e_trust_lo"], e_err_hi=j["true_error_e_trust_hi"])
    return SelectParams(
        trust=trust, init_pick_number=j["init_pick_number"], iter_pick_number=j["iter_pick_number"],
        fp_task_max=j.get("fp_task_max"), fp_task_min=j.get("fp_task_min"),
        fp_accurate_threshold=j.get("fp_accurate_threshold"),
        fp_accurate_soft_threshold=j.get("fp_accurate_soft_threshold"),
        select_style=j["select_style"], select_devi_weight=j["select_devi_weight"],
        relative_f_epsilon=j["relative_f_epsilon"],
        probe_number=j["probe_number"], conv_e_rmse=j["conv_e_rmse"], conv_f_rmse=j["conv_f_rmse"],
        seed=j["pick_seed"], stop_iter=j.get("stop_iter"),
        group_size=int(j["step_configs"].get("run_fp", {}).get("group_size") or 10),
        type_map=j["type_map"], keep_labels=get_engine(cfg.fp_style).needs_input_labels)


def loop_parameters(cfg: SimplifyConfig) -> dict:
    """The loop's input parameters: each OP's parameter object as a dict, and the values several steps share."""
    j = cfg.jdata
    # an exact fit always continues its state (the prior stays the original models' output layer)
    next_mode = "init_model" if j["training_init_model"] or cfg.train_style == "exact" else "scratch"
    devi_conf = j["step_configs"].get("model_devi", {})
    shard_size = int(devi_conf.get("shard_size") or DEFAULT_SHARD_SIZE)
    return {
        "iter_index": 1,
        "iter_name": iter_name(1),
        "numb_models": j["numb_models"],
        "train_template": j["default_training_param"],
        "train_options": prep_train_params(cfg).as_dict(),
        "train_config": train_config(cfg, cfg.init_mode).as_dict(),
        "next_train_config": train_config(cfg, next_mode).as_dict(),
        "select_params": select_parameters(cfg).as_dict(),
        "type_map": j["type_map"],
        "fp_style": cfg.fp_style,
        "fp_params": j["fp_params"],
        "skip_bad_box": j.get("fp_skip_bad_box") or "",
        "model_devi_batch_size": int(devi_conf.get("batch_size") or 0),  # 0: by the device (ModelDevi)
        # ModelDevi runs as one slice per shard of pick_data (ops/shards.py), the same shards every iteration
        "model_devi_shard_size": shard_size,
        "model_devi_shards": list(range(n_shards(cfg.systems, shard_size))),
        "pick_data_paths": cfg.pick_roots if cfg.pick_volume else [],
    }


def _placeholder_models(n: int, where: Path) -> list[str]:
    """Training from scratch still slices over one 'starting model' per task: empty folders."""
    dirs = []
    for i in range(n):
        d = where / ("%03d" % i)
        d.mkdir(parents=True, exist_ok=True)
        dirs.append(str(d))
    return dirs


def _stage_fp_files(files: dict[str, str], where: Path) -> str:
    """The FP input files the config named (POTCARs, templates), in one folder under their staged names."""
    where.mkdir(parents=True, exist_ok=True)
    for name, src in files.items():
        shutil.copyfile(src, where / name)
    return str(where)


def build_workflow(cfg: SimplifyConfig, name: str, staging_dir: str | os.PathLike, workflow_id: str | None = None,
                   stage=None, token: str | None = None, ops: StageOps = StageOps(), local: bool = False) -> Workflow:
    """The whole simplify workflow: iteration 0 (random pick, relabel), then the recursive loop.
    `stage(paths) -> artifact` makes the inputs artifacts (inputs.InputStager; local links by default);
    `token` is Argo's, given here because it is withheld from dflow's config while OPs are rendered;
    `ops` the OP class of each stage (the real ones unless a test says otherwise); `local`: dflow's debug
    mode (set by the caller before this is called) rather than Argo."""
    to_artifact = stage or InputStager(local=local)
    staging = Path(staging_dir)
    staging.mkdir(parents=True, exist_ok=True)
    LoopState.initial(cfg.systems).dump(staging / "state0.json")
    params = loop_parameters(cfg)
    # pick_data read in place: from a mounted volume, or locally from the user's folders (never linked or
    # copied into the steps, where an edit would reach the user's files)
    # (ModelDevi as a batch job on another machine needs pick_data sent along: an artifact)
    devi_elsewhere = is_remote(cfg.jdata["step_configs"].get("model_devi", {}).get("executor"))
    in_place = bool(cfg.pick_volume) or (local and getattr(to_artifact, "local", False) and not cfg.pick_uri
                                         and not devi_elsewhere)
    if in_place:
        params["pick_data_paths"] = list(cfg.pick_roots)
    tconf = StageSettings(cfg.jdata["step_configs"], cfg.fp_style, image_registry(cfg.jdata["dflow_config"]),
                          pick_volume=cfg.pick_volume, local=local, pick_in_place=in_place,
                          jobs_root=staging.parent.resolve() / "jobs" if local else None)

    # pick_data: one artifact (uploaded once, or an s3:// prefix), or read in place
    pick_data = None if in_place else to_artifact([cfg.pick_uri] if cfg.pick_uri else cfg.pick_roots)
    state0 = to_artifact(str(staging / "state0.json"))
    models0 = cfg.iter0_models or _placeholder_models(cfg.jdata["numb_models"], staging / "no-model")
    init_models = to_artifact(models0, items=cfg.iter0_items)

    fp_files = to_artifact(_stage_fp_files(cfg.fp_files, staging / "fp_files")) if cfg.fp_files else None

    key0 = iter_name(0)
    select0 = select_step("iter0-select-confs", key0, state0, None, pick_data, params["pick_data_paths"],
                          params["select_params"], 0, tconf, ops=ops)
    fp0 = fp_step("iter0-run-fp", key0, select0, fp_files, params["type_map"], params["fp_style"],
                  params["fp_params"], params["skip_bad_box"], tconf, ops)
    artifacts = {"state": select0.outputs.artifacts["state"], "init_models": init_models,
                 "new_data": fp0.outputs.artifacts["labeled_data"], "fp_failures": fp0.outputs.artifacts["failures"]}
    if pick_data is not None:
        artifacts["pick_data"] = pick_data
    if cfg.init_data:
        artifacts["init_data"] = to_artifact(cfg.init_data, items=cfg.init_items)
    if fp_files is not None:
        artifacts["fp_files"] = fp_files
    loop = Step(
        "simplify-loop",
        template=SimplifyIteration("simplify-iteration", tconf, ops),
        parameters=params,
        artifacts=artifacts,
        key=LOOP_KEY,
        when=f"{select0.outputs.parameters['go_on']} == true",
    )
    wf = SimplifyWorkflow(name=name, id=workflow_id, token=token)
    wf.service_account = cfg.jdata["dflow_config"].get("service_account")
    for step in (select0, fp0, loop):
        wf.add(step)
    return wf
