"""Paths and URIs through pyarrow filesystems: local paths and ``s3://bucket/prefix`` alike.

Every job reads and writes through these helpers, so a local directory and an object-store prefix
behave the same. S3-compatible endpoints (MinIO, SeaweedFS, Ceph, R2) come from
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``) and the usual AWS credential variables.
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

import pyarrow.fs as pafs


def is_uri(path: str) -> bool:
    return "://" in str(path)


def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    kwargs: dict[str, Any] = {}
    if endpoint:
        scheme, _, rest = endpoint.partition("://")
        kwargs["endpoint_override"] = rest if rest else endpoint
        kwargs["scheme"] = scheme if rest else "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    path = str(path)
    if path.startswith("s3://"):
        return _s3_filesystem(), path[len("s3://"):].rstrip("/")
    if is_uri(path):
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner
    return pafs.LocalFileSystem(), os.path.abspath(path)


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
    with fs.open_input_stream(p) as f:
        return f.read()


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file so a reader never sees a partial one: local files go to a temporary
    name and are renamed; an S3 object only appears once its upload completes."""
    fs, p = resolve(path)
    parent = posixpath.dirname(p) if is_uri(path) else os.path.dirname(p)
    if parent:
        fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{p}.tmp-{os.getpid()}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, p)
    else:
        with fs.open_output_stream(p) as f:
            f.write(data)


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
