"""Fixtures of the e2e tier: one local Ray for the whole test session (ray.init costs ~3 s) and the
S3-compatible server (SeaweedFS, tests/s3server.py)."""

import os

import pytest

# Set before any Ray starts (this session's, the gpu_check subprocess's, the local cluster's), so that
# every Ray Train controller sees them. The preemption watcher is an extra actor per training run that
# polls for spot-node preemption, which no test machine has; the controller's poll of its workers,
# every 2 s by default, also decides how soon a finished run returns. Measured on 2 busy cores, a
# 2-epoch run of tests/e2e/test_train.py's model: 50-57 s -> 42-50 s.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    from dae.raylib import LOCAL_SYSTEM_CONFIG

    if not ray.is_initialized():
        # "local": always a fresh private instance, never a cluster some other process started; idle
        # workers kept as a job's own local Ray keeps them (the jobs the tests run in this process).
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _system_config=LOCAL_SYSTEM_CONFIG)
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
