"""Fixtures of the e2e tier: one local Ray for the whole test session (ray.init costs ~3 s) and the
S3-compatible server (SeaweedFS, tests/s3server.py)."""

import pytest


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        # "local": always a fresh private instance, never a cluster some other process started.
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# ---- S3-compatible server (SeaweedFS) for the S3 tests; see tests/s3server.py
_S3 = []  # the running server, so a failing test's report can show what the server said


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from s3server import S3Server, S3ServerUnavailable

    try:
        srv = S3Server.start(str(tmp_path_factory.mktemp("seaweedfs")))
    except S3ServerUnavailable as e:
        pytest.skip(f"S3 server (SeaweedFS) cannot start here: {e}")
    _S3.append(srv)
    try:
        yield srv
    finally:
        _S3.remove(srv)
        srv.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # A server-side error reaches the client as a bare INTERNAL_FAILURE; the cause is in weed's log.
    report = (yield).get_result()
    if report.failed and _S3 and "s3_server" in getattr(item, "fixturenames", ()):
        report.sections.append(("SeaweedFS log (last lines)", _S3[0].log_tail(4000)))
