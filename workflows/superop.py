"""The simplify loop as dflow super-OPs: only wiring, no logic.

`SimplifyIteration` (a Steps template) runs prep-train -> run-train (sliced over models) -> model-devi
(sliced over shards of pick_data) -> select-confs -> run-fp (sliced over frame groups) and then calls
itself for the next iteration while select-confs says so. Step keys are `iter-000003--run-train-0001` and
alike, so that a restarted or resubmitted workflow reuses every finished step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Type

from dflow import InputArtifact, InputParameter, OutputArtifact, Step, Steps, argo_len, argo_sequence, if_expression
from dflow.python import OP, PythonOPTemplate, Slices

from dflow_simplify.ops.model_devi import ModelDevi
from dflow_simplify.ops.prep_train import PrepTrain
from dflow_simplify.ops.run_fp import RunFP
from dflow_simplify.ops.run_train import RunTrain
from dflow_simplify.ops.select_confs import SelectConfs

from .step_config import StageSettings


@dataclass(frozen=True)
class StageOps:
    """The OP class of each stage (DPGEN2's `prep_train_op: Type[OP]` and alike): the real ones by default,
    others (tests/fake_ops.py) where a test drives the loop without training."""

    prep_train: Type[OP] = PrepTrain
    run_train: Type[OP] = RunTrain
    model_devi: Type[OP] = ModelDevi
    select_confs: Type[OP] = SelectConfs
    run_fp: Type[OP] = RunFP


LOOP_PARAMETERS = ("iter_index", "iter_name", "numb_models", "train_template", "train_options", "train_config",
                   "next_train_config", "select_params", "type_map", "fp_style", "fp_params", "skip_bad_box",
                   "model_devi_batch_size", "model_devi_shard_size", "model_devi_shards", "pick_data_paths")


def fp_step(name: str, key_prefix: str, select: Step, fp_files, type_map, fp_style, fp_params,
            skip_bad_box, settings: StageSettings, ops: StageOps = StageOps()) -> Step:
    """RunFP sliced over the groups of frames select-confs picked (and extracted); runs only when the loop
    goes on."""
    return Step(
        name,
        template=PythonOPTemplate(
            ops.run_fp,
            slices=Slices("int('{{item}}')", input_artifact=["frames"],
                          output_artifact=["labeled_data", "failures"],
                          output_parameter=["n_labeled", "n_failed", "n_skipped"]),
            **settings.template("run_fp"),
        ),
        parameters={"type_map": type_map, "fp_style": fp_style, "fp_params": fp_params,
                    "skip_bad_box": skip_bad_box},
        artifacts={"frames": select.outputs.artifacts["fp_inputs"], **({"fp_files": fp_files} if fp_files is not None else {})},
        with_sequence=argo_sequence(select.outputs.parameters["n_fp_groups"], format="%06d"),
        key=f"{key_prefix}--run-fp-{{{{item}}}}",
        when=f"{select.outputs.parameters['go_on']} == true",
        **settings.step("run_fp"),
    )


def select_step(name: str, key_prefix: str, state, model_devi, pick_data, pick_data_paths, select_params, iter_index,
                settings: StageSettings, devi_summary=None, ops: StageOps = StageOps()) -> Step:
    """SelectConfs; pick_data as an artifact, or (None) read in place at `pick_data_paths` (a mounted volume)."""
    artifacts = {"state": state}
    if pick_data is not None:
        artifacts["pick_data"] = pick_data
    if model_devi is not None:
        artifacts["model_devi"] = model_devi
    if devi_summary is not None:
        artifacts["devi_summary"] = devi_summary
    return Step(
        name,
        template=PythonOPTemplate(ops.select_confs, **settings.template("select_confs")),
        parameters={"select_params": select_params, "iter_index": iter_index, "pick_data_paths": pick_data_paths},
        artifacts=artifacts,
        key=f"{key_prefix}--select-confs",
    )


class SimplifyIteration(Steps):
    """One training iteration of simplify, recursing into the next one while frames are selected."""

    def __init__(self, name: str, settings: StageSettings, ops: StageOps = StageOps()):
        super().__init__(name)
        for p in LOOP_PARAMETERS:
            self.inputs.parameters[p] = InputParameter()
        # pick_data: not an artifact at all when the OPs read it in place (pick_data_paths: a volume, or local)
        for a in ("state", "init_models") + (() if settings.pick_in_place else ("pick_data",)):
            self.inputs.artifacts[a] = InputArtifact()
        for a in ("iter_data", "probe_data", "new_data", "fp_failures", "init_data", "fp_files"):
            self.inputs.artifacts[a] = InputArtifact(optional=True)
        for a in ("models", "checkpoints", "dataset", "probe_data"):
            self.outputs.artifacts[a] = OutputArtifact()
        self._build(settings, ops)

    def _build(self, settings: StageSettings, ops: StageOps) -> None:
        par, art = self.inputs.parameters, self.inputs.artifacts
        pick_data = art["pick_data"] if "pick_data" in art else None
        key = str(par["iter_name"])
        prep = Step(
            "prep-train",
            template=PythonOPTemplate(ops.prep_train, **settings.template("prep_train")),
            parameters={"template": par["train_template"], "numb_models": par["numb_models"],
                        "iter_index": par["iter_index"], "options": par["train_options"]},
            artifacts={"state": art["state"], "iter_data": art["iter_data"], "new_data": art["new_data"],
                       "fp_failures": art["fp_failures"], "probe_data": art["probe_data"]},
            key=f"{key}--prep-train",
        )
        self.add(prep)
        train = Step(
            "run-train",
            template=PythonOPTemplate(
                ops.run_train,
                slices=Slices("int('{{item}}')", input_parameter=["task_name"],
                              input_artifact=["task_path", "init_model"],
                              output_artifact=["model", "checkpoint", "lcurve", "log"]),
                **settings.template("run_train"),
            ),
            parameters={"task_name": prep.outputs.parameters["task_names"], "config": par["train_config"]},
            artifacts={"task_path": prep.outputs.artifacts["task_paths"], "init_model": art["init_models"],
                       "iter_data": prep.outputs.artifacts["iter_data"], "init_data": art["init_data"]},
            with_sequence=argo_sequence(argo_len(prep.outputs.parameters["task_names"]), format="%04d"),
            key=f"{key}--run-train-{{{{item}}}}",
            **settings.step("run_train"),
        )
        self.add(train)
        devi = Step(
            "model-devi",
            template=PythonOPTemplate(
                ops.model_devi,
                slices=Slices("int('{{item}}')", input_parameter=["shard_index"],
                              output_artifact=["model_devi", "summary"]),
                **settings.template("model_devi"),
            ),
            parameters={"type_map": par["type_map"], "batch_size": par["model_devi_batch_size"],
                        "pick_data_paths": par["pick_data_paths"], "select_params": par["select_params"],
                        "shard_index": par["model_devi_shards"], "shard_size": par["model_devi_shard_size"]},
            artifacts={"models": train.outputs.artifacts["model"], "state": prep.outputs.artifacts["state"],
                       "probe_data": prep.outputs.artifacts["probe_data"],
                       **({"pick_data": pick_data} if pick_data is not None else {})},
            with_sequence=argo_sequence(argo_len(par["model_devi_shards"]), format="%06d"),
            key=f"{key}--model-devi-{{{{item}}}}",
            **settings.step("model_devi"),
        )
        self.add(devi)
        select = select_step("select-confs", key, prep.outputs.artifacts["state"], devi.outputs.artifacts["model_devi"],
                             pick_data, par["pick_data_paths"], par["select_params"], par["iter_index"], settings,
                             devi_summary=devi.outputs.artifacts["summary"], ops=ops)
        self.add(select)
        fp = fp_step("run-fp", key, select, art["fp_files"], par["type_map"], par["fp_style"],
                     par["fp_params"], par["skip_bad_box"], settings, ops)
        self.add(fp)
        next_parameters = {p: par[p] for p in LOOP_PARAMETERS}
        next_parameters.update(iter_index=select.outputs.parameters["next_iter_index"],
                               iter_name=select.outputs.parameters["next_iter_name"],
                               train_config=par["next_train_config"])
        nxt = Step(
            "next-iteration",
            template=self,
            parameters=next_parameters,
            artifacts={**({"pick_data": pick_data} if pick_data is not None else {}), "state": select.outputs.artifacts["state"],
                       "init_models": train.outputs.artifacts["checkpoint"], "iter_data": prep.outputs.artifacts["iter_data"],
                       "probe_data": prep.outputs.artifacts["probe_data"],
                       "new_data": fp.outputs.artifacts["labeled_data"], "fp_failures": fp.outputs.artifacts["failures"],
                       "init_data": art["init_data"], "fp_files": art["fp_files"]},
            when=f"{select.outputs.parameters['go_on']} == true",
            key=f"{key}--next-iteration",
        )
        self.add(nxt)
        go_on = select.outputs.parameters["go_on"] == True  # noqa: E712  (an Argo expression, not Python)
        self.outputs.artifacts["models"].from_expression = if_expression(
            _if=go_on, _then=nxt.outputs.artifacts["models"], _else=train.outputs.artifacts["model"])
        self.outputs.artifacts["checkpoints"].from_expression = if_expression(
            _if=go_on, _then=nxt.outputs.artifacts["checkpoints"], _else=train.outputs.artifacts["checkpoint"])
        self.outputs.artifacts["dataset"].from_expression = if_expression(
            _if=go_on, _then=nxt.outputs.artifacts["dataset"], _else=prep.outputs.artifacts["iter_data"])
        # relabeled too, held out of the last training (the probe the last models were measured on)
        self.outputs.artifacts["probe_data"].from_expression = if_expression(
            _if=go_on, _then=nxt.outputs.artifacts["probe_data"], _else=prep.outputs.artifacts["probe_data"])
