"""The unit tier: no Ray started, no cluster, no S3 server (those tests are in tests/e2e)."""

import sys

import pytest


@pytest.fixture(autouse=True)
def _starts_no_ray():
    """A unit test that starts Ray fails here: it belongs in tests/e2e. (In a whole-suite run the e2e
    tier's session Ray may already be up; then only a test that started one of its own is caught.)"""
    ray = sys.modules.get("ray")
    before = ray is not None and ray.is_initialized()
    yield
    ray = sys.modules.get("ray")
    if not before and ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("this unit test started Ray: move it to tests/e2e (marked `ray`)")
