# Shared settings and helpers for the local multi-node cluster scripts (sourced, not run).
#
# One cluster = one directory (default /tmp/dae-ray-PORT) holding:
#   cluster.env   the settings it was started with (read back by stop.sh / status.sh / ray.sh)
#   auth_token    the cluster's token (mode 600) when auth is "token"
#   head/, worker-N/   each node's --temp-dir (sessions, logs, sockets, spilled objects)
#
# Every process of the cluster carries DAE_RAY_CLUSTER=<cluster dir> in its environment (Ray's
# processes inherit it from `ray start`; job drivers inherit it from the job supervisor). stop.sh
# finds the cluster's processes by that marker, so it never touches other Ray instances on the
# machine: `ray stop` would kill every Ray process of the user, including other tests' private Rays.

set -euo pipefail

DAE_REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

die() { echo "error: $*" >&2; exit 2; }
log() { echo "[dae-cluster] $*" >&2; }

# The ray CLI: $DAE_RAY_BIN, else the repo's venv, else `ray` on PATH.
find_ray_bin() {
    if [[ -n "${DAE_RAY_BIN:-}" ]]; then
        echo "$DAE_RAY_BIN"
    elif [[ -x "$DAE_REPO_ROOT/.venv/bin/ray" ]]; then
        echo "$DAE_REPO_ROOT/.venv/bin/ray"
    elif command -v ray >/dev/null 2>&1; then
        command -v ray
    else
        die "no ray CLI found: set DAE_RAY_BIN or create the venv (make venv)"
    fi
}

# Resolve the cluster directory from --dir DIR, or --port PORT (default dir /tmp/dae-ray-PORT),
# or $DAE_CLUSTER_DIR, or the default port 26379.
default_cluster_dir() {
    local port="${1:-${DAE_RAY_PORT:-26379}}"
    echo "${DAE_CLUSTER_DIR:-${TMPDIR:-/tmp}/dae-ray-$port}"
}

# The options that pick a cluster, shared by ray.sh and status.sh: --dir DIR, --port P, -h.
# Sets CLUSTER_DIR and leaves the arguments after them in REST_ARGS.
select_cluster() {
    local dir="" port=""
    REST_ARGS=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dir) dir="$2"; shift 2 ;;
            --port) port="$2"; shift 2 ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
            *) REST_ARGS=("$@"); break ;;
        esac
    done
    CLUSTER_DIR="${dir:-$(default_cluster_dir "$port")}"
}

load_cluster_env() {
    local dir="$1"
    [[ -f "$dir/cluster.env" ]] || die "no cluster at $dir (missing $dir/cluster.env); start one with cluster/local/start.sh"
    # shellcheck disable=SC1091
    source "$dir/cluster.env"
}

# Environment a client (ray job submit / ray status) needs to reach this cluster.
client_env() {
    echo "RAY_API_SERVER_ADDRESS=http://127.0.0.1:$DASHBOARD_PORT"
    echo "RAY_USAGE_STATS_ENABLED=0"
    if [[ "$AUTH" == "token" ]]; then
        echo "RAY_AUTH_MODE=token"
        echo "RAY_AUTH_TOKEN_PATH=$CLUSTER_DIR/auth_token"
    else
        echo "RAY_AUTH_MODE=disabled"
    fi
}

# PIDs of this cluster's live processes (zombies excluded), one per line. A process belongs to the
# cluster when its environment holds DAE_RAY_CLUSTER=<dir> exactly, or its command line names a
# path inside the cluster dir, or it descends from such a process. The last rule matters: Ray's
# agents and dashboard modules rewrite their title over both argv and environ (setproctitle), so
# /proc shows neither the marker nor the path for them; they are children of a raylet/dashboard.
cluster_pids() {
    local dir="$1" p pp d
    local -A skip=() parent=() mine=()
    local -a recs
    # Never match this shell or its ancestors (a caller may carry the marker in its environment).
    p="${BASHPID:-$$}"
    while [[ -n "$p" && "$p" != "0" && "$p" != "1" ]]; do
        skip[$p]=1
        read_stat "$p"; p="$STAT_PPID"
    done
    skip[$$]=1
    # Bash builtins only in this loop (no fork per process): it runs over every process.
    for d in /proc/[0-9]*; do
        p="${d#/proc/}"
        [[ -n "${skip[$p]:-}" ]] && continue
        read_stat "$p"
        # A zombie (Z) or dead (X) process holds no ports or files; its parent reaps it.
        [[ -z "$STAT_STATE" || "$STAT_STATE" == "Z" || "$STAT_STATE" == "X" ]] && continue
        parent[$p]="$STAT_PPID"
        # NUL-separated records: one variable / one argument each.
        recs=()
        { mapfile -d "" -t recs < "$d/environ"; } 2>/dev/null || true
        for r in "${recs[@]}"; do [[ "$r" == "DAE_RAY_CLUSTER=$dir" ]] && { mine[$p]=1; break; }; done
        [[ -n "${mine[$p]:-}" ]] && continue
        recs=()
        { mapfile -d "" -t recs < "$d/cmdline"; } 2>/dev/null || true
        for r in "${recs[@]}"; do [[ "$r" == *"$dir/"* ]] && { mine[$p]=1; break; }; done
    done
    # Descendants of the cluster's processes (repeat until no new one: a few levels at most).
    local grew=1
    while [[ "$grew" == 1 ]]; do
        grew=0
        for p in "${!parent[@]}"; do
            pp="${parent[$p]}"
            if [[ -z "${mine[$p]:-}" && -n "$pp" && -n "${mine[$pp]:-}" ]]; then
                mine[$p]=1
                grew=1
            fi
        done
    done
    for p in "${!mine[@]}"; do echo "$p"; done | sort -n
}

# Parse /proc/PID/stat into STAT_STATE, STAT_PPID, STAT_START (start time in clock ticks since
# boot); all empty when the process is gone. The command name (field 2) may hold spaces and ')'.
read_stat() {
    STAT_STATE="" STAT_PPID="" STAT_START=""
    local line
    { read -r line < "/proc/$1/stat"; } 2>/dev/null || return 0
    line="${line##*) }"
    local -a f
    read -r -a f <<< "$line"
    STAT_STATE="${f[0]:-}" STAT_PPID="${f[1]:-}" STAT_START="${f[19]:-}"
}

# Field N after the command name in /proc/PID/stat (1 = state, 2 = ppid, 20 = start time).
stat_field() {
    local line
    { read -r line < "/proc/$1/stat"; } 2>/dev/null || return 0
    line="${line##*) }"
    local -a f
    read -r -a f <<< "$line"
    echo "${f[$(( $2 - 1 ))]:-}"
}

proc_name() { cat "/proc/$1/comm" 2>/dev/null || echo "?"; }
