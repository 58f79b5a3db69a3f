"""The keys of `dflow_config` and `dflow_s3_config` and their checks, free of dflow (config.py checks them
before any run; argo.py applies them)."""

from __future__ import annotations

import os

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


def check_argo_settings(dflow_conf: dict) -> None:
    unknown = sorted(set(dflow_conf) - set(ARGO_KEYS))
    if unknown:
        raise ArgoSettingsError(f"dflow_config: unknown key(s) {unknown}; expected some of {list(ARGO_KEYS)}")
    host = argo_host(dflow_conf)
    if host is not None and not host.startswith(("http://", "https://")):
        raise ArgoSettingsError(f"dflow_config.host: expected an http(s) URL of the Argo server, got {host!r}")
    image_registry(dflow_conf)


def check_s3_settings(s3_conf: dict) -> None:
    unknown = sorted(set(s3_conf) - set(S3_KEYS))
    if unknown:
        raise ArgoSettingsError(f"dflow_s3_config: unknown key(s) {unknown}; expected some of {list(S3_KEYS)}")
    if s3_conf.get("repo_key") and not s3_conf.get("repo"):
        # dflow would read the ConfigMap from the cluster to learn the bucket's key prefix
        raise ArgoSettingsError("dflow_s3_config.repo_key needs dflow_s3_config.repo (the artifact repository, "
                                "as in the artifact-repositories ConfigMap, e.g. {\"s3\": {\"bucket\": ...}})")
