"""Per-stage settings (`step_configs`, DPGEN2's shape) and the images each stage runs in by default.

    "step_configs": {"run_fp": {"template_config": {"image": "...", "requests": {"cpu": "4"}, "timeout": 7200},
                                "group_size": 10, "parallelism": 20,
                                "continue_on_success_ratio": 0.9}}

`template_config` goes to dflow's PythonOPTemplate (the pod: image, resources, node selector,
tolerations, timeout, retries), the rest to the Step (parallelism, success ratio, executor) or the OP.
RunTrain, ModelDevi and RunFP may run as batch jobs on an HPC cluster (Slurm, PBS, LSF, ...) instead of in
pods or on this machine: `"executor": {"type": "dispatcher", "machine": {...}, "resources": {...}}`
(dflow's DispatcherExecutor, dpdispatcher's Machine and Resources underneath; see workflows/dispatch.py).
"""

from __future__ import annotations

from pathlib import Path

from dargs import Argument

from dflow_simplify import __version__
from dflow_simplify.ops.shards import DEFAULT_SHARD_SIZE

from .dispatch import check_executor, make_executor

STAGES = ("prep_train", "run_train", "model_devi", "select_confs", "run_fp")
SLICED = ("run_train", "model_devi", "run_fp")  # stages that run as parallel slices
DISPATCHABLE = ("run_train", "model_devi", "run_fp")  # stages that may run as batch jobs (executor)

# images/ builds these (images/build.sh tags them with the package version)
IMAGE_LIGHT = f"dflow-simplify/light:{__version__}"
IMAGE_DEEPMD = f"dflow-simplify/deepmd:{__version__}"
IMAGE_DEEPMD_CUDA = IMAGE_DEEPMD + "-cuda"  # DEVICE=cuda images/build.sh deepmd
GPU_RESOURCE = "nvidia.com/gpu"
IMAGE_FP = {"cp2k": f"dflow-simplify/fp-cp2k:{__version__}", "dftd3": f"dflow-simplify/fp-ase:{__version__}",
            "ase": f"dflow-simplify/fp-ase:{__version__}", "none": IMAGE_LIGHT}


def wants_gpu(template_config: dict) -> bool:
    """The pod asks for NVIDIA GPUs (limits or requests of nvidia.com/gpu above 0)."""
    asked = [(template_config.get(k) or {}).get(GPU_RESOURCE, 0) for k in ("limits", "requests")]
    try:
        return any(float(a) > 0 for a in asked)
    except (TypeError, ValueError):
        raise ValueError(f"{GPU_RESOURCE}: expected a number of GPUs, got {asked}") from None


def default_image(stage: str, fp_style: str, registry: str = "", gpu: bool = False) -> str | None:
    """The image a stage runs in unless step_configs names one; `registry` ("reg.example.org/team/")
    is where images/build.sh --registry pushed them; `gpu`: the CUDA variant for the DeePMD-kit stages."""
    if stage in ("prep_train", "select_confs"):
        image = IMAGE_LIGHT
    elif stage in ("run_train", "model_devi"):
        image = IMAGE_DEEPMD_CUDA if gpu else IMAGE_DEEPMD
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
                     doc="the step succeeds when this share of its slices did")]
    if stage in DISPATCHABLE:
        fields.append(a("executor", dict, optional=True,
                        doc='a batch job through dpdispatcher: {"type": "dispatcher", "machine": {...}, "resources": '
                            '{...}, "poll_interval": 5} (README: On a Slurm cluster)'))
    if stage == "run_fp":
        fields.append(a("group_size", int, optional=True, default=10, doc="frames per RunFP slice"))
    if stage == "model_devi":
        fields += [a("batch_size", [int, type(None)], optional=True, default=None,
                     doc="frames per evaluation call (default: 256 on CPU, 4096 on a GPU, where deepmd-kit's own "
                         "automatic batch size then sizes the device's batches)"),
                   a("shard_size", int, optional=True, default=DEFAULT_SHARD_SIZE,
                     doc="frames of pick_data per ModelDevi slice (pod or job): the pool is evaluated in "
                         "shards of this many frames in parallel, up to `parallelism` at once")]
    return a(stage, dict, sub_fields=fields, optional=True, default={})


def step_configs_args() -> Argument:
    return Argument("step_configs", dict, sub_fields=[stage_args(s) for s in STAGES], optional=True, default={})


def check_step_configs(step_configs: dict) -> dict:
    """Normalized step_configs; ValueError naming the stage and key when something is off."""
    arg = step_configs_args()
    data = arg.normalize_value(step_configs, trim_pattern="_*")
    arg.check_value(data, strict=True)
    for stage, conf in data.items():
        for key in ("group_size", "batch_size", "shard_size", "parallelism"):
            if conf.get(key) is not None and conf[key] < 1:
                raise ValueError(f"step_configs.{stage}.{key}: expected a positive integer, got {conf[key]!r}")
        ratio = conf.get("continue_on_success_ratio")
        if ratio is not None and not 0 < ratio <= 1:
            raise ValueError(f"step_configs.{stage}.continue_on_success_ratio: expected (0, 1], got {ratio}")
        if conf.get("executor") is not None:
            check_executor(conf["executor"], f"step_configs.{stage}.executor")
        tc = conf.get("template_config", {})
        try:
            wants_gpu(tc)
        except ValueError as e:
            raise ValueError(f"step_configs.{stage}.template_config: {e}") from None
        for key in ("requests", "limits"):  # Kubernetes quantities are strings: {"cpu": 2} -> {"cpu": "2"}
            if tc.get(key):
                tc[key] = {name: str(q) for name, q in tc[key].items()}
    return data


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
                 local: bool = False, pick_in_place: bool = False, jobs_root: Path | None = None):
        self.local = local  # dflow's debug mode: every OP runs on this machine (or as a batch job), nothing to mount
        self.jobs_root = jobs_root  # local mode: where LocalContext batch jobs keep their files
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
        image = tc.pop("image", None) or default_image(stage, self.fp_style, self.registry, wants_gpu(tc))
        if image:
            out["image"] = image
        out.update({k: v for k, v in tc.items() if v is not None})
        if conf.get("envs"):
            out["envs"] = conf["envs"]
        if self.pick_volume and stage in PICK_DATA_READERS and not self.local:
            out.update(pick_data_mounts(self.pick_volume))
        return out

    def step(self, stage: str) -> dict:
        """Step keyword arguments: a sliced stage's parallelism and success ratio, a batch-job executor."""
        conf = self.conf(stage)
        out = {k: conf[k] for k in ("parallelism", "continue_on_success_ratio") if conf.get(k) is not None}
        if conf.get("executor"):
            out["executor"] = make_executor(conf["executor"], self.jobs_root)
        return out

    def __call__(self, stage: str) -> dict:  # the TemplateConfig callable superop.py expects
        return self.template(stage)
