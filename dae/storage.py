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

import functools
import json
import os
import posixpath
import re
import socket
import sys
import uuid
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs


class StorageError(RuntimeError):
    """Storage is unusable for a job: missing bucket, rejected credentials, unreachable endpoint."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """A bucket or an input path that does not exist (also a FileNotFoundError)."""


# setting -> environment variables read, in order. configure() writes the first one of each.
_ENV = {
    "endpoint": ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
    "region": ("AWS_REGION", "AWS_DEFAULT_REGION"),
    "addressing": ("DAE_S3_ADDRESSING",),
    "access_key": ("AWS_ACCESS_KEY_ID",),
    "secret_key": ("AWS_SECRET_ACCESS_KEY",),
    "session_token": ("AWS_SESSION_TOKEN",),
}
_SECRET_SETTINGS = ("access_key", "secret_key", "session_token")
ADDRESSING = ("path", "virtual")
# Short connect timeout and few retries: a wrong endpoint must fail in seconds, not minutes.
CONNECT_TIMEOUT_S = 5.0
REQUEST_TIMEOUT_S = 60.0
RETRIES = 3
_KV_NAMESPACE = "dae"


def is_uri(path: str) -> bool:
    return "://" in str(path)


# ---------------------------------------------------------------- settings


def _check_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"S3 endpoint must look like http(s)://host[:port], got {redact(endpoint)!r}")
    if parts.username or parts.password:
        raise ValueError("S3 endpoint must not carry credentials; use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY")
    return endpoint.rstrip("/")


def _env_settings() -> dict[str, str]:
    out = {}
    for key, names in _ENV.items():
        for n in names:
            if os.environ.get(n):
                out[key] = os.environ[n]
                break
    return out


def _in_ray_worker():
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized():
        return None
    try:
        from ray._private.worker import global_worker
        return ray if global_worker.mode == ray.WORKER_MODE else None
    except Exception:
        return None


def _kv_key(ray) -> str:
    return f"storage.s3.{ray.get_runtime_context().get_job_id()}"


def _ray_settings() -> dict[str, str]:
    """Settings the driver of this Ray job published, when running inside one of its workers."""
    ray = _in_ray_worker()
    if ray is None:
        return {}
    try:
        from ray.experimental import internal_kv
        raw = internal_kv._internal_kv_get(_kv_key(ray), namespace=_KV_NAMESPACE)
    except Exception:
        return {}
    return json.loads(raw) if raw else {}


def settings() -> dict[str, str]:
    """The S3 settings in effect here (secrets included: never log this, use :func:`redact`)."""
    return {**_env_settings(), **_ray_settings()}


def configure(endpoint: str | None = None, region: str | None = None, addressing: str | None = None,
              access_key: str | None = None, secret_key: str | None = None,
              session_token: str | None = None) -> None:
    """Set S3 settings for this process and the Ray job's workers. None leaves a setting as it is.

    The values go to this process's environment (so a local Ray started later inherits them) and,
    when Ray is up, to the job's workers via :func:`share_with_ray`.
    """
    values = {"endpoint": endpoint, "region": region, "addressing": addressing,
              "access_key": access_key, "secret_key": secret_key, "session_token": session_token}
    if endpoint:
        values["endpoint"] = _check_endpoint(endpoint)
    if addressing and addressing not in ADDRESSING:
        raise ValueError(f"invalid S3 addressing {addressing!r}; valid: {', '.join(ADDRESSING)}")
    for key, value in values.items():
        if value:
            for n in _ENV[key]:  # every alias, so an older AWS_ENDPOINT_URL_S3 cannot shadow the flag
                os.environ[n] = value
    share_with_ray()


def add_s3_args(parser) -> None:
    """``--s3-endpoint`` / ``--s3-region`` / ``--s3-addressing`` for a job's argparse parser. Apply them
    with :func:`configure_from_args`. (No credential flags: command lines end up in shell history,
    ``ps`` and job specs; credentials come from the environment.)"""
    g = parser.add_argument_group("object storage (s3:// paths)")
    g.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3-compatible endpoint, e.g. http://minio:9000 (default: AWS_ENDPOINT_URL[_S3], else AWS)")
    g.add_argument("--s3-region", default=None, help="region (default: AWS_REGION / AWS_DEFAULT_REGION)")
    g.add_argument("--s3-addressing", default=None, choices=ADDRESSING,
                   help="bucket addressing (default: path-style with an endpoint, virtual-hosted on AWS)")


def configure_from_args(args) -> None:
    """Apply :func:`add_s3_args` flags (absent or None ones leave the environment's settings)."""
    configure(endpoint=getattr(args, "s3_endpoint", None), region=getattr(args, "s3_region", None),
              addressing=getattr(args, "s3_addressing", None))


def share_with_ray() -> bool:
    """Publish this process's S3 settings for the workers of the current Ray job (a no-op without
    Ray, or without any S3 setting). Returns True when published."""
    ray = sys.modules.get("ray")
    if ray is None or not ray.is_initialized() or _in_ray_worker() is not None:
        return False
    values = _env_settings()
    if not values:
        return False
    try:
        from ray.experimental import internal_kv
        internal_kv._internal_kv_put(_kv_key(ray), json.dumps(values), overwrite=True, namespace=_KV_NAMESPACE)
    except Exception as e:  # e.g. Ray Client: workers then rely on their own environment
        import logging
        logging.getLogger("dae").warning("could not share S3 settings with Ray workers: %s", redact(str(e)))
        return False
    return True


def worker_env() -> dict[str, str]:
    """The non-secret S3 settings as environment variables, for a ``runtime_env={"env_vars": ...}``
    where one is wanted (e.g. a KubeRay RayJob spec). Credentials are left out on purpose."""
    s = _env_settings()
    return {_ENV[k][0]: v for k, v in s.items() if k not in _SECRET_SETTINGS}


@functools.lru_cache(maxsize=16)
def _make_s3(endpoint, region, addressing, access_key, secret_key, session_token, retries,
             connect_timeout, request_timeout, allow_bucket_creation) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {
        "connect_timeout": connect_timeout, "request_timeout": request_timeout,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=retries),
        "allow_bucket_creation": allow_bucket_creation,
    }
    if endpoint:
        parts = urlsplit(endpoint)
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme
    if region:
        kwargs["region"] = region
    if addressing == "virtual":
        kwargs["force_virtual_addressing"] = True
    if access_key and secret_key:
        # Explicit keys travel with the pickled filesystem (Ray Data / Train ship it to workers);
        # left to the default chain they would be re-resolved from each worker's own environment.
        kwargs.update(access_key=access_key, secret_key=secret_key, session_token=session_token or None)
    return pafs.S3FileSystem(**kwargs)


def s3_filesystem(retries: int = RETRIES, connect_timeout: float = CONNECT_TIMEOUT_S,
                  request_timeout: float = REQUEST_TIMEOUT_S, allow_bucket_creation: bool = False,
                  **overrides: str) -> pafs.S3FileSystem:
    """An S3FileSystem from :func:`settings`, with ``overrides`` (endpoint=, access_key=, ...) on top.
    Buckets are never created by accident (a typo must fail): pass allow_bucket_creation=True to."""
    s = {**settings(), **{k: v for k, v in overrides.items() if v is not None}}
    unknown = set(s) - set(_ENV)
    if unknown:
        raise ValueError(f"unknown S3 setting(s) {sorted(unknown)}; valid: {', '.join(_ENV)}")
    if s.get("endpoint"):
        _check_endpoint(s["endpoint"])
    return _make_s3(s.get("endpoint"), s.get("region"), s.get("addressing"), s.get("access_key"),
                    s.get("secret_key"), s.get("session_token"), retries, connect_timeout, request_timeout,
                    allow_bucket_creation)


def _s3_filesystem() -> pafs.S3FileSystem:
    return s3_filesystem()


def split_s3(uri: str) -> tuple[str, str]:
    """("bucket", "key/prefix") of an s3:// URI."""
    rest = str(uri)[len("s3://"):].strip("/")
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"S3 URI without a bucket: {uri!r} (expected s3://bucket/prefix)")
    if "@" in bucket:
        raise ValueError("S3 URIs must not carry credentials (s3://KEY:SECRET@bucket); "
                         f"use AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY: {redact(uri)}")
    return bucket, key


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or URI."""
    path = str(path)
    if path.startswith("s3://"):
        bucket, key = split_s3(path)
        return _s3_filesystem(), f"{bucket}/{key}" if key else bucket
    if is_uri(path):
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner
    return pafs.LocalFileSystem(), os.path.abspath(path)


def ray_storage(path: str) -> tuple[str, pafs.FileSystem | None]:
    """(storage_path, storage_filesystem) for ``ray.train.RunConfig``: checkpoints and run state of a
    Train run then live under ``path`` (local or s3://), and a rerun with the same ``name`` resumes
    from them. The filesystem carries the endpoint and credentials to the workers."""
    if str(path).startswith("s3://"):
        fs, p = resolve(path)
        return p, fs
    if is_uri(path):
        fs, p = resolve(path)
        return p, fs
    return os.path.abspath(path), None


# ---------------------------------------------------------------- redaction

_SECRET_KEY_RE = re.compile(
    r"(^|[_-])(secret|password|passwd|token|credentials?|access_?key(_?id)?|secret_?key|api_?key|authorization)"
    r"($|[_-])", re.I)
_USERINFO_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*://)([^/@\s:]+(?::[^/@\s]*)?)@")
_ASSIGN_RE = re.compile(
    r"((?:AWS_SECRET_ACCESS_KEY|AWS_SESSION_TOKEN|AWS_ACCESS_KEY_ID|secret_key|access_key|session_token"
    r"|password|token)['\"]?\s*[=:]\s*['\"]?)([^\s'\",}]+)", re.I)
REDACTED = "***"


def _secret_values() -> list[str]:
    vals = []
    for k in _SECRET_SETTINGS:
        for n in _ENV[k]:
            v = os.environ.get(n)
            if v and len(v) >= 4:
                vals.append(v)
    return sorted(set(vals), key=len, reverse=True)


def redact(obj: Any) -> Any:
    """A copy of ``obj`` (str, dict, list, tuple, anything else unchanged) with secrets scrubbed:
    URI userinfo (``s3://key:secret@...`` -> ``s3://***@...``), values of secret-looking keys
    (secret, password, token, access_key, credential, ...), ``NAME=value`` assignments of AWS secret
    variables, and the literal values of the AWS credential variables set in this process."""
    secrets = _secret_values()

    def walk(o):
        if isinstance(o, str):
            s = _USERINFO_RE.sub(lambda m: m.group(1) + REDACTED + "@", o)
            s = _ASSIGN_RE.sub(lambda m: m.group(1) + REDACTED, s)
            for v in secrets:
                s = s.replace(v, REDACTED)
            return s
        if isinstance(o, dict):
            return {k: (REDACTED if isinstance(k, str) and _SECRET_KEY_RE.search(k) and v not in (None, "")
                        and not isinstance(v, (bool, dict, list)) else walk(v)) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return type(o)(walk(v) for v in o)
        return o

    return walk(obj)


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


def overlaps(a: str, b: str) -> bool:
    return relation(a, b) is not None


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
