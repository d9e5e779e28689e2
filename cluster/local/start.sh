#!/usr/bin/env bash
# Start a multi-node Ray cluster on this machine: one head and N worker nodes, all on 127.0.0.1.
#
#   cluster/local/start.sh                       # head + 1 worker node, 1 CPU each, token auth
#   cluster/local/start.sh --workers 2 --head-cpus 2 --worker-cpus 4 --port 26379 --dashboard-port 28265
#   cluster/local/ray.sh job submit --working-dir . -- python -m jobs.train ...   # talk to it
#   cluster/local/status.sh ; cluster/local/stop.sh                              # inspect / stop it
#
# Each node is a separate `ray start` with its own --temp-dir under the cluster dir, so the nodes
# behave like separate machines (own raylet, object store, logs) that share one filesystem: a
# directory on local disk then stands in for the shared storage (NFS, s3://) of a real cluster.
#
# Options (environment variables in brackets give the defaults):
#   --workers N          worker nodes besides the head [DAE_WORKERS, 1]
#   --head-cpus N        CPUs the head offers to tasks/actors [DAE_HEAD_CPUS, 1]
#   --worker-cpus N      CPUs per worker node [DAE_WORKER_CPUS, 1]
#   --worker-gpus N      GPUs per worker node [DAE_WORKER_GPUS, 0]
#   --port P             GCS port; P+1 Ray client server, P+2+i node i's dashboard agent [DAE_RAY_PORT, 26379]
#   --dashboard-port P   dashboard / job submission HTTP port, bound to 127.0.0.1 [DAE_DASHBOARD_PORT, 28265]
#   --object-store-mb M  object store per node [DAE_OBJECT_STORE_MB, 512]
#   --dir DIR            cluster dir [DAE_CLUSTER_DIR, /tmp/dae-ray-PORT]
#   --auth token|disabled  [DAE_RAY_AUTH, token]
#   --attempts N         tries before giving up, cleaning up in between [DAE_START_ATTEMPTS, 2]
#
# Authentication: Ray 2.52+ has token auth (RAY_AUTH_MODE=token); it is off by default in 2.58, and
# Ray's gRPC servers (GCS, raylets) listen on all interfaces whatever --node-ip-address says, so
# without a token anyone who can reach this machine could run code on the cluster. With --auth token
# (the default) this script writes a random token to DIR/auth_token (mode 600) and starts every node
# with RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=DIR/auth_token; clients need the same two variables
# (cluster/local/ray.sh sets them; `cluster/local/ray.sh env` prints them for your shell).
# --auth disabled is for debugging only.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

WORKERS="${DAE_WORKERS:-1}"
HEAD_CPUS="${DAE_HEAD_CPUS:-1}"
WORKER_CPUS="${DAE_WORKER_CPUS:-1}"
WORKER_GPUS="${DAE_WORKER_GPUS:-0}"
PORT="${DAE_RAY_PORT:-26379}"
DASHBOARD_PORT="${DAE_DASHBOARD_PORT:-28265}"
OBJECT_STORE_MB="${DAE_OBJECT_STORE_MB:-512}"
AUTH="${DAE_RAY_AUTH:-token}"
ATTEMPTS="${DAE_START_ATTEMPTS:-2}"
CLUSTER_DIR=""

while [[ $# -gt 0 ]]; do
    case "$1" in
        --workers) WORKERS="$2"; shift 2 ;;
        --head-cpus) HEAD_CPUS="$2"; shift 2 ;;
        --worker-cpus) WORKER_CPUS="$2"; shift 2 ;;
        --worker-gpus) WORKER_GPUS="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --dashboard-port) DASHBOARD_PORT="$2"; shift 2 ;;
        --object-store-mb) OBJECT_STORE_MB="$2"; shift 2 ;;
        --dir) CLUSTER_DIR="$2"; shift 2 ;;
        --auth) AUTH="$2"; shift 2 ;;
        --attempts) ATTEMPTS="$2"; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done

for v in WORKERS HEAD_CPUS WORKER_CPUS WORKER_GPUS PORT DASHBOARD_PORT OBJECT_STORE_MB ATTEMPTS; do
    [[ "${!v}" =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, got '${!v}'"
done
[[ "$AUTH" == "token" || "$AUTH" == "disabled" ]] || die "--auth must be one of: token, disabled (got '$AUTH')"
(( PORT >= 1024 && PORT + 2 + WORKERS <= 65535 )) || die "--port must leave room for PORT..PORT+2+workers in 1024..65535"
(( ATTEMPTS >= 1 )) || die "--attempts must be at least 1"
(( OBJECT_STORE_MB >= 80 )) || die "--object-store-mb must be at least 80 (Ray's minimum is 75 MiB)"

CLUSTER_DIR="${CLUSTER_DIR:-$(default_cluster_dir "$PORT")}"
mkdir -p "$CLUSTER_DIR"
CLUSTER_DIR="$(cd "$CLUSTER_DIR" && pwd)"
# Unix sockets live at DIR/worker-N/session_<date>_<pid>/sockets/plasma_store: ~70 characters more,
# and Linux caps socket paths at 107.
(( ${#CLUSTER_DIR} <= 36 )) || die "cluster dir path too long for Ray's unix sockets (max 36 chars): $CLUSTER_DIR"

if [[ -n "$(cluster_pids "$CLUSTER_DIR")" ]]; then
    die "a cluster is already running from $CLUSTER_DIR; stop it first: cluster/local/stop.sh --dir $CLUSTER_DIR"
fi
for p in "$PORT" "$((PORT + 1))" "$DASHBOARD_PORT"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
        die "port $p on 127.0.0.1 is already in use; pick others with --port / --dashboard-port"
    fi
done

RAY_BIN="$(find_ray_bin)"
# Job entrypoints (`python -m jobs.train`) run with the PATH of the `ray start` that launched the
# head, so the venv's bin goes first: `python` there is the interpreter that has ray and dae.
export PATH="$(dirname "$RAY_BIN"):$PATH"
export RAY_USAGE_STATS_ENABLED=0
export DAE_RAY_CLUSTER="$CLUSTER_DIR"
# The dashboard gives each of its modules 30 s to start; on a loaded laptop or CI runner that is not
# always enough (seen here at load average 40-50 on 2 cores: MetricsHead past 30 s, and the whole
# dashboard past `ray start`'s 60 s).
export RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT="${RAY_DASHBOARD_SUBPROCESS_MODULE_WAIT_READY_TIMEOUT:-120}"
export RAY_DASHBOARD_STARTUP_TIMEOUT_S="${RAY_DASHBOARD_STARTUP_TIMEOUT_S:-180}"
# Idle worker processes live 60 s instead of Ray's 1 s once there are more workers than CPUs: a job's
# task rounds (scan, pipeline, export) then reuse warm workers instead of starting fresh ones that
# import torch again (dae.raylib.LOCAL_SYSTEM_CONFIG has the figures). The raylets read it at start.
export RAY_idle_worker_killing_time_threshold_ms="${RAY_idle_worker_killing_time_threshold_ms:-60000}"

if [[ "$AUTH" == "token" ]]; then
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$CLUSTER_DIR/auth_token"
    unset RAY_AUTH_TOKEN
    if [[ ! -s "$RAY_AUTH_TOKEN_PATH" ]]; then
        # 256 random bits, the same as `ray get-auth-token --generate` (which only writes ~/.ray/auth_token).
        (umask 077; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > "$RAY_AUTH_TOKEN_PATH")
    fi
    chmod 600 "$RAY_AUTH_TOKEN_PATH"
else
    export RAY_AUTH_MODE=disabled
    unset RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH
fi

cat > "$CLUSTER_DIR/cluster.env" <<ENV
CLUSTER_DIR='$CLUSTER_DIR'
PORT=$PORT
DASHBOARD_PORT=$DASHBOARD_PORT
WORKERS=$WORKERS
HEAD_CPUS=$HEAD_CPUS
WORKER_CPUS=$WORKER_CPUS
WORKER_GPUS=$WORKER_GPUS
AUTH=$AUTH
RAY_BIN='$RAY_BIN'
ENV

OBJ_BYTES=$(( OBJECT_STORE_MB * 1024 * 1024 ))
# Ray replaces 127.0.0.1 with the machine's routable address as the node IP; every port that is not
# pinned here is chosen at random by the OS (worker ports 0..0), so nothing collides with other Rays.
COMMON=(--node-ip-address=127.0.0.1 --min-worker-port=0 --max-worker-port=0
        --object-store-memory="$OBJ_BYTES" --disable-usage-stats)

# One attempt at the whole cluster; returns 1 (after printing why) when a node fails to come up.
start_once() {
    log "head: 127.0.0.1:$PORT, dashboard http://127.0.0.1:$DASHBOARD_PORT, $HEAD_CPUS CPU, dir $CLUSTER_DIR/head"
    if ! "$RAY_BIN" start --head "${COMMON[@]}" \
        --port="$PORT" --ray-client-server-port=$((PORT + 1)) --dashboard-agent-listen-port=$((PORT + 2)) \
        --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" --include-dashboard=true \
        --num-cpus="$HEAD_CPUS" --num-gpus=0 --resources='{"dae_head": 1}' \
        --temp-dir="$CLUSTER_DIR/head" > "$CLUSTER_DIR/head.start.log" 2>&1; then
        grep -E "ERROR|Error|error:" "$CLUSTER_DIR/head.start.log" | tail -n 5 >&2 || true
        log "ray start --head failed (log: $CLUSTER_DIR/head.start.log)"
        return 1
    fi
    local i
    for i in $(seq 1 "$WORKERS"); do
        log "worker node $i: $WORKER_CPUS CPU, $WORKER_GPUS GPU, dir $CLUSTER_DIR/worker-$i"
        if ! "$RAY_BIN" start --address="127.0.0.1:$PORT" "${COMMON[@]}" \
            --dashboard-agent-listen-port=$((PORT + 2 + i)) \
            --num-cpus="$WORKER_CPUS" --num-gpus="$WORKER_GPUS" \
            --temp-dir="$CLUSTER_DIR/worker-$i" > "$CLUSTER_DIR/worker-$i.start.log" 2>&1; then
            grep -E "ERROR|Error|error:" "$CLUSTER_DIR/worker-$i.start.log" | tail -n 5 >&2 || true
            log "ray start (worker node $i) failed (log: $CLUSTER_DIR/worker-$i.start.log)"
            return 1
        fi
    done
    # Wait until the GCS sees every node alive (a worker node registers a moment after `ray start`).
    local want=$(( WORKERS + 1 )) alive=0 deadline=$(( SECONDS + ${DAE_START_WAIT_S:-120} ))
    local -a env_args=()
    while IFS= read -r kv; do env_args+=("$kv"); done < <(client_env)
    while (( SECONDS < deadline )); do
        alive="$(env "${env_args[@]}" "$RAY_BIN" list nodes --address="http://127.0.0.1:$DASHBOARD_PORT" \
                 --filter "state=ALIVE" --format json 2>/dev/null | grep -o '"node_id"' | wc -l || true)"
        [[ "$alive" == "$want" ]] && return 0
        sleep 1
    done
    log "only ${alive:-0} of $want nodes came up alive within ${DAE_START_WAIT_S:-120}s; see logs under $CLUSTER_DIR"
    return 1
}

started_ok=0
on_exit() {
    if [[ "$started_ok" != 1 ]]; then
        log "start failed; stopping what was started (logs stay in $CLUSTER_DIR)"
        "$(dirname "${BASH_SOURCE[0]}")/stop.sh" --dir "$CLUSTER_DIR" >&2 || true
    fi
}
trap on_exit EXIT

# A loaded machine can make one of Ray's startup timeouts expire; a second attempt on a clean slate
# usually gets through (--attempts 1 to fail at once).
for attempt in $(seq 1 "$ATTEMPTS"); do
    if start_once; then
        started_ok=1
        break
    fi
    if (( attempt < ATTEMPTS )); then
        log "attempt $attempt failed; stopping its processes and trying again"
        "$(dirname "${BASH_SOURCE[0]}")/stop.sh" --dir "$CLUSTER_DIR" >&2 || die "could not clean up after attempt $attempt"
    fi
done
[[ "$started_ok" == 1 ]] || die "the cluster did not come up in $ATTEMPTS attempt(s)"

log "cluster up: $(( WORKERS + 1 )) nodes alive; processes: $(cluster_pids "$CLUSTER_DIR" | wc -l)"
echo "RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT"
echo "cluster dir: $CLUSTER_DIR   submit with: cluster/local/ray.sh --dir $CLUSTER_DIR job submit --working-dir . -- python -m jobs.NAME ..."
