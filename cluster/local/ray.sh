#!/usr/bin/env bash
# Run the ray CLI against a local cluster started by start.sh, with its address and auth token.
#
#   cluster/local/ray.sh [--dir DIR | --port P] job submit --working-dir . -- python -m jobs.train ...
#   cluster/local/ray.sh job list | job logs -f ID | job stop ID | status
#   eval "$(cluster/local/ray.sh env)"      # export the same variables into your shell instead
#
# Sets RAY_API_SERVER_ADDRESS=http://127.0.0.1:DASHBOARD_PORT (used by `ray job ...` and
# `ray list ...`) and, for a token cluster, RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=DIR/auth_token.
# `ray status` needs the GCS address instead of the dashboard's; this wrapper adds it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

select_cluster "$@"
set -- "${REST_ARGS[@]}"
load_cluster_env "$CLUSTER_DIR"

if [[ "${1:-}" == "env" ]]; then
    client_env | sed 's/^/export /'
    exit 0
fi
[[ $# -gt 0 ]] || die "no ray command given (e.g. job list); see --help"

while IFS= read -r kv; do export "$kv"; done < <(client_env)
unset RAY_AUTH_TOKEN
if [[ "$1" == "status" ]]; then
    shift
    exec "$RAY_BIN" status --address="127.0.0.1:$PORT" "$@"
fi
exec "$RAY_BIN" "$@"
