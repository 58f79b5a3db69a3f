"""The config's keys: a pure dargs schema (DP-GEN simplify's keys and DPGEN2-style workflow settings), a doc
on every key, and the DP-GEN keys that are accepted but not used (config.py warns about them).

`python -m dflow_simplify.workflows.schema > docs/config.rst` regenerates the reference page (dargs' own
doc generator); tests/test_schema.py checks that the page is current.
"""

from __future__ import annotations

import sys

from dargs import Argument

from dflow_simplify.ops.selection import NO_LIMIT

NUM = [float, int]
BIG = NO_LIMIT  # DP-GEN's "no limit" for trust levels
TRUE_ERROR_KEYS = ("true_error_f_trust_lo", "true_error_f_trust_hi", "true_error_e_trust_lo", "true_error_e_trust_hi")

# DP-GEN keys a simplify.json may carry that change nothing here; each is accepted, with a one-line warning
IGNORED_KEYS = {
    "mass_map": "deepmd-kit models need no masses",
    "use_ele_temp": "electronic temperature is not supported",
    "sys_format": "simplify reads pick_data, not sys_configs",
    "sys_configs_prefix": "simplify reads pick_data, not sys_configs",
    "sys_configs": "simplify reads pick_data, not sys_configs",
    "shuffle_poscar": "simplify runs no exploration",
    "model_devi_engine": "the deviation is computed by deepmd-kit on pick_data; no MD engine runs",
    "training_reuse_old_ratio": "every relabeled frame is trained on with the systems' own weights",
    "srtab_file_path": "tabulated pair potentials are not passed to training",
    "one_h5": "the training set is kept as deepmd/npy folders",
    "cvasp": "VASP runs once per task, without custodian",
    "use_clusters": "cluster extraction is not supported; frames are labeled whole",
    "cluster_cutoff": "cluster extraction is not supported; frames are labeled whole",
}


def _ignored(key: str, dtype, **kw) -> Argument:
    return Argument(key, dtype, optional=True, doc=f"DP-GEN key, accepted and ignored: {IGNORED_KEYS[key]}", **kw)


def _basic_args() -> list[Argument]:
    a = Argument
    return [
        a("type_map", list, doc="element names, in the order of the models' type_map"),
        _ignored("mass_map", [list, str], default="auto"),
        _ignored("use_ele_temp", int, default=0),
        a("init_data_prefix", str, optional=True, default="", doc="folder that init_data_sys entries are relative to"),
        a("init_data_sys", list, optional=True, default=[],
          doc="systems (at the new level) trained on in every iteration besides the relabeled frames"),
        a("init_batch_size", [list, str, int], optional=True, default="auto",
          doc="batch size of each init_data_sys system (a list, one value, or deepmd-kit's 'auto[:N]')"),
        _ignored("sys_format", str, default="vasp/poscar"),
        _ignored("sys_configs_prefix", str, default=""),
        _ignored("sys_configs", list, default=[]),
        _ignored("shuffle_poscar", bool, default=False),
        a("sys_batch_size", [list, str, int], optional=True, default="auto",
          doc="batch size of the relabeled systems (first entry used for all, or 'auto[:N]')"),
    ]


def _simplify_args() -> list[Argument]:
    a = Argument
    return [
        a("labeled", bool, optional=True, default=False,
          doc="pick_data already carries the new level's labels: no FP runs (fp_style is ignored)"),
        a("pick_data", [str, list],
          doc="the pool: folders or HDF5 files of deepmd systems (globs allowed, relative to the config), or one "
              "s3:// prefix"),
        a("init_pick_number", int, doc="frames picked at random and relabeled in iteration 0"),
        a("iter_pick_number", int, doc="largest number of candidates relabeled per later iteration"),
        a("model_devi_f_trust_lo", NUM, alias=["f_trust_lo"],
          doc="a frame whose max force deviation (eV/A) is at or above this is a candidate"),
        a("model_devi_f_trust_hi", NUM, alias=["f_trust_hi"],
          doc="a frame whose max force deviation (eV/A) is at or above this is failed (never picked)"),
        a("model_devi_e_trust_lo", NUM, optional=True, default=BIG, alias=["e_trust_lo"],
          doc="candidate when the energy deviation per atom (eV) is at or above this (1e10: unset)"),
        a("model_devi_e_trust_hi", NUM, optional=True, default=BIG, alias=["e_trust_hi"],
          doc="failed when the energy deviation per atom (eV) is at or above this (1e10: unset)"),
        a("relative_f_epsilon", [float, int, type(None)], optional=True, default=None,
          doc="DPGEN2's key: the force deviation relative to the force, deepmd-kit's relative model deviation "
              "(each atom's deviation divided by the norm of the models' mean force on it plus this, eV/A); "
              "model_devi_f_trust_lo/hi then are relative (dimensionless). Unset: absolute, in eV/A"),
        # DP-GEN's true error (dpgen PR #1321): the models' error against pick_data's labels (labeled mode)
        a("true_error_f_trust_lo", NUM, optional=True, default=BIG,
          doc="labeled mode: candidate when the true max force error (eV/A) is at or above this (DP-GEN's rule)"),
        a("true_error_f_trust_hi", NUM, optional=True, default=BIG,
          doc="labeled mode: failed when the true max force error (eV/A) is at or above this"),
        a("true_error_e_trust_lo", NUM, optional=True, default=BIG,
          doc="labeled mode: candidate when the true energy error per atom (eV) is at or above this"),
        a("true_error_e_trust_hi", NUM, optional=True, default=BIG,
          doc="labeled mode: failed when the true energy error per atom (eV) is at or above this"),
        # selection and the stopping rule on measured error
        a("select_style", str, optional=True, default="random",
          doc="how candidates are picked: random (DP-GEN's), max_devi (largest deviation or error first, DPGEN2's "
              "fixed-levels-max-select), max_devi_each (the largest of each set quantity in turn: force deviation, "
              "energy deviation, true errors), diverse (farthest-point sampling on descriptor features) or cluster_max "
              "(k-means of the candidates' descriptor features into as many clusters as picks, the largest "
              "deviation of each)"),
        a("select_devi_weight", NUM, optional=True, default=0.0,
          doc="diverse: multiply each candidate's distance by its score (value / trust lo) to this power"),
        a("probe_number", int, optional=True, default=0,
          doc="frames drawn at random each round from all frames not relabeled yet, relabeled and held out of the "
              "next training to measure the models' new-level error; never selected by deviation"),
        a("conv_e_rmse", [float, int, type(None)], optional=True, default=None,
          doc="stop when the probe's energy RMSE (eV/atom) of the current models is at or below this"),
        a("conv_f_rmse", [float, int, type(None)], optional=True, default=None,
          doc="stop when the probe's force RMSE (eV/A) of the current models is at or below this"),
        a("model_devi_activation_func", [list, type(None)], optional=True, default=None,
          doc="one [descriptor, fitting net] activation function pair per model (DP-GEN's key)"),
        _ignored("model_devi_engine", str, default="lammps"),
        a("pick_seed", int, optional=True, default=0, doc="seed of the random picks (DP-GEN's are unseeded)"),
        a("stop_iter", int, optional=True, doc="stop after this many training iterations"),
    ]


def _training_args() -> list[Argument]:
    a = Argument
    return [
        a("mlp_engine", str, optional=True, default="dp", doc="only 'dp' (deepmd-kit)"),
        a("numb_models", int, doc="models in the ensemble"),
        a("train_backend", str, optional=True, default="tensorflow", doc="deepmd-kit backend: tensorflow or pytorch"),
        a("training_iter0_model_path", [list, str], optional=True, default=[],
          doc="the old models' training folders (globs; one per model), started from with --init-model"),
        a("training_init_model", bool, optional=True, default=False,
          doc="iterations after the first start from the previous iteration's checkpoints (else from scratch)"),
        a("training_init_frozen_model", [list, str], optional=True, default=[],
          doc="frozen models to start iteration 1 from (--init-frz-model), one per model"),
        a("training_finetune_model", [list, str], optional=True, default=[],
          doc="models to finetune in iteration 1 (--finetune): one per model, or one file for all"),
        a("model_branch", [str, type(None)], optional=True, default=None,
          doc="training_finetune_model is a multi-task model (pytorch): the branch (head) to start from "
              "(dp --pt train --finetune FILE --model-branch BRANCH)"),
        a("element_substitution", dict, optional=True, default={}, alias=["type_map_from_models"],
          doc="a similar material: {new element: the starting models' element it takes the place of}, e.g. "
              "{\"Zr\": \"Hf\"}; the models' type_map with these names replaced must be type_map, in the same "
              "order (init_model, init_frz_model; finetune maps elements by name itself)"),
        a("default_training_param", dict,
          doc="deepmd-kit's input.json; training_data is set per iteration, seeds per model; `trainable` lists "
              "freeze layers"),
        a("train_style", str, optional=True, default="auto",
          doc="how each iteration trains: exact (solve the fitting net's output layer exactly: deepmd-kit's loss at "
              "its limit prefactors plus a Gaussian prior centred on the starting model, its strength chosen by "
              "evidence maximisation; needs every other layer frozen, see README 'Exact output layer'), sgd (dp "
              "train), or auto (exact when only the output layer is trainable and the model allows it, else sgd)"),
        a("exact_refit", bool, optional=True, default=False,
          doc="with sgd: after dp train, re-solve the output layer exactly, the other layers fixed at their trained "
              "values (the loss is never above SGD's); the SGD model is kept as graph.sgd.pb / graph.sgd.pth"),
        a("dp_train_skip_neighbor_stat", [bool, type(None)], optional=True, default=None,
          doc="pass --skip-neighbor-stat to dp train; unset: when the training starts from a model and every "
              "descriptor's sel is given as numbers (sel \"auto\" needs the statistics)"),
        a("dp_compress", bool, optional=True, default=False, doc="not supported: must be false"),
        a("training_reuse_iter", [int, type(None)], optional=True, default=None,
          doc="from this iteration on, the training_reuse_* overrides apply"),
        _ignored("training_reuse_old_ratio", [str, float], default="auto"),
        a("training_reuse_numb_steps", [int, type(None)], optional=True, default=None,
          alias=["training_reuse_stop_batch"], doc="numb_steps from training_reuse_iter on"),
        a("training_reuse_start_lr", [float, type(None)], optional=True, default=None,
          doc="learning_rate.start_lr from training_reuse_iter on"),
        a("training_reuse_start_pref_e", [float, int, type(None)], optional=True, default=None,
          doc="loss.start_pref_e from training_reuse_iter on"),
        a("training_reuse_start_pref_f", [float, int, type(None)], optional=True, default=None,
          doc="loss.start_pref_f from training_reuse_iter on"),
        _ignored("srtab_file_path", str),
        _ignored("one_h5", bool, default=False),
    ]


def _fp_args() -> list[Argument]:
    a = Argument
    return [
        a("fp_style", str, optional=True, default="none",
          doc="the FP engine that relabels picks: cp2k, dftd3, ase, vasp, qe (alias pwscf), abacus, gaussian, none (labeled)"),
        a("fp_params", dict, optional=True, default={}, doc="the engine's parameters (docs per engine in README)"),
        a("fp_task_max", int, optional=True, doc="largest number of FP tasks per iteration"),
        a("fp_task_min", int, optional=True, doc="fewer candidates than this: nothing is relabeled, the loop stops"),
        a("fp_accurate_threshold", NUM, optional=True,
          doc="share of accurate frames at or above which nothing more is picked"),
        a("fp_accurate_soft_threshold", NUM, optional=True,
          doc="share of accurate frames from which the pick number shrinks linearly to 0 at fp_accurate_threshold"),
        a("ratio_failed", NUM, optional=True, default=0.05, doc="largest share of failed FP tasks in a round"),
        a("fp_skip_bad_box", str, optional=True,
          doc="DP-GEN's bad-box criteria (e.g. 'length_ratio:5;height_ratio:5'): such frames are never labeled"),
        a("fp_pp_path", str, optional=True, doc="folder of the pseudopotential files (vasp, pwscf, abacus)"),
        a("fp_pp_files", list, optional=True, doc="pseudopotential file names, in type_map order"),
        a("fp_incar", str, optional=True, doc="vasp: the INCAR template"),
        a("fp_aniso_kspacing", list, optional=True, doc="vasp: k-point spacing per lattice direction"),
        _ignored("cvasp", bool),
        a("user_fp_params", dict, optional=True, doc="cp2k, pwscf, abacus, gaussian: the engine's input as a dict"),
        a("external_input_path", str, optional=True, doc="cp2k: an input file template instead of user_fp_params"),
        a("fp_orb_files", list, optional=True, doc="abacus: orbital files, in type_map order"),
        a("fp_kpt_file", str, optional=True, doc="abacus: the KPT file"),
        a("k_points", list, optional=True, doc="pwscf/abacus: the k-point mesh"),
        _ignored("use_clusters", bool),
        _ignored("cluster_cutoff", NUM),
    ]


def _workflow_args() -> list[Argument]:
    a = Argument
    return [
        a("dflow_config", dict, optional=True, default={},
          doc="Argo settings: host, namespace, token, k8s_config_file, k8s_api_server, service_account, "
              "image_registry, pick_data_volume (DFLOW_* variables otherwise); no host: local mode"),
        a("dflow_s3_config", dict, optional=True, default={},
          doc="S3 settings: endpoint, console, bucket_name, access_key, secret_key, secure, prefix, repo_key, repo "
              "(DFLOW_S3_* variables otherwise)"),
        a("step_configs", dict, optional=True, default={},
          doc="per stage (prep_train, run_train, model_devi, select_confs, run_fp): image, resources, executor, "
              "retries, envs, group_size (run_fp), batch_size (model_devi)"),
    ]


def config_args() -> Argument:
    return Argument("simplify", dict, sub_fields=_basic_args() + _simplify_args() + _training_args() + _fp_args()
                    + _workflow_args(), doc="a DP-GEN simplify.json, as DP-GEN 0.14 takes it, plus workflow settings")


def reference_page() -> str:
    """The reference of every key (dargs' generator), as docs/config.rst holds it."""
    return ("Configuration keys\n==================\n\nGenerated from ``workflows/schema.py`` by "
            "``python -m dflow_simplify.workflows.schema > docs/config.rst``.\n\n"
            + config_args().gen_doc(make_anchor=False) + "\n")


if __name__ == "__main__":
    sys.stdout.write(reference_page())
