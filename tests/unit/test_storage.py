"""dae.storage without a server: redaction of secrets, bad URIs and endpoints, local paths. Object
storage against a real S3-compatible server is in tests/e2e/test_s3.py."""

import os

import pytest

from dae import storage


def test_check_access_local(tmp_path):
    storage.check_access(str(tmp_path / "new" / "dir"), write=True)
    with pytest.raises(storage.StorageError, match="does not exist"):
        storage.check_access(str(tmp_path / "missing"), must_exist=True)
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(storage.StorageError, match="not a writable directory"):
        storage.check_access(str(f / "sub"), write=True)


def test_bad_uri_and_endpoint_errors():
    with pytest.raises(ValueError, match="must not carry credentials"):
        storage.resolve("s3://AKIA:topsecret@bucket/x")
    with pytest.raises(ValueError, match=r"http\(s\)://host"):
        storage.configure(endpoint="127.0.0.1:9000")
    with pytest.raises(ValueError, match="valid: path, virtual"):
        storage.configure(addressing="sideways")


def test_redact():
    r = storage.redact
    assert r("s3://AKIAXYZ:s3cr3t@bucket/x") == "s3://***@bucket/x"
    assert r("see http://user:pw@host:9000/path and s3://bucket/p") == "see http://***@host:9000/path and s3://bucket/p"
    assert r("AWS_SECRET_ACCESS_KEY=abc/def+ghi next") == "AWS_SECRET_ACCESS_KEY=*** next"
    cfg = {"data": "s3://k:v@b/d", "epochs": 3, "secret_key": "zzz", "s3_access_key_id": "AKIA",
           "max_tokens": 5, "nested": [{"password": "hunter2"}], "endpoint": "http://127.0.0.1:9000"}
    out = r(cfg)
    assert out == {"data": "s3://***@b/d", "epochs": 3, "secret_key": "***", "s3_access_key_id": "***",
                   "max_tokens": 5, "nested": [{"password": "***"}], "endpoint": "http://127.0.0.1:9000"}
    assert cfg["secret_key"] == "zzz", "redact must not modify its input"
    old = os.environ.get("AWS_SECRET_ACCESS_KEY")
    os.environ["AWS_SECRET_ACCESS_KEY"] = "live-secret-value"
    try:
        assert r({"log": "error with live-secret-value inside"}) == {"log": "error with *** inside"}
    finally:
        if old is None:
            os.environ.pop("AWS_SECRET_ACCESS_KEY")
        else:
            os.environ["AWS_SECRET_ACCESS_KEY"] = old
