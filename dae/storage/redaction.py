"""Secrets never reach logs, configs or summaries: :func:`redact` scrubs them."""

from __future__ import annotations

import os
import re
from typing import Any

# ---------------------------------------------------------------- redaction

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

