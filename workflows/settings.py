"""The keys of `dflow_config` and `dflow_s3_config` and their checks, free of dflow (config.py checks them
before any run; argo.py applies them)."""

from __future__ import annotations

import os

SECRET_KEYS = ("access_key", "secret_key")  # of s3_config
SECRET_CONFIG = ("token",)  # of dflow's config


# dflow_config and dflow_s3_config keys a user may set (the DFLOW_* variables dflow reads set them otherwise), with
# the type of each one's value (pick_data_volume's contents are checked by config.py)
ARGO_TYPES = {"host": str, "namespace": str, "token": str, "k8s_config_file": str, "k8s_api_server": str,
              "service_account": str, "image_registry": str, "pick_data_volume": dict}
S3_TYPES = {"endpoint": str, "console": str, "bucket_name": str, "access_key": str, "secret_key": str, "secure": bool,
            "prefix": str, "repo_key": str, "repo": dict}
ARGO_KEYS, S3_KEYS = tuple(ARGO_TYPES), tuple(S3_TYPES)
URL_KEYS = ("host", "k8s_api_server", "endpoint", "console")  # where user:password@ would be a secret in plain view
TYPE_NAMES = {str: "a string", bool: "true or false", dict: "an object"}


class ArgoSettingsError(ValueError):
    pass


def _check_types(section: str, conf: dict, types: dict) -> None:
    """Each value of the type its key takes (null: unset), and no credentials written into a URL."""
    for key, value in conf.items():
        want = types[key]
        if value is not None and (type(value) is not want):  # not isinstance: True is no string, 1 no bool
            raise ArgoSettingsError(f"{section}.{key}: expected {TYPE_NAMES[want]}, got {value!r}")
        if key in URL_KEYS and isinstance(value, str) and _has_userinfo(value):
            where = ("dflow_s3_config.access_key/secret_key, or DFLOW_S3_ACCESS_KEY/DFLOW_S3_SECRET_KEY from the "
                     "Secret the Helm chart makes (its install notes print the commands)") if section.endswith("s3_config") \
                else "dflow_config.token (or DFLOW_TOKEN)"
            raise ArgoSettingsError(f"{section}.{key}: holds a user name and password (user:password@); they would be "
                                    f"written into the rendered manifest and the run's record. Give the URL without "
                                    f"them and the credentials as {where}")


def _has_userinfo(url: str) -> bool:
    from urllib.parse import urlsplit

    netloc = urlsplit(url if "://" in url else "//" + url).netloc
    return "@" in netloc


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
    _check_types("dflow_config", dflow_conf, ARGO_TYPES)
    host = argo_host(dflow_conf)
    if host is not None and not host.startswith(("http://", "https://")):
        raise ArgoSettingsError(f"dflow_config.host: expected an http(s) URL of the Argo server, got {host!r}")
    image_registry(dflow_conf)


def check_s3_settings(s3_conf: dict) -> None:
    unknown = sorted(set(s3_conf) - set(S3_KEYS))
    if unknown:
        raise ArgoSettingsError(f"dflow_s3_config: unknown key(s) {unknown}; expected some of {list(S3_KEYS)}")
    _check_types("dflow_s3_config", s3_conf, S3_TYPES)
    if s3_conf.get("repo_key") and not s3_conf.get("repo"):
        # dflow would read the ConfigMap from the cluster to learn the bucket's key prefix
        raise ArgoSettingsError("dflow_s3_config.repo_key needs dflow_s3_config.repo (the artifact repository, "
                                "as in the artifact-repositories ConfigMap, e.g. {\"s3\": {\"bucket\": ...}})")
