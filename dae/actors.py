"""The model actor pools of denoise and evaluate: how many actors, with what CPUs and GPUs.

    plan = plan_actors(cpus, gpus, device="auto")   # {min_actors, max_actors, actor_cpus, ...}

Rules: the pool never takes every CPU (the read, prepare and finish tasks need one, or the pipeline
hangs without an error), a task never asks for more CPU than an actor holds, and every request
lowered to fit is said in ``notes``. Pure arithmetic: no Ray, no torch.
"""

from __future__ import annotations


def plan_actors(cpus: float, gpus: float, device: str = "auto", min_actors: int = 0, max_actors: int = 0,
                cpus_per_actor: float = 0.0, gpus_per_actor: float = 1.0) -> dict:
    """Actor pool bounds and per-actor resources that fit the cluster. 0 means automatic for
    ``min_actors`` (= the upper bound: a fixed pool), ``max_actors`` and ``cpus_per_actor``.

    The read, prepare and finish stages are Ray tasks that need CPUs too: a pool holding every CPU
    starves them and the pipeline hangs without an error (2 one-CPU actors on 2 CPUs never finish).
    So at least one CPU (half the cluster on a 1-CPU machine) stays free for them, and requests above
    what fits are lowered, with a note saying so.

    Automatic CPU pools get half the cluster's CPUs as 1-CPU, single-thread actors; the other half
    runs the read, decode, encode and write tasks (measured fastest on 2 cores: jobs.bench_denoise).
    Half, not all but one: a pool that loses a node restarts its actors on the others, and the tasks
    must still find a free CPU there. With GPUs: one actor per GPU (``gpus_per_actor`` 1), 1 CPU each.
    """
    notes = []
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"invalid device {device!r}; valid: auto, cpu, cuda")
    if device == "cuda" and gpus <= 0:
        raise ValueError("--device cuda but the Ray cluster has no GPU; valid here: auto, cpu")
    use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    if cpus <= 0:
        raise ValueError("the Ray cluster reports no CPUs")
    reserve = 1.0 if cpus >= 2 else cpus / 2
    auto = cpus_per_actor <= 0
    actor_cpus = min(1.0, cpus - reserve) if auto else float(cpus_per_actor)
    if actor_cpus > cpus - reserve:
        if not auto:
            notes.append(f"cpus_per_actor {actor_cpus:g} lowered to {cpus - reserve:g} to leave {reserve:g} CPU "
                         f"for reads on a {cpus:g}-CPU cluster")
        actor_cpus = cpus - reserve
    budget = cpus - reserve if use_gpu or not auto else max(actor_cpus, min(cpus - reserve, cpus // 2))
    cap = max(1, int(budget / actor_cpus + 1e-9))
    actor_gpus = 0.0
    if use_gpu:
        actor_gpus = float(gpus_per_actor)
        if actor_gpus <= 0 or actor_gpus > gpus:
            raise ValueError(f"gpus_per_actor must be in (0, {gpus:g}] on this cluster, got {gpus_per_actor:g}")
        cap = min(cap, max(1, int(gpus / actor_gpus + 1e-9)))
    hi = cap if max_actors <= 0 else min(max_actors, cap)
    if max_actors > cap:
        notes.append(f"max_actors {max_actors} lowered to {cap}: more would not fit the cluster "
                     f"({cpus:g} CPU, {gpus:g} GPU) next to the read tasks")
    lo = hi if min_actors <= 0 else min(min_actors, hi)
    if min_actors > hi:
        notes.append(f"min_actors {min_actors} lowered to {hi}")
    # CPU tasks (read, decode, encode, write) take at most what a CPU actor takes: with half-CPU
    # actors, a 1-CPU task may find no node with a whole CPU free once the actors of a lost node
    # restart on the others (seen: a hang after a node kill with 1-CPU tasks and half-CPU actors).
    task_cpus = 1.0 if use_gpu else min(1.0, actor_cpus)
    return {"min_actors": lo, "max_actors": hi, "actor_cpus": actor_cpus, "actor_gpus": actor_gpus,
            "task_cpus": task_cpus, "device": "cuda" if use_gpu else "cpu", "notes": notes}
