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
from dflow.utils import MinioClient

from .settings import (  # noqa: F401 (the names other modules take from here)
    ARGO_KEYS,
    S3_KEYS,
    SECRET_CONFIG,
    SECRET_KEYS,
    ArgoSettingsError,
    argo_host,
    check_argo_settings,
    check_s3_settings,
    image_registry,
)


def set_argo_mode(dflow_conf: dict, s3_conf: dict) -> dict:
    """Point dflow at the Argo server and the S3 store. Returns the settings used (secrets masked)."""
    check_argo_settings(dflow_conf)
    host = argo_host(dflow_conf)
    if host is None:
        raise ArgoSettingsError("dflow_config.host: no Argo server given (nor DFLOW_HOST)")
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
    check_s3_settings(s3_conf)
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


class KeysInMemoryClient(MinioClient):
    """dflow's MinIO client, for a local run with its inputs in S3 (DFLOW_DEBUG_S3): dflow writes `s3_config`
    into every OP script it runs, and this client is written there without its keys (the OPs never reach S3
    themselves in dflow's debug mode: the steps' inputs and outputs move in this process)."""

    def __getstate__(self):
        return {"bucket_name": self.bucket_name}


@contextlib.contextmanager
def keys_in_memory():
    """The S3 keys withheld from dflow's settings and held by the storage client only; yields them for the
    calls of this side that need them (InputStager)."""
    client = KeysInMemoryClient()
    with secrets_withheld() as secrets, _replaced(s3_config, {"storage_client": client}):
        yield secrets
