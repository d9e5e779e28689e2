"""Paths and URIs through pyarrow filesystems: local paths and ``s3://bucket/prefix`` alike.

Every job reads and writes through these helpers, so a local directory and an object-store prefix
behave the same. No hand-written S3 client: ``s3://`` maps to ``pyarrow.fs.S3FileSystem``.

S3 settings (first found wins):

    endpoint     storage.configure(endpoint=...) (a job's ``--s3-endpoint`` flag), else
                 AWS_ENDPOINT_URL_S3, else AWS_ENDPOINT_URL; unset = AWS itself
    region       AWS_REGION, else AWS_DEFAULT_REGION
    addressing   DAE_S3_ADDRESSING = "path" | "virtual". Default: path-style (``http://host/bucket/key``)
                 when an endpoint is set, which is what MinIO, SeaweedFS, Ceph RGW and most
                 S3-compatible stores need; virtual-hosted (``bucket.host``) for AWS itself.
    credentials  AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, else the AWS default
                 chain (profile files, instance/pod roles) as pyarrow resolves it.

How Ray workers get them: ``configure()`` exports the settings to this process's environment (a local
Ray started afterwards inherits it) and, when Ray is up, publishes them for the current Ray job in the
GCS key-value store (:func:`share_with_ray`, also called by ``dae.raylib.init_ray``). Any worker of that
job, on any node, reads them back on its first ``s3://`` access. Secrets go there and into pickled
filesystem objects only, never into runtime_env (the dashboard shows runtime_env), logs or configs.

Object storage has no rename, so the completeness rule for outputs is: **an output is complete when
its marker object exists, and the marker is written after the data object(s)**. One
:func:`write_bytes` is one S3 upload (a single PUT, or a multipart upload completed at close), and S3
makes an object visible whole or not at all, so a reader never sees a partial object; a writer that dies
mid-upload leaves nothing (an unfinished multipart upload is invisible). Locally the same holds through
write-to-temporary + rename.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

import pyarrow.fs as pafs

from .access import check_access  # noqa: F401
from .redaction import REDACTED, redact  # noqa: F401
from .s3 import (  # noqa: F401 - the public API is dae.storage.NAME
    ADDRESSING,
    CONNECT_TIMEOUT_S,
    REQUEST_TIMEOUT_S,
    RETRIES,
    StorageError,
    StorageNotFoundError,
    add_s3_args,
    configure,
    configure_from_args,
    is_uri,
    ray_storage,
    resolve,
    s3_filesystem,
    settings,
    share_with_ray,
    split_s3,
    worker_env,
)

# ---------------------------------------------------------------- file operations


def absolute(path: str) -> str:
    """A local path made absolute (Ray workers run in another directory); URIs unchanged."""
    return path if not path or is_uri(path) else os.path.abspath(path)


def path_parts(path: str) -> tuple[str, ...]:
    """A location as comparable components: (scheme, bucket, *key parts) for URIs, else the real
    absolute local path's parts (symlinks, "..", "." and trailing slashes resolved)."""
    path = str(path)
    if path.startswith("file://"):
        path = path[len("file://"):]
    if is_uri(path):
        scheme, _, rest = path.partition("://")
        return (scheme, *[p for p in rest.split("/") if p])
    return ("", *[p for p in os.path.realpath(path).split(os.sep) if p])


def relation(a: str, b: str) -> str | None:
    """How location ``a`` stands to ``b`` on whole path components: "is", "lies inside", "contains",
    or None when they are apart (s3://b/data and s3://b/data2 are apart)."""
    x, y = path_parts(a), path_parts(b)
    if x == y:
        return "is"
    if x[:len(y)] == y:
        return "lies inside"
    if y[:len(x)] == x:
        return "contains"
    return None


def join(base: str, *parts: str) -> str:
    if is_uri(base):
        return posixpath.join(str(base).rstrip("/"), *parts)
    return os.path.join(base, *parts)


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type == pafs.FileType.Directory


def list_files(path: str, suffix: str = "", recursive: bool = False) -> list[str]:
    """Sorted files under a directory, as paths/URIs in the same form as ``path``."""
    fs, p = resolve(path)
    infos = fs.get_file_info(pafs.FileSelector(p, recursive=recursive, allow_not_found=True))
    rel = sorted(
        posixpath.relpath(i.path, p) if is_uri(path) else os.path.relpath(i.path, p)
        for i in infos
        if i.type == pafs.FileType.File and i.path.endswith(suffix)
        and not posixpath.basename(i.path).startswith((".", "_"))
    )
    return [join(path, r) for r in rel]


def read_bytes(path: str) -> bytes:
    fs, p = resolve(path)
    with fs.open_input_stream(p, compression=None) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file so a reader never sees a partial one.

    Local: written to a temporary name in the same directory, fsynced, then renamed over ``path``
    (and the directory fsynced).
    S3: one upload of ``data`` (a single PUT, or a multipart upload that is only completed at
    close); S3 shows an object whole or not at all, and an upload interrupted by a crash is never
    completed, so nothing appears. Build "is this output complete?" on a marker object written
    *after* the data (see the module docstring), never on the data object's presence alone."""
    fs, p = resolve(path)
    parent = posixpath.dirname(p) if is_uri(path) else os.path.dirname(p)
    if isinstance(fs, pafs.LocalFileSystem):
        if parent:
            fs.create_dir(parent, recursive=True)
        tmp = f"{p}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            # fsync the data before the rename and the folder after it: a marker that survives a power
            # loss must never name a part whose bytes did not
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
            _fsync_dir(parent or ".")
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    else:
        # No directories on S3: a key needs no parent. (create_dir would only add empty marker objects.)
        if not isinstance(fs, pafs.S3FileSystem) and parent:
            fs.create_dir(parent, recursive=True)
        with fs.open_output_stream(p) as f:
            f.write(data)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode())


def write_json(path: str, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def delete(path: str) -> None:
    fs, p = resolve(path)
    info = fs.get_file_info(p)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(p)
    elif info.type == pafs.FileType.File:
        fs.delete_file(p)

