"""Workflow inputs as artifacts: local paths uploaded once under a content-hash key, or `s3://` URIs.

pick_data may already be in the bucket (`s3://<bucket>/<prefix>`, deepmd/npy systems or deepmd/hdf5 files
under the prefix): the config check then reads only its index (`fetch_index`: the index files; of an HDF5
file, through ranged reads, its types and array shapes), and the workflow refers to the prefix as is (plus a
one-item dflow catalog), so the data set is never downloaded or re-uploaded here.

Local mode hands dflow the paths (`upload_artifact` links them). On Argo, each input (pick_data, the
iteration-0 models, init data, FP input files) goes to `<prefix>simplify-inputs/<sha256>` in the bucket,
unless that input's upload completed before (a marker object says so): an unchanged input is never
uploaded twice. `render` only computes the keys (nothing is contacted), for `--render`.
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
from pathlib import Path

from dflow import S3Artifact, config, s3_config, upload_artifact

from .argo import s3_keys
from .config import is_s3_uri

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


def s3_key(uri: str) -> str:
    """`s3://bucket/key` -> key (the bucket must be the workflow's: Argo's artifact repository)."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    if bucket != s3_config["bucket_name"]:
        raise ValueError(f"{uri}: expected an object in the workflow's bucket {s3_config['bucket_name']!r}")
    return key


class S3Unavailable(RuntimeError):
    """An input could not be uploaded or checked in the bucket; the message names the endpoint."""


class InputStager:
    """Turns the workflow's inputs into artifacts; records what it uploaded (for the tests and the log)."""

    def __init__(self, render: bool = False, secrets: dict | None = None, local: bool = False):
        self.local = local  # dflow's debug mode with its inputs on this machine (not DFLOW_DEBUG_S3)
        self.render = render
        self.secrets = secrets  # S3 keys, when the workflow is built with them withheld
        self.uploaded: list[str] = []
        self.reused: list[str] = []

    def __call__(self, paths: list[str] | str, items: list[str] | None = None):
        """`items`: for an s3:// prefix, the sub-paths that make the list an OP receives (default: the prefix)."""
        paths = [paths] if isinstance(paths, str) else list(paths)
        if self.local:
            return upload_artifact(paths)
        try:
            return self._to_s3(paths, items)
        except Exception as e:  # the S3 client's errors (endpoint down, keys refused): one line, not a traceback
            raise S3Unavailable(f"S3 at {s3_config['endpoint']} (bucket {s3_config['bucket_name']!r}): "
                                f"{type(e).__name__}: {str(e)[:300]}") from e

    def _to_s3(self, paths: list[str], items: list[str] | None):
        if len(paths) == 1 and is_s3_uri(paths[0]):
            if not self.render:
                with s3_keys(self.secrets):
                    ensure_catalog(paths[0], items or ["."])
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


# pick_data at an s3:// URI: what the config check needs without fetching the frames
INDEX_FILES = ("type.raw", "type_map.raw", "box.npy")  # types and cells: checks and frame counts
LABEL_FILES = ("energy.npy", "force.npy")  # only their presence is checked
ROOT_CATALOG = "simplify-catalog"


def _prefix(uri: str) -> str:
    return s3_key(uri).rstrip("/") + "/"


class S3ObjectReader(io.RawIOBase):
    """One object in the bucket as a read-only, seekable file: every read is a ranged GET, so that h5py reads
    the few blocks it needs of a large HDF5 file (wrap it in io.BufferedReader)."""

    def __init__(self, client, bucket: str, key: str):
        self._client, self._bucket, self._key = client, bucket, key
        self._size = client.stat_object(bucket, key).size
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._pos = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence] + offset
        return self._pos

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self._size - self._pos)
        if n <= 0:
            return 0
        response = self._client.get_object(self._bucket, self._key, offset=self._pos, length=n)
        try:
            data = response.read()
        finally:
            response.close()
            response.release_conn()
        buffer[:len(data)] = data
        self._pos += len(data)
        return len(data)


H5_INDEX = ("type.raw", "type_map.raw", "nopbc")  # copied; every other dataset only declared (shape, dtype)


def h5_index(source, dest: Path) -> None:
    """A stand-in of a deepmd/hdf5 file for the checks: its groups, types and element names, and every set
    array declared with its shape and dtype but no data (HDF5 allocates nothing for it)."""
    import h5py

    with h5py.File(source, "r") as src, h5py.File(dest, "w") as out:
        def copy(name, obj):
            if isinstance(obj, h5py.Group):
                out.require_group(name)
            elif name.rsplit("/", 1)[-1] in H5_INDEX:
                out.create_dataset(name, data=obj[()])
            else:
                out.create_dataset(name, shape=obj.shape, dtype=obj.dtype)

        src.visititems(copy)


def fetch_index(uri: str, rels: list[str], dest: Path) -> None:
    """Mirror the index files among `rels` (the prefix's listing, `list_keys`) into `dest`, label arrays
    as empty placeholders, HDF5 files as `h5_index` stand-ins. Reads a few bytes per frame (box.npy) of npy
    systems, the metadata blocks of HDF5 files."""
    from dflow.utils import MinioClient

    from dflow_simplify.ops.data import H5_SUFFIXES

    client, prefix = MinioClient(), _prefix(uri)
    for rel in rels:
        name, target = rel.rsplit("/", 1)[-1], dest / rel
        if name.endswith(H5_SUFFIXES):
            target.parent.mkdir(parents=True, exist_ok=True)
            reader = io.BufferedReader(S3ObjectReader(client.client, client.bucket_name, prefix + rel), 1 << 16)
            h5_index(reader, target)
        elif name in INDEX_FILES or name in LABEL_FILES:
            target.parent.mkdir(parents=True, exist_ok=True)
            if name in INDEX_FILES:
                client.download(prefix + rel, str(target))
            else:
                target.touch()


def list_keys(uri: str) -> list[str]:
    """Every object under the prefix `uri`, relative to it (dflow's catalogs left out)."""
    from dflow.utils import MinioClient

    prefix, catalogs = _prefix(uri), f"/{config['catalog_dir_name']}/"
    rels = [k[len(prefix):] for k in MinioClient().list(prefix, recursive=True)]
    return [r for r in rels if catalogs not in "/" + r]


def ensure_catalog(uri: str, items: list[str]) -> None:
    """dflow hands an OP a list of paths only if the artifact carries its catalog (`.dflow/`): data put
    into the bucket by other means gets one naming `items` (sub-paths of the prefix, "." for itself)."""
    from dflow.utils import MinioClient

    catalog_dir = f"{_prefix(uri)}{config['catalog_dir_name']}/"
    body = json.dumps({"path_list": [{"dflow_list_item": item, "order": i} for i, item in enumerate(items)]})
    ours = catalog_dir + ROOT_CATALOG
    existing = MinioClient().list(catalog_dir)
    if ours in existing:
        with tempfile.TemporaryDirectory() as tmp:
            MinioClient().download(ours, str(Path(tmp, "c")))
            if json.loads(Path(tmp, "c").read_text()) != json.loads(body):
                raise ValueError(f"{uri} was used before with other sub-folders ({ours}); copy the data to "
                                 "its own prefix or delete that object")
        return
    if not existing:  # else uploaded by dflow, with its own catalog
        put_text(ours, body)


def put_text(key: str, text: str) -> None:
    """A small object (a marker, a catalog) written to `key`."""
    from dflow.utils import upload_s3

    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "object").write_text(text)
        upload_s3(str(Path(tmp, "object")), key=key)


def _marker(digest: str) -> str:
    """Written after the last file of an input, so that an interrupted upload is not taken as done."""
    return f"{s3_config['prefix']}{INPUT_PREFIX}complete/{digest}"


def upload_complete(digest: str) -> bool:
    from dflow.utils import MinioClient

    return _marker(digest) in MinioClient().list(prefix=_marker(digest))


def mark_complete(digest: str) -> None:
    put_text(_marker(digest), digest)
