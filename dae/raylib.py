"""Ray plumbing shared by the jobs: starting or joining Ray, and sizing work to the cluster.

Only the jobs, the training loop and the inference stage import this module.
"""

from __future__ import annotations

import logging
import os

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402

from . import paths, storage  # noqa: E402
from .jobutil import DASHBOARD_ENV, log_level  # noqa: E402

log = logging.getLogger("dae")

# Ray Train V2 runs a detached PlacementGroupCleaner actor that asks the State API every second
# whether the training controller is still alive, and logs this warning each time the query
# fails. The State API is served by the dashboard, which a private local Ray runs without, so every
# query fails: a 2-minute training run printed ~84 such lines. Starting the dashboard answers them
# but costs more than filtering the line out in every worker process of a local job
# (worker_process_setup_hook), which only training runs set. Measured on 2 shared CPUs, Ray 2.58, a 2-epoch
# run of jobs.train:
# ray.init 3-4 s plain or with the hook, 7-9 s with the dashboard; the whole run 26-29 s plain,
# 30-31 s with the hook (its workers start slower), 32-34 s with the dashboard. What the cleaner
# guards against, a placement group left behind by a dead controller, cannot outlive a private Ray
# that ends with its driver. Clusters (RAY_ADDRESS: ray job submit, KubeRay) run the dashboard.
_PG_CLEANER_LOGGER = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
_PG_CLEANER_NOISE = "Failed to query Ray Train Controller actor state"


def drop_pg_cleaner_noise() -> None:
    """worker_process_setup_hook of a private local Ray: drops the one warning above, and names this
    Ray for the cleaner's State API queries. They look for "the" Ray on the machine when RAY_ADDRESS is
    unset: beside a second local Ray (another job running) the cleaner's thread died with a traceback,
    "ConnectionError: Found multiple active Ray instances" (seen with a training run beside another)."""
    logging.getLogger(_PG_CLEANER_LOGGER).addFilter(lambda record: _PG_CLEANER_NOISE not in record.getMessage())
    os.environ.setdefault("RAY_ADDRESS", ray.get_runtime_context().gcs_address)


# The runtime_env of a private local Ray that trains (init_ray's, and the GPU check's own ray.init).
TRAIN_RUNTIME_ENV = {"worker_process_setup_hook": f"{__name__}.drop_pg_cleaner_noise"}

# The _system_config of a private local Ray (init_ray's, the GPU check's, the test session's). Ray kills an
# idle worker process 1 s after it goes idle once there are more workers than CPUs, and a dae job runs
# several Ray Data pipelines and task rounds in turn (scan, denoise, export; prepare; evaluate): on
# 2 CPUs every round started fresh workers, each paying Python and torch start-up again (about 3 s of
# CPU each). Measured on 2 cores, Ray 2.58, one driver running the same 24-image denoise job (pipeline
# and export) 4 times in a row: 8.3-9.4 s per run with 3 new worker processes each, against 4.2-4.9 s
# and 1 new process (the model actor's) when idle workers live 60 s. The cost is the memory of the idle
# workers (about 0.7 GB each with torch loaded), for a minute at most, on a Ray that ends with its job.
LOCAL_SYSTEM_CONFIG = {"idle_worker_killing_time_threshold_ms": 60_000}


def init_ray(address: str | None = None, num_cpus: int | None = None, training: bool = False) -> bool:
    """Join or start Ray once. Returns True when this call started it.

    Address resolution: the explicit ``address``, else ``RAY_ADDRESS`` (which ``ray job submit``
    and KubeRay set for the driver), else a fresh local Ray on this machine ("local"): a job run
    on a laptop never attaches by accident to some other cluster that happens to be running.
    """
    if ray.is_initialized():
        storage.share_with_ray()  # S3 settings for this job's workers (see dae.storage)
        return False
    address = address or os.environ.get("RAY_ADDRESS") or "local"
    # --log-level / -q of the job (dae.jobutil): Ray's own driver-side logs (Ray Data's progress
    # lines among them) follow it; below info, the workers' output is not relayed either.
    level = log_level()
    kwargs: dict = {"address": address, "log_to_driver": level <= logging.INFO, "logging_level": level}
    if address == "local":
        # --dashboard: the local dashboard on (the State API, the job's progress); off by default
        # because it slows every local start (see the measurements above).
        kwargs.update(include_dashboard=os.environ.get(DASHBOARD_ENV) == "1", num_cpus=num_cpus,
                      _system_config=LOCAL_SYSTEM_CONFIG)
        if training:  # only Train runs the cleaner; the hook's runtime env slows every worker's start
            kwargs["runtime_env"] = TRAIN_RUNTIME_ENV
    ray.init(**kwargs)
    storage.share_with_ray()
    log.info("ray: %s, resources %s", address, ray.cluster_resources())
    if address != "local":
        check_paths_on_nodes()
    return True


@ray.remote(num_cpus=0)
def _look(entries: list, probes: dict) -> dict:
    return paths.look(entries, probes)


def check_paths_on_nodes(timeout: float = 120.0) -> None:
    """dae.paths' node check: every alive node sees the job's local paths as the driver does."""
    entries, assume_shared = paths.declared()
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    if not entries or assume_shared or len(nodes) < 2:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probes = paths.write_probes(entries)
    try:
        here = paths.look(entries, probes)
        refs = [_look.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(entries, probes)
                for n in nodes]
        seen = dict(zip(nodes, ray.get(refs, timeout=timeout)))
    finally:
        for probe in probes.values():
            try:
                os.remove(probe)
            except OSError:
                pass
    paths.compare(entries, here, seen)
    log.info("paths: %d local path(s) seen alike on all %d nodes", len(entries), len(nodes))


def cluster_cpus() -> float:
    return float(ray.cluster_resources().get("CPU", 0))


def cluster_gpus() -> float:
    return float(ray.cluster_resources().get("GPU", 0))


def available_cpus() -> float:
    return float(ray.available_resources().get("CPU", 0))


def available_gpus() -> float:
    return float(ray.available_resources().get("GPU", 0))
