#!/usr/bin/env bash
# Kill one worker node of a local cluster at once, as if its machine died: SIGKILL to its raylet,
# object store, agents and every worker process on it. For fault-tolerance checks (the denoise job
# must finish through task retries and actor restarts, or a rerun must complete it).
#
#   cluster/local/kill-node.sh [--dir DIR | --port P] --node N      # worker node N (1..WORKERS)
#
# The node's processes are the ones whose command line names its temp dir (DIR/worker-N/), and
# their descendants; the head and the other nodes are left alone. Prints the PIDs it killed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

NODE=""
ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --node) NODE="$2"; shift 2 ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
select_cluster "${ARGS[@]}"
[[ ${#REST_ARGS[@]} -eq 0 ]] || die "unknown option ${REST_ARGS[0]} (see --help)"
[[ "$NODE" =~ ^[0-9]+$ && "$NODE" -ge 1 ]] || die "--node N (a worker node number, 1 or more) is required"
[[ -d "$CLUSTER_DIR" ]] || die "no cluster dir $CLUSTER_DIR"
CLUSTER_DIR="$(cd "$CLUSTER_DIR" && pwd)"
load_cluster_env "$CLUSTER_DIR"
(( NODE <= WORKERS )) || die "the cluster has $WORKERS worker node(s); --node must be 1..$WORKERS"
NODE_DIR="$CLUSTER_DIR/worker-$NODE"

pids="$(cluster_pids "$NODE_DIR")"
[[ -n "$pids" ]] || die "no live process of worker node $NODE (was it killed already?)"
# shellcheck disable=SC2086
kill -9 $pids 2>/dev/null || true
log "killed worker node $NODE: $(echo $pids | wc -w) processes"
echo $pids
