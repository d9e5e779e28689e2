"""Cluster sizing for a training run (driver side): how many CPUs each worker gets and how many torch
threads it runs, from the live nodes.

    res = plan_resources(workers=2, gpus_per_worker=0.0, cpus_per_worker=0.0)
    # {"cpus_per_worker": 1.0, "gpus_per_worker": 0.0, "torch_threads": 1, "cluster": "2 CPU/0 GPU"}

Rule it keeps: a run whose workers cannot all be placed fails at once, naming the nodes (Ray Train
would otherwise wait for the resources forever).
"""

from __future__ import annotations

import logging
import math

log = logging.getLogger("dae")


def plan_resources(workers: int, gpus_per_worker: float, cpus_per_worker: float, reserve_cpus: float = 0.0) -> dict:
    """CPUs per worker and torch threads, sized from the live nodes; raises when ``workers`` cannot
    all be placed (Ray Train would otherwise wait for them forever)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    node_cpus = [float(r.get("CPU", 0)) for r in nodes]
    node_gpus = [float(r.get("GPU", 0)) for r in nodes]
    total_cpus = sum(node_cpus)

    def capacity(cpu: float) -> int:  # workers that fit, node by node (a worker cannot span nodes)
        fits = 0
        for c, g in zip(node_cpus, node_gpus):
            k = math.floor(c / cpu + 1e-9) if cpu > 0 else workers
            if gpus_per_worker > 0:
                k = min(k, math.floor(g / gpus_per_worker + 1e-9))
            fits += k
        return fits

    where = ", ".join(f"{c:g} CPU/{g:g} GPU" for c, g in zip(node_cpus, node_gpus))
    if gpus_per_worker > 0 and capacity(0) < workers:
        raise RuntimeError(f"cannot place {workers} workers with {gpus_per_worker:g} GPU each: the cluster's nodes "
                           f"have {where}; lower --workers or --gpus-per-worker")
    if cpus_per_worker > 0:
        cpu = cpus_per_worker
    else:
        # The largest share that still places every worker, leaving reserve_cpus for Ray Data tasks.
        cpu = max(total_cpus - reserve_cpus, 0) / workers
        if gpus_per_worker > 0:
            cpu = min(cpu, 8.0)  # a GPU worker needs a few CPUs to feed it, not the whole node
        cpu = math.floor(cpu * 100) / 100
        while cpu >= 0.1 and capacity(cpu) < workers:
            cpu = math.floor(cpu * 0.9 * 100) / 100
    if cpu < 0.1 or capacity(cpu) < workers:
        raise RuntimeError(f"cannot place {workers} workers x {cpu:g} CPU on this cluster (nodes: {where}); "
                           f"lower --workers or --cpus-per-worker")
    free = float(ray.available_resources().get("CPU", 0))
    if free + 1e-9 < workers * cpu:
        log.warning("only %.2f CPUs are free now (%g needed): the workers will wait for other work to finish",
                    free, workers * cpu)
    return {"cpus_per_worker": cpu, "gpus_per_worker": gpus_per_worker, "torch_threads": max(1, int(cpu)),
            "cluster": where}
