#!/usr/bin/env bash
# Show a local cluster started by start.sh: its settings, its processes per node, and `ray status`.
#
#   cluster/local/status.sh [--dir DIR | --port P]
#
# Exit status: 0 when the cluster is up (GCS and every node's raylet running), 3 when none of its
# processes runs, 1 when it is partly up.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

select_cluster "$@"
[[ ${#REST_ARGS[@]} -eq 0 ]] || die "unknown option ${REST_ARGS[0]} (see --help)"
load_cluster_env "$CLUSTER_DIR"

echo "cluster dir:  $CLUSTER_DIR"
echo "GCS:          127.0.0.1:$PORT"
echo "dashboard:    http://127.0.0.1:$DASHBOARD_PORT  (RAY_API_SERVER_ADDRESS for ray job submit)"
echo "auth:         $AUTH$([[ "$AUTH" == token ]] && echo " (token file $CLUSTER_DIR/auth_token)")"
echo "nodes:        head ($HEAD_CPUS CPU) + $WORKERS worker node(s) ($WORKER_CPUS CPU, $WORKER_GPUS GPU each)"

pids=($(cluster_pids "$CLUSTER_DIR"))
if [[ ${#pids[@]} -eq 0 ]]; then
    echo "state:        stopped (no process of this cluster is running)"
    exit 3
fi
n_gcs=0 n_raylet=0
echo "processes:    ${#pids[@]}"
for p in "${pids[@]}"; do
    name="$(proc_name "$p")"
    [[ "$name" == gcs_server ]] && n_gcs=$((n_gcs + 1))
    [[ "$name" == raylet ]] && n_raylet=$((n_raylet + 1))
    # Which node: the --temp-dir / session path in the command line, else "job driver / worker".
    node="$(tr '\0' '\n' < "/proc/$p/cmdline" 2>/dev/null | grep -o -m1 -- "$CLUSTER_DIR/[a-z0-9-]*" | sed "s|$CLUSTER_DIR/||" || true)"
    printf '  %-8s %-28s %s\n' "$p" "$name" "${node:--}"
done
"$(dirname "${BASH_SOURCE[0]}")/ray.sh" --dir "$CLUSTER_DIR" status || true
if [[ "$n_gcs" == 1 && "$n_raylet" == $((WORKERS + 1)) ]]; then
    echo "state:        up"
    exit 0
fi
echo "state:        degraded ($n_gcs GCS, $n_raylet of $((WORKERS + 1)) raylets running)"
exit 1
