"""Fail fast, before any work, when a path or bucket cannot be used (:func:`check_access`)."""

from __future__ import annotations

import os
import socket
import uuid
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from .redaction import redact
from .s3 import StorageError, StorageNotFoundError, is_uri, resolve, s3_filesystem, settings, split_s3

# ---------------------------------------------------------------- access checks


def _endpoint_of(fs_settings: dict) -> str:
    if fs_settings.get("endpoint"):
        return fs_settings["endpoint"]
    region = fs_settings.get("region") or "us-east-1"
    return f"https://s3.{region}.amazonaws.com"


def _classify(err: Exception, bucket: str, endpoint: str, what: str) -> StorageError:
    text = str(err)
    up = text.upper()
    if any(s in up for s in ("NETWORK_CONNECTION", "CURLCODE", "COULDN'T CONNECT", "COULD NOT CONNECT",
                              "CONNECTION REFUSED", "TIMED OUT", "TIMEOUT", "RESOLVE HOST")):
        return StorageError(f"cannot reach endpoint {endpoint} ({what}): {redact(text)}")
    if any(s in up for s in ("ACCESS_DENIED", "ACCESSDENIED", "INVALID_ACCESS_KEY", "INVALIDACCESSKEY",
                              "SIGNATURE_DOES_NOT_MATCH", "SIGNATUREDOESNOTMATCH", "FORBIDDEN", "403")):
        return StorageError(
            f"credentials rejected by endpoint {endpoint} for bucket '{bucket}' ({what}): check "
            f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY and the bucket's permissions ({redact(text)})")
    if "NO_SUCH_BUCKET" in up or "NOSUCHBUCKET" in up or ("NOT FOUND" in up and "BUCKET" in up):
        return StorageNotFoundError(f"bucket '{bucket}' does not exist at endpoint {endpoint}")
    return StorageError(f"{what} failed on bucket '{bucket}' at endpoint {endpoint}: {redact(text)}")


def _tcp_probe(endpoint: str, timeout: float) -> None:
    parts = urlsplit(endpoint)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise StorageError(f"cannot reach endpoint {endpoint}: {e.strerror or e}") from None


def check_access(path: str, write: bool = False, must_exist: bool = False, timeout: float = 3.0) -> None:
    """Fail fast, before any work, when ``path`` cannot be used: raises StorageError naming the cause
    (unreachable endpoint, missing bucket, rejected credentials, unwritable directory).

    Read access: the bucket exists and can be listed (with ``must_exist``, ``path`` itself exists).
    Write access: additionally a small probe object is written under ``path`` and deleted again.
    Local paths: ``must_exist`` / writability of the directory. One attempt, short timeouts."""
    path = str(path)
    if not path.startswith("s3://"):
        _check_local(path, write, must_exist)
        return
    bucket, key = split_s3(path)
    s = settings()
    endpoint = _endpoint_of(s)
    if s.get("endpoint"):
        _tcp_probe(endpoint, timeout)
    fs = s3_filesystem(retries=1, connect_timeout=timeout, request_timeout=max(timeout, 10.0))
    try:
        info = fs.get_file_info(bucket)
    except OSError as e:
        raise _classify(e, bucket, endpoint, "HeadBucket") from None
    if info.type == pafs.FileType.NotFound:
        raise StorageNotFoundError(f"bucket '{bucket}' does not exist at endpoint {endpoint}")
    inner = f"{bucket}/{key}" if key else bucket
    try:
        # Listing proves read permission (HeadBucket alone can succeed without it).
        fs.get_file_info(pafs.FileSelector(inner, recursive=False, allow_not_found=True))
        found = fs.get_file_info(inner).type != pafs.FileType.NotFound
    except OSError as e:
        raise _classify(e, bucket, endpoint, "list") from None
    if must_exist and not found:
        raise StorageNotFoundError(f"{path} does not exist (bucket '{bucket}' at endpoint {endpoint})")
    if write:
        probe = f"{inner}/.dae-write-check-{uuid.uuid4().hex[:12]}"
        try:
            with fs.open_output_stream(probe) as f:
                f.write(b"ok")
            fs.delete_file(probe)
        except OSError as e:
            raise _classify(e, bucket, endpoint, "write") from None


def _check_local(path: str, write: bool, must_exist: bool) -> None:
    if is_uri(path):
        try:
            fs, p = resolve(path)
            info = fs.get_file_info(p)
        except Exception as e:
            raise StorageError(f"cannot access {redact(path)}: {redact(str(e))}") from None
        if must_exist and info.type == pafs.FileType.NotFound:
            raise StorageNotFoundError(f"{redact(path)} does not exist")
        return
    p = os.path.abspath(path)
    if must_exist and not os.path.exists(p):
        raise StorageNotFoundError(f"{path} does not exist")
    if write:
        d = p
        while not os.path.exists(d):
            d = os.path.dirname(d)
        if not os.path.isdir(d) or not os.access(d, os.W_OK | os.X_OK):
            raise StorageError(f"cannot write under {path}: {d} is not a writable directory")

