"""Ray plumbing shared by the jobs: starting or joining Ray, and sizing work to the cluster.

Only the jobs, the training loop and the inference stage import this module.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from . import storage  # noqa: E402

log = logging.getLogger("dae")


def init_ray(address: str | None = None, num_cpus: int | None = None) -> bool:
    """Join or start Ray once. Returns True when this call started it.

    Address resolution: the explicit ``address``, else ``RAY_ADDRESS`` (which ``ray job submit``
    and KubeRay set for the driver), else a fresh local Ray on this machine ("local"): a job run
    on a laptop never attaches by accident to some other cluster that happens to be running.
    """
    if ray.is_initialized():
        storage.share_with_ray()  # S3 settings for this job's workers (see dae.storage)
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict = {"address": address, "log_to_driver": True}
    if address == "local":
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    ray.init(**kwargs)
    storage.share_with_ray()
    log.info("ray: %s, resources %s", address, ray.cluster_resources())
    return True


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def available_cpus() -> float:
    return float(ray.available_resources().get("CPU", 0))


def available_gpus() -> float:
    return float(ray.available_resources().get("GPU", 0))
