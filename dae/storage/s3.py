"""S3 settings, credentials and filesystems: where ``s3://`` goes, and how Ray workers learn it (see
:mod:`dae.storage`)."""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any
from urllib.parse import urlsplit

import pyarrow.fs as pafs

from .redaction import _ENV, _SECRET_SETTINGS, redact


class StorageError(RuntimeError):
    """Storage is unusable for a job: missing bucket, rejected credentials, unreachable endpoint."""


class StorageNotFoundError(StorageError, FileNotFoundError):
    """A bucket or an input path that does not exist (also a FileNotFoundError)."""


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

