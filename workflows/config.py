"""The one place where a config is read: DP-GEN simplify keys + DPGEN2-style workflow settings.

`load_config(path)` returns a validated, normalized `SimplifyConfig` or raises `ConfigError` naming
the key (or file) and what was expected. Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from dargs import Argument

from dflow_simplify.ops.data import count_frames, expand_roots, find_systems, first_non_finite, npy_shape, open_system
from dflow_simplify.ops.exact_train import exact_problem, only_output_layer_trainable
from dflow_simplify.ops.fp.bad_box import parse_criteria
from dflow_simplify.ops.fp.base import ENGINES, get_engine
from dflow_simplify.ops.selection import STYLES
from dflow_simplify.ops.start_models import check_substitution, models_type_map, pt_branches
from dflow_simplify.workflows.config_file import ConfigFileError, read_config_file
from dflow_simplify.workflows.config_keys import aliases_written, as_written, bool_mixup, raw_key_problem
from dflow_simplify.workflows.schema import BIG, IGNORED_KEYS, TRUE_ERROR_KEYS, config_args
from dflow_simplify.workflows.step_config import check_step_configs, step_configs_args


def is_s3_uri(value) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def _uses_s3(node) -> bool:
    if isinstance(node, dict):
        return any(_uses_s3(v) for v in node.values())
    if isinstance(node, list):
        return any(_uses_s3(v) for v in node)
    return is_s3_uri(node)


EXIT_CONFIG = 2  # the exit code of a config (or settings) that cannot run


class ConfigError(ValueError):
    """A config that cannot run; the message names the key and what was expected."""


@dataclass(frozen=True)
class SimplifyConfig:
    """A validated config: normalized keys plus resolved absolute paths. Frozen: only this module's resolvers
    fill it in (`_set`), before `validate` returns it."""

    jdata: dict
    base_dir: Path
    pick_roots: list[str] = field(default_factory=list)
    pick_uri: str | None = None  # pick_data already in the bucket; pick_roots then empty
    pick_volume: dict | None = None  # dflow_config.pick_data_volume: the OPs read pick_roots in place
    iter0_items: list[str] | None = None  # model folders under an s3:// iter0_models[0]
    init_items: list[str] | None = None  # systems under an s3:// init_data[0]
    systems: dict[str, int] = field(default_factory=dict)  # system key -> frames
    init_data: list[str] = field(default_factory=list)
    iter0_models: list[str] = field(default_factory=list)
    init_mode: str = "scratch"
    train_style: str = "sgd"  # train_style resolved ("auto" decided): "exact" or "sgd"
    exact_bootstrap: bool = False  # exact fits on bootstrap resamples: the models start from the same file
    fp_files: dict[str, str] = field(default_factory=dict)  # staged name -> the user's file (POTCARs, templates)
    warnings: list[str] = field(default_factory=list)  # one line per DP-GEN key accepted but not used

    @property
    def fp_style(self) -> str:
        style = "none" if self.jdata["labeled"] else self.jdata["fp_style"]
        return FP_STYLE_ALIASES.get(style, style)

    @property
    def n_frames(self) -> int:
        return sum(self.systems.values())


def _set(cfg: SimplifyConfig, **values) -> None:
    """A resolver's result into the config being validated (frozen for everyone else)."""
    for name, value in values.items():
        object.__setattr__(cfg, name, value)


def _as_list(value) -> list:
    return [value] if isinstance(value, str) else list(value)


def _read_json(path: Path) -> dict:
    try:
        return read_config_file(path)
    except ConfigFileError as e:
        raise ConfigError(str(e)) from None


def normalize(raw: dict) -> dict:
    arg = config_args()
    _refuse(raw_key_problem(raw, arg))
    try:
        data = arg.normalize_value(raw, trim_pattern="_*")
        arg.check_value(data, strict=True)
    except Exception as e:  # dargs says which key and what it expected (over several lines for a union)
        msg = str(e).replace("[at root location] ", "").replace("[at location `simplify`] ", "")
        raise ConfigError("config: " + "; ".join(line.strip() for line in msg.splitlines() if line.strip())) from None
    _refuse(bool_mixup(arg, data, ""))
    return data


# trust levels where infinity means "unset" (no failed frames; no candidate by that quantity), as DP-GEN's 1e10
INFINITE_OK = {"model_devi_f_trust_hi", "model_devi_e_trust_lo", "model_devi_e_trust_hi", "true_error_f_trust_lo",
               "true_error_f_trust_hi", "true_error_e_trust_lo", "true_error_e_trust_hi"}
BATCH_SIZE = re.compile(r"(auto|mixed|max|filter)(:[1-9][0-9]*)?")


def _check_finite(node, where: str = "") -> None:
    """No NaN anywhere in the config; infinity only for the trust levels where it means unset."""
    if isinstance(node, dict):
        for k, v in node.items():
            _check_finite(v, f"{where}.{k}" if where else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_finite(v, f"{where}[{i}]")
    elif isinstance(node, float) and node != node:
        raise ConfigError(f"{where}: NaN is not a number; expected a real value")
    elif isinstance(node, float) and abs(node) == float("inf") and where not in INFINITE_OK:
        raise ConfigError(f"{where}: expected a finite number, got {node}")
    elif isinstance(node, int) and not isinstance(node, bool) and abs(node) >= 2**63:
        raise ConfigError(f"{where}: {node} does not fit in 64 bits")


def _check_batch_size(key: str, value) -> None:
    for v in value if isinstance(value, list) else [value]:
        ok = (isinstance(v, int) and not isinstance(v, bool) and v >= 1) or (isinstance(v, str) and BATCH_SIZE.fullmatch(v))
        if not ok:
            raise ConfigError(f"{key}: expected a positive integer, 'auto' or 'auto:N' (or a list of them), got {v!r}")
    if isinstance(value, list) and not value:
        raise ConfigError(f"{key}: expected a batch size, got an empty list")


def _check_ranges(j: dict) -> None:
    """Counts, shares and seeds in the range where they mean something."""
    for key in ("fp_task_max", "stop_iter", "training_reuse_numb_steps"):
        if j.get(key) is not None and j[key] < 1:
            raise ConfigError(f"{key}: expected a positive integer, got {j[key]}")
    for key in ("fp_task_min", "pick_seed", "training_reuse_iter"):
        if j.get(key) is not None and j[key] < 0:
            raise ConfigError(f"{key}: expected an integer >= 0, got {j[key]}")
    for key in ("ratio_failed", "fp_accurate_threshold", "fp_accurate_soft_threshold"):
        if j.get(key) is not None and not 0 <= j[key] <= 1:
            raise ConfigError(f"{key}: expected a share between 0 and 1, got {j[key]}")
    for key in ("sys_batch_size", "init_batch_size"):
        _check_batch_size(key, j[key])


def _check_numbers(j: dict) -> None:
    _check_finite(j)
    _check_ranges(j)
    _check_dpgen_extras(j)
    for key in ("numb_models", "init_pick_number", "iter_pick_number"):
        if j[key] < 1:
            raise ConfigError(f"{key}: expected a positive integer, got {j[key]}")
    if j["model_devi_f_trust_lo"] == float("inf"):
        raise ConfigError("model_devi_f_trust_lo: expected a finite number (infinity retires every frame as accurate)")
    for kind in ("model_devi", "true_error"):
        for q in ("f", "e"):
            _check_band(j, f"{kind}_{q}_trust_lo", f"{kind}_{q}_trust_hi")
    set_true = [k for k in TRUE_ERROR_KEYS if j[k] < BIG]
    if set_true and not j["labeled"]:
        raise ConfigError(f"{set_true[0]}: the true error is measured against pick_data's own labels, which needs "
                          "labeled: true (DP-GEN's rule); remove it or set labeled: true")
    if j["train_style"] not in ("auto", "exact", "sgd"):
        raise ConfigError(f"train_style: expected one of ['auto', 'exact', 'sgd'], got {j['train_style']!r}")
    if j["select_style"] not in STYLES:
        raise ConfigError(f"select_style: expected one of {list(STYLES)}, got {j['select_style']!r}")
    if j["relative_f_epsilon"] is not None and not j["relative_f_epsilon"] > 0:
        raise ConfigError(f"relative_f_epsilon: expected a positive number (eV/A), got {j['relative_f_epsilon']}")
    if j["select_devi_weight"] < 0:
        raise ConfigError(f"select_devi_weight: expected a number >= 0, got {j['select_devi_weight']}")
    if j["probe_number"] < 0:
        raise ConfigError(f"probe_number: expected an integer >= 0, got {j['probe_number']}")
    for key in ("conv_e_rmse", "conv_f_rmse"):
        if j[key] is not None and not j[key] > 0:
            raise ConfigError(f"{key}: expected a positive number (RMSE), got {j[key]}")
        if j[key] is not None and j["probe_number"] == 0:
            raise ConfigError(f"{key}: the stopping rule measures the error on the probe frames; set probe_number "
                              "> 0 (e.g. 10)")
    if j["train_backend"] not in ("tensorflow", "pytorch"):
        raise ConfigError(f"train_backend: expected 'tensorflow' or 'pytorch', got {j['train_backend']!r}")
    if j["mlp_engine"] != "dp":
        raise ConfigError(f"mlp_engine: only 'dp' (DeePMD-kit) is supported, got {j['mlp_engine']!r}")
    if j["dp_compress"]:
        raise ConfigError("dp_compress: true is not supported yet; set it to false")
    acts = j["model_devi_activation_func"]
    if acts is not None and (len(acts) != j["numb_models"] or any(len(x) != 2 for x in acts)):
        raise ConfigError(f"model_devi_activation_func: expected {j['numb_models']} pairs [descriptor, fitting]")
    tm = j["default_training_param"].get("model", {}).get("type_map")
    if tm is not None and list(tm) != list(j["type_map"]):
        raise ConfigError(f"default_training_param.model.type_map {tm} differs from type_map {j['type_map']}")
    _check_start(j)
    if "training" not in j["default_training_param"]:
        raise ConfigError("default_training_param: expected a deepmd-kit input with a 'training' section")
    _check_training_param(j["default_training_param"])


def _check_band(j: dict, lo_key: str, hi_key: str) -> None:
    """A trust band [lo, hi): lo >= 0, lo <= hi, not empty unless unset; the message names the key that was set
    when the other one is only its default (unset, 1e10)."""
    lo, hi = j[lo_key], j[hi_key]
    if lo < 0:
        raise ConfigError(f"{lo_key}: expected a number >= 0, got {lo}")
    if lo > hi and lo >= BIG:
        raise ConfigError(f"{hi_key} ({hi}) is set but {lo_key} is not (its default {lo:g} means unset, and a band "
                          f"[lo, hi) needs lo <= hi): set {lo_key} <= {hi} too")
    if lo > hi:
        raise ConfigError(f"{lo_key} ({lo}) must be <= {hi_key} ({hi})")
    if lo == hi < BIG:
        raise ConfigError(f"{lo_key} and {hi_key} are both {lo}: the band [lo, hi) is empty, so no frame would be a "
                          f"candidate by it; set {lo_key} < {hi_key}")


def _check_dpgen_extras(j: dict) -> None:
    """DP-GEN keys simplify does not use, refused where their value contradicts the rest of the config."""
    masses, type_map = j["mass_map"], j["type_map"]
    if isinstance(masses, str) and masses != "auto":
        raise ConfigError(f"mass_map: expected a list of masses or \"auto\", got {masses!r}")
    if isinstance(masses, list) and len(masses) != len(type_map):
        raise ConfigError(f"mass_map: {len(masses)} masses for the {len(type_map)} elements of type_map {type_map}; "
                          "expected one per element (or leave mass_map out: simplify does not use it)")
    if isinstance(masses, list) and not all(isinstance(m, (int, float)) and not isinstance(m, bool) and m > 0
                                            for m in masses):
        raise ConfigError(f"mass_map: expected positive numbers, got {masses}")
    if j.get("fp_task_min") is not None and j.get("fp_task_max") is not None and j["fp_task_min"] > j["fp_task_max"]:
        raise ConfigError(f"fp_task_min ({j['fp_task_min']}) is above fp_task_max ({j['fp_task_max']}): no round "
                          "could relabel anything; set fp_task_min <= fp_task_max")


def _check_start(j: dict) -> None:
    """element_substitution and model_branch, against the start mode they need."""
    try:
        check_substitution(j["type_map"], j["element_substitution"])
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if j["element_substitution"] and j["training_finetune_model"]:
        raise ConfigError("element_substitution: deepmd-kit's finetune maps elements by name itself (a new element "
                          "gets new parameters, an element of the model's type_map keeps its own); leave it out "
                          "with training_finetune_model")
    if j["model_branch"] is not None and not j["training_finetune_model"]:
        raise ConfigError("model_branch: names a branch of a multi-task model given as training_finetune_model, "
                          "which is not set")
    if j["model_branch"] is not None and j["train_backend"] != "pytorch":
        raise ConfigError("model_branch: multi-task models are fine-tuned with train_backend 'pytorch'")


def _check_training_param(template: dict) -> None:
    """deepmd-kit's own argument check of the training input (its training_data is set per iteration)."""
    try:
        from deepmd.utils.argcheck import gen_args
        from deepmd.utils.argcheck import normalize as deepmd_normalize
    except ImportError:  # a submit-only environment without deepmd-kit: the pods check it
        return
    _refuse(bool_mixup(Argument("default_training_param", dict, gen_args()), template, "default_training_param"))
    jinput = json.loads(json.dumps(template))
    jinput["training"]["training_data"] = {"systems": ["iter_data"]}
    try:
        deepmd_normalize(jinput)
    except Exception as e:  # dargs' errors name the location and the key
        msg = re.sub(r"\[at location `([^`]*)`\] ", lambda m: f"at {m.group(1).replace('/', '.')}: ", str(e))
        raise ConfigError(f"default_training_param (checked by deepmd-kit): {msg.strip()}") from None


def _check_settings(j: dict) -> None:
    from .settings import ArgoSettingsError, check_argo_settings, check_s3_settings

    try:
        check_argo_settings(j["dflow_config"])
        check_s3_settings(j["dflow_s3_config"])
    except ArgoSettingsError as e:
        raise ConfigError(str(e)) from None


def _check_step_configs(j: dict) -> None:
    try:
        j["step_configs"] = check_step_configs(j["step_configs"])
    except Exception as e:  # dargs names the stage and key
        raise ConfigError(f"step_configs: {e}") from None
    _refuse(bool_mixup(step_configs_args(), j["step_configs"], "step_configs"))


def _refuse(problem: str | None) -> None:
    if problem:
        raise ConfigError(problem)


FP_STYLE_ALIASES = {"pwscf": "qe"}  # DP-GEN's names


def _check_engine(cfg: SimplifyConfig) -> None:
    """fp_params of the engine, from DP-GEN's top-level keys overridden by `fp_params`; input files
    checked and given unique names under which the workflow ships them to the RunFP steps."""
    j = cfg.jdata
    style = cfg.fp_style
    if j["labeled"] and j["fp_style"] != "none":  # DP-GEN accepts both: labeled wins there too
        _set(cfg, warnings=[*cfg.warnings, f"fp_style {j['fp_style']!r} is not used: labeled: true wins (pick_data's "
                            "own labels are taken as the new level's; no FP code runs); remove fp_style, or set "
                            "labeled: false to relabel with it"])
    try:
        engine = get_engine(style)
    except KeyError:
        raise ConfigError(f"fp_style: {style!r} is not available; expected one of {sorted(ENGINES)} "
                          "(or labeled: true when pick_data already carries the new labels)") from None
    arg = Argument("fp_params", dict, sub_fields=engine.params_args())
    try:
        params = arg.normalize_value({**engine.from_dpgen(j), **j["fp_params"]}, trim_pattern="_*")
        arg.check_value(params, strict=True)
        engine.check(params, j["type_map"])
    except Exception as e:
        raise ConfigError(f"fp_params for fp_style {style!r}: {e}".replace("[at location `fp_params`] ", "")) from None
    _refuse(bool_mixup(arg, params, "fp_params"))
    for key in engine.file_params:
        if params.get(key) is None:
            continue
        names = [params[key]] if isinstance(params[key], str) else params[key]
        staged = []
        for name in names:
            path = cfg.base_dir / name
            if not path.is_file():
                raise ConfigError(f"fp_params.{key} for fp_style {style!r}: file {name} not found (looked for {path})")
            staged.append("%02d-%s" % (len(cfg.fp_files), path.name))
            cfg.fp_files[staged[-1]] = str(path.resolve())
        params[key] = staged[0] if isinstance(params[key], str) else staged
    j["fp_params"] = params
    if j.get("fp_skip_bad_box"):
        try:
            parse_criteria(j["fp_skip_bad_box"])
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _s3_ready(cfg: SimplifyConfig, key: str, uris: list[str]) -> str:
    """The one s3:// URI of config key `key`, once the S3 settings are in place for reading it."""
    from dflow import config as dflow_config

    from .argo import ArgoSettingsError, argo_host, set_s3
    from .inputs import s3_key

    j = cfg.jdata
    if len(uris) != 1 or not is_s3_uri(uris[0]) or any(c in uris[0] for c in "*?["):
        raise ConfigError(f"{key}: an s3:// URI must be the only entry (one prefix, no wildcards), got {uris}")
    # the same switch run_local follows: dflow's debug_s3, read by dflow from DFLOW_DEBUG_S3
    if not (argo_host(j["dflow_config"]) or dflow_config["debug_s3"]):
        raise ConfigError(f"{key}: {uris[0]} is in S3; run on Argo (dflow_config.host) or locally with "
                          "DFLOW_DEBUG_S3=true and dflow_s3_config, or give a local path")
    try:
        set_s3(j["dflow_s3_config"])
        s3_key(uris[0])
    except (ArgoSettingsError, ValueError) as e:
        raise ConfigError(f"{key}: {e}") from None
    return uris[0]


def _s3_listing(key: str, uri: str) -> list[str]:
    from .inputs import list_keys

    try:
        rels = list_keys(uri)
    except Exception as e:  # the S3 client's own errors (endpoint, keys, bucket)
        raise ConfigError(f"{key}: cannot list {uri}: {type(e).__name__}: {e}") from None
    if not rels:
        raise ConfigError(f"{key}: {uri} holds no object")
    return rels


def _resolve_pick_data(cfg: SimplifyConfig) -> None:
    patterns = _as_list(cfg.jdata["pick_data"])
    if not any(is_s3_uri(p) for p in patterns):
        _index_pick_data(cfg, patterns)
        return
    from .inputs import fetch_index

    # pick_data in the bucket: its index files, in a temporary folder for the checks only
    _set(cfg, pick_uri=_s3_ready(cfg, "pick_data", patterns))
    with tempfile.TemporaryDirectory(prefix="simplify-pick-index-") as index:
        fetch_index(cfg.pick_uri, _s3_listing("pick_data", cfg.pick_uri), Path(index))
        _index_pick_data(cfg, [index])
    _set(cfg, pick_roots=[])  # nothing local: the OPs read the pick_uri artifact


def _index_pick_data(cfg: SimplifyConfig, patterns: list[str]) -> None:
    """The systems (and their frame counts) of pick_data's roots, each checked."""
    _set(cfg, pick_roots=expand_roots(patterns, cfg.base_dir))
    if not cfg.pick_roots:
        raise ConfigError(f"pick_data: no file or folder matches {patterns} (relative to {cfg.base_dir})")
    _check_roots_distinct(cfg.pick_roots)
    engine = get_engine(cfg.fp_style)
    for i, root in enumerate(cfg.pick_roots):
        names = find_systems(root)
        if not names:
            if cfg.pick_uri:
                raise ConfigError(f"pick_data: {cfg.pick_uri} holds no deepmd/npy or deepmd/hdf5 system (no "
                                  "type.raw found)")
            raise ConfigError(f"pick_data: {root} holds no deepmd/npy or deepmd/hdf5 system (no type.raw found)")
        for name in names:
            key = f"{i}/{name}"
            _check_system(cfg, key, root, name, needs_labels=engine.needs_input_labels)
            cfg.systems[key] = count_frames(cfg.pick_roots, key)
    if not cfg.n_frames:
        raise ConfigError(f"pick_data: its {len(cfg.systems)} system(s) hold no frame; expected at least "
                          f"init_pick_number = {cfg.jdata['init_pick_number']}")


def _check_roots_distinct(roots: list[str]) -> None:
    """No root is another one, or inside it, once links are resolved: its frames would count twice."""
    reals = [os.path.realpath(r) for r in roots]
    for i, a in enumerate(reals):
        for j, b in enumerate(reals):
            if i != j and os.path.commonpath([a, b]) == b:
                what = "the same folder as" if a == b else "inside"
                raise ConfigError(f"pick_data: {roots[i]} is {what} {roots[j]}; its frames would be counted twice. "
                                  "List each folder once")


def _check_system(cfg: SimplifyConfig, key: str, root: str, name: str, needs_labels: bool) -> None:
    """A deepmd system's types and array shapes (npy headers, HDF5 dataset shapes; no array is read), each
    file or dataset named when it is wrong."""
    if "#" in name:
        where, types, names, sets = _h5_system(root, name)
    else:
        where, types, names, sets = _npy_system(Path(root, name), check_arrays=not cfg.pick_uri)
    type_map = cfg.jdata["type_map"]
    if not types:
        raise ConfigError(f"pick_data: {where}/type.raw is empty; expected one integer type per atom")
    if names is not None:
        if max(types) >= len(names) or min(types) < 0:
            raise ConfigError(f"pick_data: {where}/type.raw uses type {max(types)} but {where}/type_map.raw names "
                              f"{len(names)} elements")
        unknown = sorted({names[t] for t in types} - set(type_map))
        if unknown:
            raise ConfigError(f"pick_data: system {where} has element(s) {unknown} not in type_map {type_map}")
    elif max(types) >= len(type_map) or min(types) < 0:
        raise ConfigError(f"pick_data: system {where} uses type {max(types)} but type_map has "
                          f"{len(type_map)} elements")
    if not any("box.npy" in shapes for shapes in sets.values()):
        raise ConfigError(f"pick_data: system {where} has no set.*/box.npy")
    for set_name, shapes in sets.items():
        _check_set(f"{where}/{set_name}", shapes, len(types))
    if needs_labels:
        for arr in ("energy.npy", "force.npy"):
            if not any(arr in shapes for shapes in sets.values()):
                what = "labeled: true" if cfg.jdata["labeled"] else f"fp_style {cfg.fp_style!r}"
                raise ConfigError(f"pick_data: system {where} lacks {arr}, which {what} needs")
    if cfg.pick_uri:  # pick_data in S3: only its index files are here, not its arrays
        return
    arrays = ("box", "coord") + (("energy", "force", "virial") if needs_labels else ())
    bad = first_non_finite(where, "deepmd/hdf5" if "#" in name else "deepmd/npy", arrays)
    if bad:
        raise ConfigError(f"pick_data: system {where}, frame {bad[0]}: {bad[1]} holds NaN or infinity (frames "
                          "counted from 0 over the system's sets); fix or remove that frame")


def _npy_system(sys_dir: Path, check_arrays: bool) -> tuple[str, list[int], list[str] | None, dict]:
    """(name, types, element names or None, {set: {array file: shape}}) of a deepmd/npy folder, from the
    npy headers; with `check_arrays` false (pick_data in S3: index files only) the shapes are left empty."""
    try:
        types = [int(t) for t in (sys_dir / "type.raw").read_text().split()]
    except (ValueError, UnicodeDecodeError):
        raise ConfigError(f"pick_data: {sys_dir / 'type.raw'}: expected one integer type per atom") from None
    tm_file = sys_dir / "type_map.raw"
    names = tm_file.read_text().split() if tm_file.exists() else None
    sets = {}
    for set_dir in sorted(glob.glob(str(sys_dir / "set.*"))):
        sets[Path(set_dir).name] = shapes = {}
        for arr in SET_ARRAYS:
            path = Path(set_dir, arr)
            if path.exists():
                try:
                    shapes[arr] = npy_shape(path) if check_arrays else None
                except ValueError as e:
                    raise ConfigError(f"pick_data: {e}") from None
    return str(sys_dir), types, names, sets


def _h5_system(root: str, name: str) -> tuple[str, list[int], list[str] | None, dict]:
    """The same of a deepmd/hdf5 group (`file#group` under `root`), from the dataset shapes."""
    rel, group = name.split("#", 1)
    path = f"{os.path.join(root, rel) if rel else root}#{group or '/'}"
    try:
        with open_system(path, "deepmd/hdf5") as (names, types, _, sets):
            shapes = {s: {f"{k}.npy": a.shape for k, a in arrays.items() if f"{k}.npy" in SET_ARRAYS}
                      for s, arrays in sets.items()}
    except (TypeError, ValueError):
        raise ConfigError(f"pick_data: {path}/type.raw: expected one integer type per atom") from None
    return path, [int(t) for t in types], names, shapes


SET_ARRAYS = {"box.npy": lambda n: (9,), "coord.npy": lambda n: (3 * n,), "energy.npy": lambda n: (),
              "force.npy": lambda n: (3 * n,), "virial.npy": lambda n: (9,)}


def _check_set(where: str, shapes: dict, natoms: int) -> None:
    """Every array of one set: present where needed, frames per row as box.npy says, atoms as type.raw says
    (a shape None: not known here, only its presence is checked)."""
    frames = None
    for name, row in SET_ARRAYS.items():
        if name not in shapes:
            if name in ("box.npy", "coord.npy") and any(v is not None for v in shapes.values()):
                raise ConfigError(f"pick_data: {where}/{name} is missing")
            continue
        shape = shapes[name]
        if shape is None:
            continue
        n = shape[0] if shape else 0
        per_frame = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        expect = int(np.prod(row(natoms))) if row(natoms) else 1
        if len(shape) == 0 or per_frame != expect:
            raise ConfigError(f"pick_data: {where}/{name} has shape {shape}; expected (frames, {expect}) for {natoms} "
                              "atoms (type.raw)")
        if frames is None:
            frames = n
        elif n != frames:
            raise ConfigError(f"pick_data: {where}/{name} has {n} frames but {where}/box.npy has {frames}")


def _resolve_models(cfg: SimplifyConfig) -> None:
    j = cfg.jdata
    n = j["numb_models"]
    backend = j["train_backend"]
    choices = [("training_finetune_model", "finetune"), ("training_init_frozen_model", "init_frz_model")]
    for key, mode in choices:
        if j[key]:
            if any(is_s3_uri(f) for f in _as_list(j[key])):
                raise ConfigError(f"{key}: give the model files as local paths (they are uploaded once, by content "
                                  "hash); s3:// is supported for training_iter0_model_path folders")
            files = [os.path.join(cfg.base_dir, f) for f in _as_list(j[key])]
            missing = [f for f in files if not os.path.isfile(f)]
            if missing:
                raise ConfigError(f"{key}: file(s) not found: {missing}")
            if len(files) == 1 and mode == "finetune":  # one pretrained model for every model of the ensemble
                files = files * n
            if len(files) != n:
                raise ConfigError(f"{key}: expected numb_models = {n} files, got {len(files)}")
            if mode == "finetune" and backend == "pytorch" and not all(f.endswith(".pt") for f in files):
                raise ConfigError(f"{key}: the pytorch backend finetunes from .pt checkpoints, not frozen .pth files")
            for f in files:
                if f.endswith((".pt", ".pth")) and not zipfile.is_zipfile(f):
                    raise ConfigError(f"{key}: {f} is no PyTorch model file (expected a zip archive, as torch.save "
                                      "writes)")
            if mode == "finetune" and backend == "pytorch":
                for f in sorted(set(files)):
                    _check_branch(f, j["model_branch"])
            if mode == "finetune" and n > 1 and len(set(files)) == 1:
                _set(cfg, warnings=[*cfg.warnings, f"{key}: every model starts from the same file, so the models "
                                    "differ only by their training seeds and deviate far less than independently "
                                    "trained ones (README: Which starting point?): set model_devi_f_trust_lo on "
                                    "that scale, or stop on measured error (probe_number, conv_e_rmse)"])
            if not j["training_init_model"]:
                _set(cfg, warnings=[*cfg.warnings, f"{key} starts iteration 1 only; with training_init_model false "
                                    "the later iterations train from scratch (DP-GEN's rule): set it true to "
                                    "continue from the previous iteration's models"])
            _set(cfg, iter0_models=[os.path.abspath(f) for f in files], init_mode=mode)
            return
    if j["training_init_model"] and any(is_s3_uri(p) for p in _as_list(j["training_iter0_model_path"])):
        _s3_models(cfg, _as_list(j["training_iter0_model_path"]))
    elif j["training_init_model"]:
        dirs = []
        for pattern in _as_list(j["training_iter0_model_path"]):
            dirs += sorted(glob.glob(os.path.join(cfg.base_dir, pattern)))
        seen = {}
        for d in dirs:
            if seen.setdefault(os.path.realpath(d), d) != d or dirs.count(d) > 1:
                raise ConfigError(f"training_iter0_model_path: the model in {d} is given more than once (as "
                                  f"{seen[os.path.realpath(d)]} too); identical starting models deviate (nearly) by "
                                  "zero, so the selection would be blind: give numb_models different models")
        if len(dirs) != n:
            raise ConfigError(f"training_iter0_model_path: expected numb_models = {n} training folders, "
                              f"found {len(dirs)} matching {j['training_iter0_model_path']}")
        ckpt = "model.ckpt.index" if backend == "tensorflow" else "model.ckpt.pt"
        for d in dirs:
            if not glob.glob(os.path.join(d, ckpt)) and not glob.glob(os.path.join(d, "model.ckpt*.pt")):
                raise ConfigError(f"training_iter0_model_path: {d} holds no {backend} checkpoint ({ckpt})")
            _check_model_folder(Path(d), j["type_map"], j["element_substitution"])
        _set(cfg, iter0_models=[os.path.abspath(d) for d in dirs], init_mode="init_model")


def _resolve_train_style(cfg: SimplifyConfig) -> None:
    """train_style "auto": the exact output-layer fit when only the output layer is trainable and the set-up
    allows it, `dp train` otherwise; "exact" where it cannot run is refused, naming why."""
    j = cfg.jdata
    style, template = j["train_style"], j["default_training_param"]
    problem = exact_problem(template, cfg.init_mode, j["model_branch"])
    if style == "exact" and problem:
        raise ConfigError(f"train_style \"exact\": {problem}")
    if style == "auto" and problem and only_output_layer_trainable(template):
        _set(cfg, warnings=[*cfg.warnings, f"train_style \"auto\": only the output layer is trainable, but {problem}; "
                            "training with dp train"])
    resolved = "exact" if style == "exact" or (style == "auto" and problem is None) else "sgd"
    if resolved == "exact" and j["exact_refit"]:
        _set(cfg, warnings=[*cfg.warnings, "exact_refit: the models are already fitted exactly (train_style "
                            "resolves to \"exact\"); exact_refit changes nothing"])
    bootstrap = resolved == "exact" and j["numb_models"] > 1 and starts_shared(cfg.iter0_models, j["numb_models"])
    _set(cfg, train_style=resolved, exact_bootstrap=bootstrap)


def starts_shared(models: list[str], n: int) -> bool:
    """Two or more models start from the same file (by content): exact fits of them would be identical."""
    if len(models) < n or any(is_s3_uri(m) for m in models):
        return False
    digests = set()
    for m in models:
        files = [Path(m)] if os.path.isfile(m) else sorted(p for p in Path(m).glob("model.ckpt*") if p.is_file())
        h = hashlib.sha256()
        for f in files:
            h.update(f.read_bytes())
        digests.add(h.hexdigest())
    return len(digests) < n


def _check_branch(path: str, branch: str | None) -> None:
    """A multi-task checkpoint needs model_branch, one of its branches; a single-task one none."""
    try:
        branches = pt_branches(path)
    except Exception as e:  # not a deepmd-kit checkpoint torch can read
        raise ConfigError(f"training_finetune_model: {path} is no deepmd-kit PyTorch checkpoint ({e})") from None
    if branches is None and branch is not None:
        raise ConfigError(f"model_branch: {path} is a single-task model (no branches); remove model_branch")
    if branches is not None and branch not in branches:
        raise ConfigError(f"model_branch: {path} is a multi-task model; expected one of its branches {branches}, "
                          f"got {branch!r}")


def _check_model_folder(folder: Path, type_map: list[str], substitution: dict[str, str]) -> None:
    """A training folder's TensorFlow `checkpoint` file (text naming a saved step) and the type map of the
    input.json it was trained with, where those files are there."""
    ckpt_file = folder / "checkpoint"
    if ckpt_file.exists():
        try:
            text = ckpt_file.read_text()
        except UnicodeDecodeError:
            raise ConfigError(f"training_iter0_model_path: {ckpt_file} is not TensorFlow's checkpoint text file "
                              "(unreadable bytes)") from None
        m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', text, re.M)
        if not m or not (folder / (m.group(1) + ".index")).exists():
            raise ConfigError(f"training_iter0_model_path: {ckpt_file} names no saved checkpoint in {folder}")
    input_json = folder / "input.json"
    if input_json.exists():
        try:
            old = json.loads(input_json.read_text()).get("model", {}).get("type_map")
        except (ValueError, UnicodeDecodeError, AttributeError):
            raise ConfigError(f"training_iter0_model_path: {input_json} is not a deepmd-kit input (JSON)") from None
        expected = models_type_map(type_map, substitution)
        if old is not None and list(old) != expected:
            ours = f"type_map {type_map}" + (f" (with element_substitution: {expected})" if substitution else "")
            raise ConfigError(f"{ours} differs from the type map {old} the model in {folder} was trained with "
                              f"({input_json}); the models read types by index: give their type_map, in their "
                              "order, and for a similar material map each new element onto the one it replaces "
                              "with element_substitution, e.g. {\"Zr\": \"Hf\"}")


def _s3_models(cfg: SimplifyConfig, paths: list[str]) -> None:
    """training_iter0_model_path as one s3:// prefix holding a training folder per model."""
    key, n = "training_iter0_model_path", cfg.jdata["numb_models"]
    uri = _s3_ready(cfg, key, paths)
    ckpt = "model.ckpt.index" if cfg.jdata["train_backend"] == "tensorflow" else "model.ckpt.pt"
    dirs = sorted({r.split("/")[0] for r in _s3_listing(key, uri)
                   if r.count("/") == 1 and (r.endswith("/" + ckpt) or re.fullmatch(r"[^/]+/model\.ckpt.*\.pt", r))})
    if len(dirs) != n:
        raise ConfigError(f"{key}: expected numb_models = {n} training folders with a {ckpt} under {uri}, found "
                          f"{len(dirs)}: {dirs}")
    _set(cfg, iter0_models=[uri], iter0_items=dirs, init_mode="init_model")


def _s3_init_data(cfg: SimplifyConfig) -> None:
    """init_data_prefix as an s3:// prefix; init_data_sys the systems under it (no wildcards)."""
    j = cfg.jdata
    uri = _s3_ready(cfg, "init_data_prefix", [j["init_data_prefix"]])
    rels = set(_s3_listing("init_data_prefix", uri))
    for entry in j["init_data_sys"]:
        if any(c in entry for c in "*?["):
            raise ConfigError(f"init_data_sys: {entry!r}: wildcards are not supported under an s3:// prefix")
        if f"{entry.strip('/')}/type.raw" not in rels:
            raise ConfigError(f"init_data_sys: {entry!r} is no deepmd/npy system under {uri} (no type.raw)")
    _set(cfg, init_data=[uri], init_items=[e.strip("/") for e in j["init_data_sys"]])


def _resolve_init_data(cfg: SimplifyConfig) -> None:
    j = cfg.jdata
    if j["init_data_sys"] and is_s3_uri(j["init_data_prefix"]):
        return _s3_init_data(cfg)
    for entry in j["init_data_sys"]:
        matches = sorted(glob.glob(os.path.join(cfg.base_dir, j["init_data_prefix"], entry)))
        if not matches:
            raise ConfigError(f"init_data_sys: {entry!r} (prefix {j['init_data_prefix']!r}) matches nothing")
        cfg.init_data.extend(os.path.abspath(m) for m in matches)


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


def _check_pick_volume(cfg: SimplifyConfig) -> None:
    """dflow_config.pick_data_volume = {"claim_name", "mount_path"[, "sub_path"]}: the pods that read pick_data
    (ModelDevi, SelectConfs) mount that PersistentVolumeClaim read-only at mount_path and read pick_data
    there, at the same paths as on this machine (a shared file system), instead of downloading it."""
    vol = cfg.jdata["dflow_config"].get("pick_data_volume")
    if vol is None:
        return
    where = "dflow_config.pick_data_volume"
    if not isinstance(vol, dict) or set(vol) - {"claim_name", "mount_path", "sub_path"}:
        raise ConfigError(f"{where}: expected {{\"claim_name\": ..., \"mount_path\": ...[, \"sub_path\": ...]}}, got {vol!r}")
    claim, mount = vol.get("claim_name"), vol.get("mount_path")
    if not isinstance(claim, str) or len(claim) > 253 or not DNS_LABEL.fullmatch(claim):
        raise ConfigError(f"{where}.claim_name: expected a PersistentVolumeClaim name (lower case, digits, '-'), got {claim!r}")
    if not isinstance(mount, str) or not os.path.isabs(mount):
        raise ConfigError(f"{where}.mount_path: expected an absolute path, got {mount!r}")
    if cfg.pick_uri:
        raise ConfigError(f"{where}: pick_data is in S3 ({cfg.pick_uri}); a volume needs pick_data as a path under "
                          f"{mount}")
    outside = [r for r in cfg.pick_roots if os.path.commonpath([r, os.path.abspath(mount)]) != os.path.abspath(mount)]
    if outside:
        raise ConfigError(f"pick_data: {outside[0]} is not under {where}.mount_path {mount}; the pods read pick_data "
                          "at the same paths as this machine")
    _set(cfg, pick_volume=dict(vol))


def load_config(path: str | os.PathLike) -> SimplifyConfig:
    path = Path(path).resolve()
    raw = _read_json(path)
    return validate(raw, path.parent)


def read_raw_config(path: str | os.PathLike) -> dict:
    """The config file's JSON object as written (comments allowed), not validated; ConfigError if unreadable."""
    return _read_json(Path(path))


def ignored_keys(raw: dict) -> list[str]:
    """One warning line per DP-GEN key of `raw` that is accepted but changes nothing."""
    return [f"{k}: accepted and ignored ({why})" for k, why in IGNORED_KEYS.items() if k in raw]


def validate(raw: dict, base_dir: str | os.PathLike) -> SimplifyConfig:
    """The validated config. Touches no global setting: dflow's S3 settings, needed to list an s3:// input,
    are restored before it returns (and dflow is not even imported for a config without one)."""
    try:
        if not _uses_s3(raw):
            return _validate(raw, base_dir)
        from dflow import s3_config

        saved = dict(s3_config)
        try:
            return _validate(raw, base_dir)
        finally:
            s3_config.clear()
            s3_config.update(saved)
    except ConfigError as e:  # the keys named as the user wrote them (f_trust_lo, not model_devi_f_trust_lo)
        raise ConfigError(as_written(str(e), aliases_written(raw, config_args()))) from None


def _validate(raw: dict, base_dir: str | os.PathLike) -> SimplifyConfig:
    jdata = normalize(raw)
    _check_numbers(jdata)
    _check_settings(jdata)
    _check_step_configs(jdata)
    cfg = SimplifyConfig(jdata=jdata, base_dir=Path(base_dir).resolve())
    _check_engine(cfg)
    _resolve_pick_data(cfg)
    _check_pick_volume(cfg)
    _resolve_init_data(cfg)
    _resolve_models(cfg)
    _resolve_train_style(cfg)
    _set(cfg, warnings=ignored_keys(raw) + cfg.warnings)
    return cfg
