"""Per-stage settings (`step_configs`, DPGEN2's shape) and the images each stage runs in by default.

    "step_configs": {"run_fp": {"template_config": {"image": "...", "requests": {"cpu": "4"}, "timeout": 7200},
                                "group_size": 10, "parallelism": 20,
                                "continue_on_success_ratio": 0.9}}

`template_config` goes to dflow's PythonOPTemplate (the pod: image, resources, node selector,
tolerations, timeout, retries), the rest to the Step (parallelism, success ratio, executor) or the OP.
RunTrain and RunFP may run on an HPC cluster instead of in pods: `"executor": {"type": "dispatcher",
"host": ..., "username": ..., "machine_dict": {...}, "resources_dict": {...}}` (dflow's DispatcherExecutor,
dpdispatcher underneath; ignored in local mode).
"""

from __future__ import annotations

import inspect

from dargs import Argument

from dflow_simplify import __version__

STAGES = ("prep_train", "run_train", "model_devi", "select_confs", "run_fp")
SLICED = ("run_train", "run_fp")  # stages that run as parallel slices

# images/ builds these (images/build.sh tags them with the package version)
IMAGE_LIGHT = f"dflow-simplify/light:{__version__}"
IMAGE_DEEPMD = f"dflow-simplify/deepmd:{__version__}"
IMAGE_FP = {"cp2k": f"dflow-simplify/fp-cp2k:{__version__}", "dftd3": f"dflow-simplify/fp-ase:{__version__}",
            "ase": f"dflow-simplify/fp-ase:{__version__}", "none": IMAGE_LIGHT}


def default_image(stage: str, fp_style: str, registry: str = "") -> str | None:
    """The image a stage runs in unless step_configs names one; `registry` ("reg.example.org/team/")
    is where images/build.sh --registry pushed them."""
    if stage in ("prep_train", "select_confs"):
        image = IMAGE_LIGHT
    elif stage in ("run_train", "model_devi"):
        image = IMAGE_DEEPMD
    else:
        image = IMAGE_FP.get(fp_style)  # VASP, Gaussian, ...: the user's own image (licences)
    return registry + image if image else None


def _template_args() -> list[Argument]:
    a = Argument
    return [
        a("image", str, optional=True, doc="container image of the stage"),
        a("image_pull_policy", str, optional=True),
        a("requests", dict, optional=True, doc='e.g. {"cpu": "2", "memory": "4Gi"}'),
        a("limits", dict, optional=True, doc='e.g. {"nvidia.com/gpu": "1"}'),
        a("node_selector", dict, optional=True),
        a("tolerations", list, optional=True, doc="Kubernetes tolerations (dicts)"),
        a("timeout", int, optional=True, doc="seconds before the pod is stopped"),
        a("retry_on_transient_error", int, optional=True, doc="retries of a pod that failed transiently"),
    ]


def stage_args(stage: str) -> Argument:
    a = Argument
    fields = [a("template_config", dict, sub_fields=_template_args(), optional=True, default={}),
              a("envs", dict, optional=True, default={})]
    if stage in SLICED:
        fields += [a("parallelism", int, optional=True, doc="at most this many slices at once"),
                   a("continue_on_success_ratio", [float, int], optional=True,
                     doc="the step succeeds when this share of its slices did"),
                   a("executor", dict, optional=True, doc='{"type": "dispatcher", ...DispatcherExecutor arguments}')]
    if stage == "run_fp":
        fields.append(a("group_size", int, optional=True, default=10, doc="frames per RunFP slice"))
    if stage == "model_devi":
        fields.append(a("batch_size", int, optional=True, default=256, doc="frames per inference batch"))
    return a(stage, dict, sub_fields=fields, optional=True, default={})


def step_configs_args() -> Argument:
    return Argument("step_configs", dict, sub_fields=[stage_args(s) for s in STAGES], optional=True, default={})


def check_step_configs(step_configs: dict) -> dict:
    """Normalized step_configs; ValueError naming the stage and key when something is off."""
    arg = step_configs_args()
    data = arg.normalize_value(step_configs, trim_pattern="_*")
    arg.check_value(data, strict=True)
    for stage, conf in data.items():
        for key in ("group_size", "batch_size", "parallelism"):
            if conf.get(key) is not None and conf[key] < 1:
                raise ValueError(f"step_configs.{stage}.{key}: expected a positive integer, got {conf[key]!r}")
        ratio = conf.get("continue_on_success_ratio")
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"step_configs.{stage}.continue_on_success_ratio: expected (0, 1], got {ratio}")
        if conf.get("executor") is not None:
            check_executor(conf["executor"], f"step_configs.{stage}.executor")
    return data


def _dispatcher_parameters() -> list[str]:
    from dflow.plugins.dispatcher import DispatcherExecutor

    return [p for p in inspect.signature(DispatcherExecutor.__init__).parameters if p != "self"]


def _secret_keys(node, where: str) -> list[str]:
    if isinstance(node, dict):
        found = [f"{where}.{k}" for k in node if k.lower() in ("password", "passwd", "secret", "token")]
        return found + [x for k, v in node.items() for x in _secret_keys(v, f"{where}.{k}")]
    return []


def check_executor(executor: dict, where: str) -> None:
    if executor.get("type") != "dispatcher":
        raise ValueError(f"{where}.type: expected \"dispatcher\" (dflow's DispatcherExecutor), got "
                         f"{executor.get('type')!r}")
    unknown = sorted(set(executor) - {"type"} - set(_dispatcher_parameters()))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; DispatcherExecutor takes {_dispatcher_parameters()}")
    if executor.get("private_key_file"):
        raise ValueError(f"{where}.private_key_file: dflow would upload the SSH key into the bucket; give the "
                         "dispatcher pods the key from the cluster side instead (machine_dict.remote_profile."
                         "key_filename naming a key inside the executor's image or a mounted path)")
    secrets = _secret_keys(executor, where)
    if secrets:
        raise ValueError(f"{', '.join(secrets)}: would be written into the workflow manifest; use an SSH key "
                         "(private_key_file) or the cluster's own credentials instead")


PICK_DATA_READERS = ("model_devi", "select_confs")


def pick_data_mounts(volume: dict) -> dict:
    """The volume holding pick_data (a PersistentVolumeClaim), mounted read-only where the config names it."""
    from kubernetes.client import V1PersistentVolumeClaimVolumeSource, V1Volume, V1VolumeMount

    claim = V1PersistentVolumeClaimVolumeSource(claim_name=volume["claim_name"], read_only=True)
    return {"volumes": [V1Volume(name="pick-data", persistent_volume_claim=claim)],
            "mounts": [V1VolumeMount(name="pick-data", mount_path=volume["mount_path"], read_only=True,
                                     sub_path=volume.get("sub_path") or None)]}


class StageSettings:
    """What each stage's template and step get, from step_configs and the default images."""

    def __init__(self, step_configs: dict, fp_style: str, registry: str = "", pick_volume: dict | None = None,
                 local: bool = False, pick_in_place: bool = False):
        self.local = local  # dflow's debug mode: every OP runs on this machine, nothing to mount or dispatch
        # the OPs read pick_data at its own paths (a mounted volume, or this machine): no pick_data artifact
        self.pick_in_place = pick_in_place or pick_volume is not None
        self.step_configs = step_configs
        self.fp_style = fp_style
        self.registry = registry
        self.pick_volume = pick_volume  # dflow_config.pick_data_volume: mounted where pick_data is read

    def conf(self, stage: str) -> dict:
        return self.step_configs.get(stage, {})

    def template(self, stage: str) -> dict:
        """PythonOPTemplate keyword arguments."""
        conf = self.conf(stage)
        out = {"upload_dflow": False}  # every image and the local venv have dflow installed
        tc = dict(conf.get("template_config", {}))
        image = tc.pop("image", None) or default_image(stage, self.fp_style, self.registry)
        if image:
            out["image"] = image
        out.update({k: v for k, v in tc.items() if v is not None})
        if conf.get("envs"):
            out["envs"] = conf["envs"]
        if self.pick_volume and stage in PICK_DATA_READERS and not self.local:
            out.update(pick_data_mounts(self.pick_volume))
        return out

    def step(self, stage: str) -> dict:
        """Step keyword arguments (sliced stages only)."""
        conf = self.conf(stage)
        out = {k: conf[k] for k in ("parallelism", "continue_on_success_ratio") if conf.get(k) is not None}
        if conf.get("executor") and not self.local:
            from dflow.plugins.dispatcher import DispatcherExecutor

            out["executor"] = DispatcherExecutor(**{k: v for k, v in conf["executor"].items() if k != "type"})
        return out

    def __call__(self, stage: str) -> dict:  # the TemplateConfig callable superop.py expects
        return self.template(stage)
