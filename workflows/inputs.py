"""Workflow inputs as artifacts: local paths uploaded once under a content-hash key, or `s3://` URIs.

Local mode hands dflow the paths (`upload_artifact` links them). On Argo, each input (pick_data, the
iteration-0 models, init data, FP input files) goes to `<prefix>simplify-inputs/<sha256>` in the bucket,
unless that input's upload completed before (a marker object says so): an unchanged input is never
uploaded twice. `render` only computes the keys (nothing is contacted), for `--render`.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

from dflow import S3Artifact, config, s3_config, upload_artifact

from .argo import s3_keys

INPUT_PREFIX = "simplify-inputs/"


def content_hash(paths: list[str]) -> str:
    """sha256 over the relative paths and bytes of every file under `paths`, in a fixed order."""
    h = hashlib.sha256()
    for i, top in enumerate(paths):
        top = Path(top)
        files = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        h.update(f"#{i}:{top.name}\n".encode())
        for f in files:
            h.update(f"{f.relative_to(top.parent)}\n".encode())
            with open(f, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()


def is_s3_uri(value: str) -> bool:
    return isinstance(value, str) and value.startswith("s3://")


def s3_key(uri: str) -> str:
    """`s3://bucket/key` -> key (the bucket must be the workflow's: Argo's artifact repository)."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if bucket != s3_config["bucket_name"]:
        raise ValueError(f"{uri}: expected an object in the workflow's bucket {s3_config['bucket_name']!r}")
    return key


class InputStager:
    """Turns the workflow's inputs into artifacts; records what it uploaded (for the tests and the log)."""

    def __init__(self, render: bool = False, secrets: dict | None = None):
        self.render = render
        self.secrets = secrets  # S3 keys, when the workflow is built with them withheld
        self.uploaded: list[str] = []
        self.reused: list[str] = []

    def __call__(self, paths: list[str] | str):
        paths = [paths] if isinstance(paths, str) else list(paths)
        if config["mode"] == "debug" and not config.get("debug_s3"):
            return upload_artifact(paths)
        if len(paths) == 1 and is_s3_uri(paths[0]):
            return S3Artifact(key=s3_key(paths[0]))
        digest = content_hash(paths)
        key = f"{s3_config['prefix']}{INPUT_PREFIX}{digest}"
        if not self.render:
            with s3_keys(self.secrets):
                if upload_complete(digest):
                    self.reused.append(key)
                else:
                    upload_artifact(paths, archive=None, key=key)
                    mark_complete(digest)
                    self.uploaded.append(key)
        return S3Artifact(key=key)


def _marker(digest: str) -> str:
    """Written after the last file of an input, so that an interrupted upload is not taken as done."""
    return f"{s3_config['prefix']}{INPUT_PREFIX}complete/{digest}"


def upload_complete(digest: str) -> bool:
    from dflow.utils import MinioClient

    return _marker(digest) in MinioClient().list(prefix=_marker(digest))


def mark_complete(digest: str) -> None:
    from dflow.utils import upload_s3

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "complete").write_text(digest)
        upload_s3(str(Path(tmp, "complete")), key=_marker(digest))
