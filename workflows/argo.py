"""Argo mode: settings from `dflow_config` / `dflow_s3_config` (DPGEN2's names) over `DFLOW_*` variables.

Secrets never enter a manifest: dflow writes its whole `s3_config`, keys included, into every OP's
script. The workflow is therefore built and rendered with the keys blanked (`keys_withheld`); pods get
S3 access from the cluster's artifact repository (Argo's `artifactRepositoryRef`: a ConfigMap naming a
Kubernetes Secret, see helm/), and the keys are only used on this side, for uploads and downloads.
"""

from __future__ import annotations

import contextlib
import os

from dflow import config, s3_config

# dflow_config keys a user may set, and the DFLOW_* variables dflow itself reads for them
ARGO_KEYS = ("host", "namespace", "token", "k8s_config_file", "k8s_api_server", "service_account")
S3_KEYS = ("endpoint", "console", "bucket_name", "access_key", "secret_key", "secure", "prefix", "repo_key", "repo")
SECRET_KEYS = ("access_key", "secret_key")


class ArgoSettingsError(ValueError):
    pass


def argo_host(dflow_conf: dict) -> str | None:
    """The Argo server this run goes to: dflow_config.host, else DFLOW_HOST; None means local mode."""
    return dflow_conf.get("host") or os.environ.get("DFLOW_HOST") or None


def set_argo_mode(dflow_conf: dict, s3_conf: dict) -> dict:
    """Point dflow at the Argo server and the S3 store. Returns the settings used (secrets masked)."""
    unknown = sorted(set(dflow_conf) - set(ARGO_KEYS))
    if unknown:
        raise ArgoSettingsError(f"dflow_config: unknown key(s) {unknown}; expected some of {list(ARGO_KEYS)}")
    unknown = sorted(set(s3_conf) - set(S3_KEYS))
    if unknown:
        raise ArgoSettingsError(f"dflow_s3_config: unknown key(s) {unknown}; expected some of {list(S3_KEYS)}")
    host = argo_host(dflow_conf)
    if not host.startswith(("http://", "https://")):
        raise ArgoSettingsError(f"dflow_config.host: expected an http(s) URL of the Argo server, got {host!r}")
    config["mode"] = "default"
    config["host"] = host.rstrip("/")
    for key in ("namespace", "token", "k8s_config_file", "k8s_api_server"):
        if dflow_conf.get(key):
            config[key] = dflow_conf[key]
    if s3_conf.get("repo_key") and not s3_conf.get("repo"):
        # dflow would read the ConfigMap from the cluster to learn the bucket's key prefix
        raise ArgoSettingsError("dflow_s3_config.repo_key needs dflow_s3_config.repo (the artifact repository, "
                                "as in the artifact-repositories ConfigMap, e.g. {\"s3\": {\"bucket\": ...}})")
    s3_config.update({k: v for k, v in s3_conf.items() if k in S3_KEYS})
    if s3_conf.get("repo"):
        s3_config["repo_type"] = "s3" if "s3" in s3_conf["repo"] else "oss"
    return {"host": config["host"], "namespace": config["namespace"], "endpoint": s3_config["endpoint"],
            "bucket_name": s3_config["bucket_name"], "repo_key": s3_config["repo_key"]}


@contextlib.contextmanager
def keys_withheld():
    """Build and render the workflow without the S3 keys in dflow's config (they would be in every script)."""
    saved = {k: s3_config[k] for k in SECRET_KEYS}
    s3_config.update({k: None for k in SECRET_KEYS})
    try:
        yield
    finally:
        s3_config.update(saved)
