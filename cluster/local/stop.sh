#!/usr/bin/env bash
# Stop a local cluster started by start.sh, and only that cluster.
#
#   cluster/local/stop.sh [--dir DIR | --port P] [--grace SECONDS] [--clean]
#
# Not `ray stop`: that kills every Ray process of the user on the machine (other tests' private
# Rays included). Instead this finds the processes carrying DAE_RAY_CLUSTER=DIR in their environment
# (all raylets, GCS, dashboard, agents, workers and job drivers of this cluster inherit it from
# `ray start`), and stops them in Ray's own order: raylets first (their workers go with them), then
# the other processes, the GCS last; SIGTERM, then SIGKILL for whatever outlives the grace period.
# Exit status 0 only when no process of the cluster is left. --clean also removes DIR.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

CLUSTER_DIR=""
PORT_ARG=""
GRACE=10
CLEAN=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) CLUSTER_DIR="$2"; shift 2 ;;
        --port) PORT_ARG="$2"; shift 2 ;;
        --grace) GRACE="$2"; shift 2 ;;
        --clean) CLEAN=1; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
CLUSTER_DIR="${CLUSTER_DIR:-$(default_cluster_dir "$PORT_ARG")}"
[[ -d "$CLUSTER_DIR" ]] || die "no cluster dir $CLUSTER_DIR"
CLUSTER_DIR="$(cd "$CLUSTER_DIR" && pwd)"

# Every process seen in any scan, with its start time (field 22 of /proc/PID/stat): a process the
# first scan found stays on the list even when it is orphaned later (its raylet gone, reparented to
# init, no longer found by the descendant rule), and a reused PID is not mistaken for it.
declare -A known=()
scan() {
    local p
    for p in $(cluster_pids "$CLUSTER_DIR"); do
        [[ -n "${known[$p]:-}" ]] || known[$p]="$(stat_field "$p" 20)"
    done
}
alive_known() {
    local p st
    for p in "${!known[@]}"; do
        st="$(stat_field "$p" 1)"
        [[ -n "$st" && "$st" != Z && "$st" != X && "$(stat_field "$p" 20)" == "${known[$p]}" ]] && echo "$p"
    done
    return 0
}
# Send signal $1 to the PIDs that follow $2, wait up to $2 seconds for them to exit.
signal_and_wait() {
    local sig="$1" wait_s="$2"; shift 2
    [[ $# -gt 0 ]] || return 0
    kill "-$sig" "$@" 2>/dev/null || true
    local deadline=$(( SECONDS + wait_s )) p still
    while (( SECONDS < deadline )); do
        still=0
        for p in "$@"; do
            st="$(stat_field "$p" 1)"
            [[ -n "$st" && "$st" != Z && "$st" != X ]] && { still=1; break; }
        done
        [[ "$still" == 0 ]] && break
        sleep 0.2
    done
}
named() {  # the PIDs among the rest whose name is / is not ($1 = "=" or "!") $2
    local op="$1" name="$2" p; shift 2
    for p in "$@"; do
        if [[ "$(proc_name "$p")" == "$name" ]]; then [[ "$op" == "=" ]] && echo "$p"; else [[ "$op" == "!" ]] && echo "$p"; fi
    done
    return 0
}

scan
if [[ ${#known[@]} -eq 0 ]]; then
    log "no process of the cluster in $CLUSTER_DIR is running"
else
    all=($(alive_known))
    log "stopping ${#all[@]} processes of $CLUSTER_DIR ($(named = raylet "${all[@]}" | wc -l) raylets, $(named = gcs_server "${all[@]}" | wc -l) GCS)"
    per=$(( GRACE / 3 > 0 ? GRACE / 3 : 1 ))
    signal_and_wait TERM "$per" $(named = raylet "${all[@]}")
    # Workers and drivers may have appeared since the first scan: take a fresh look each round.
    scan; all=($(alive_known))
    signal_and_wait TERM "$per" $(named ! gcs_server "${all[@]}")
    scan
    signal_and_wait TERM "$per" $(alive_known)
fi

# Whatever is still there gets SIGKILL; repeat because a dying raylet may still fork a worker.
for _ in 1 2 3 4 5; do
    scan; left=($(alive_known))
    [[ ${#left[@]} -eq 0 ]] && break
    log "SIGKILL to ${#left[@]} processes that outlived SIGTERM: $(for p in "${left[@]}"; do printf '%s(%s) ' "$p" "$(proc_name "$p")"; done)"
    signal_and_wait KILL 3 "${left[@]}"
done

scan; left=($(alive_known))
if [[ ${#left[@]} -gt 0 ]]; then
    echo "error: processes of $CLUSTER_DIR still running: ${left[*]}" >&2
    exit 1
fi
# The cluster's address file lives in its own temp dir (never /tmp/ray/ray_current_cluster, which a
# bare ray.init() would read): remove it so nothing attaches to a dead address.
rm -f "$CLUSTER_DIR"/head/ray_current_cluster "$CLUSTER_DIR"/worker-*/ray_current_cluster
if [[ "$CLEAN" == 1 ]]; then
    rm -rf "$CLUSTER_DIR"
    log "removed $CLUSTER_DIR"
fi
log "stopped: no process of $CLUSTER_DIR is left"
