"""Argo mode: settings from `dflow_config` / `dflow_s3_config` (DPGEN2's names) over `DFLOW_*` variables.

Secrets never enter a manifest: dflow writes its whole `config` (the Argo token included) and
`s3_config` (the S3 keys included) into every OP's script. The workflow is therefore built, rendered
and submitted with them blanked (`secrets_withheld`); pods get S3 access from the cluster's artifact
repository (Argo's `artifactRepositoryRef`: a ConfigMap naming a Kubernetes Secret, see helm/), and the
secrets are only used on this side: the token for Argo's API, the keys for uploads and downloads.
"""

from __future__ import annotations

import contextlib
import os

from dflow import config, s3_config

# dflow_config keys a user may set, and the DFLOW_* variables dflow itself reads for them
ARGO_KEYS = ("host", "namespace", "token", "k8s_config_file", "k8s_api_server", "service_account", "image_registry",
             "pick_data_volume")
S3_KEYS = ("endpoint", "console", "bucket_name", "access_key", "secret_key", "secure", "prefix", "repo_key", "repo")
SECRET_KEYS = ("access_key", "secret_key")  # of s3_config
SECRET_CONFIG = ("token",)  # of dflow's config


class ArgoSettingsError(ValueError):
    pass


def argo_host(dflow_conf: dict) -> str | None:
    """The Argo server this run goes to: dflow_config.host, else DFLOW_HOST; None means local mode."""
    return dflow_conf.get("host") or os.environ.get("DFLOW_HOST") or None


def image_registry(dflow_conf: dict) -> str:
    """Where the stage images live ("reg.example.org/team/"): dflow_config.image_registry, else
    DFLOW_SIMPLIFY_IMAGE_REGISTRY; empty: the bare tags images/build.sh makes."""
    registry = dflow_conf.get("image_registry") or os.environ.get("DFLOW_SIMPLIFY_IMAGE_REGISTRY") or ""
    if registry and not registry.endswith("/"):
        raise ArgoSettingsError(f"dflow_config.image_registry: expected a prefix ending with '/', got {registry!r}")
    return registry


def set_argo_mode(dflow_conf: dict, s3_conf: dict) -> dict:
    """Point dflow at the Argo server and the S3 store. Returns the settings used (secrets masked)."""
    unknown = sorted(set(dflow_conf) - set(ARGO_KEYS))
    if unknown:
        raise ArgoSettingsError(f"dflow_config: unknown key(s) {unknown}; expected some of {list(ARGO_KEYS)}")
    host = argo_host(dflow_conf)
    if not host.startswith(("http://", "https://")):
        raise ArgoSettingsError(f"dflow_config.host: expected an http(s) URL of the Argo server, got {host!r}")
    config["mode"] = "default"
    config["host"] = host.rstrip("/")
    if not os.environ.get("DFLOW_UTIL_IMAGE"):  # dflow's helper pods: our light image, not python:3.8 from a registry
        from .step_config import IMAGE_LIGHT

        config["util_image"] = image_registry(dflow_conf) + IMAGE_LIGHT
    for key in ("namespace", "token", "k8s_config_file", "k8s_api_server"):
        if dflow_conf.get(key):
            config[key] = dflow_conf[key]
    set_s3(s3_conf)
    return {"host": config["host"], "namespace": config["namespace"], "endpoint": s3_config["endpoint"],
            "bucket_name": s3_config["bucket_name"], "repo_key": s3_config["repo_key"]}


def ui_link(host: str, namespace: str, workflow_id: str) -> str:
    return f"{host.rstrip('/')}/workflows/{namespace}/{workflow_id}"


def set_s3(s3_conf: dict) -> None:
    """dflow's S3 settings from `dflow_s3_config` (over DFLOW_S3_* variables)."""
    unknown = sorted(set(s3_conf) - set(S3_KEYS))
    if unknown:
        raise ArgoSettingsError(f"dflow_s3_config: unknown key(s) {unknown}; expected some of {list(S3_KEYS)}")
    if s3_conf.get("repo_key") and not s3_conf.get("repo"):
        # dflow would read the ConfigMap from the cluster to learn the bucket's key prefix
        raise ArgoSettingsError("dflow_s3_config.repo_key needs dflow_s3_config.repo (the artifact repository, "
                                "as in the artifact-repositories ConfigMap, e.g. {\"s3\": {\"bucket\": ...}})")
    s3_config.update({k: v for k, v in s3_conf.items() if k in S3_KEYS})
    if s3_conf.get("repo"):
        s3_config["repo_type"] = "s3" if "s3" in s3_conf["repo"] else "oss"


@contextlib.contextmanager
def _replaced(settings: dict, values: dict):
    """`values` in place in one of dflow's settings dicts for the duration, the old ones back after."""
    held = {k: settings[k] for k in values}
    settings.update(values)
    try:
        yield
    finally:
        settings.update(held)


@contextlib.contextmanager
def secrets_withheld():
    """Blank the token and the S3 keys in dflow's settings (they would be written into every OP script)
    and yield them, for the calls that need them on this side."""
    saved = {k: s3_config[k] for k in SECRET_KEYS}
    saved.update({k: config[k] for k in SECRET_CONFIG})
    with _replaced(s3_config, dict.fromkeys(SECRET_KEYS)), _replaced(config, dict.fromkeys(SECRET_CONFIG)):
        yield dict(saved)


@contextlib.contextmanager
def s3_keys(secrets: dict | None):
    """The S3 keys back in place for one client-side call (an upload, a listing) while they are withheld."""
    if not secrets:
        yield
        return
    with _replaced(s3_config, {k: secrets.get(k) for k in SECRET_KEYS}):
        yield
