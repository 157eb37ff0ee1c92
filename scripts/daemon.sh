#!/usr/bin/env bash
# The Dagster daemon on this machine, with the code location served the way production serves
# it (deploy/: one standing code server the daemon asks over gRPC) and `dagster dev` does.
#
# Why not `dagster-daemon run -w workspace.yaml`: on a workspace that names a Python module, the
# daemon starts the code server itself and replaces it with a new process every 60 seconds
# (dagster/_daemon/controller.py, RELOAD_WORKSPACE_INTERVAL), each loading the code location
# again: about 5 CPU-seconds a minute on this machine, three times the idle daemon's own CPU
# (benchmarks/README.md, backfill, "A standing code server"). Here the code location
# is loaded once, for as long as this script runs; code edited meanwhile is not picked up.
#
# Runs until it is stopped (SIGTERM or SIGINT), then stops the daemon and the code server.
# Used by scripts/backfill.sh and benchmarks/backfill.py; DAGSTER_HOME must be set.
set -euo pipefail
# A shell cannot trap a signal that was ignored when it started, and a caller may hand down
# SIGTERM ignored (Dagster's own processes map SIGTERM onto SIGINT's handler, which is "ignore"
# in a background job): start again with both at their defaults, so that SIGTERM stops this.
if [ -z "${FORECAST_DAEMON_SIGNALS:-}" ]; then
  FORECAST_DAEMON_SIGNALS=default exec env --default-signal=INT,TERM bash "$0" "$@"
fi
VENV=${VENV:-.venv}
: "${DAGSTER_HOME:?DAGSTER_HOME must be set (the Makefile sets it)}"
# The name `dagster dev` and the daemon give workspace.yaml's entry, so sensor and schedule
# state (on/off, cursors) are the same whichever of them runs.
LOCATION=forecast_assets.definitions:defs

dir=$(mktemp -d "${TMPDIR:-/tmp}/forecast-daemon.XXXXXX")
socket="$dir/code.sock"
pids=()
stop() {
  trap - EXIT INT TERM
  # The daemon first, so that it launches nothing on a code server that is going away.
  for pid in "${pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$dir"
}
trap stop EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# A background process of a script starts with SIGINT ignored, and Dagster's processes take
# SIGTERM as SIGINT: without the default SIGINT back, the code server would outlive a SIGTERM.
env --default-signal=INT "$VENV/bin/dagster" code-server start --socket "$socket" \
  --location-name "$LOCATION" -m forecast_assets.definitions -a defs -d . &
code_server=$!
pids=("$code_server")

# Until the code server answers with the definitions loaded; a code location that fails to load
# ends the script with Dagster's error.
"$VENV/bin/python" - "$socket" "$code_server" <<'EOF'
import os, sys, time

from dagster._grpc.client import DagsterGrpcClient
from dagster._serdes import deserialize_value
from dagster._utils.error import SerializableErrorInfo

socket, pid = sys.argv[1], int(sys.argv[2])
client = DagsterGrpcClient(socket=socket)
deadline = time.monotonic() + 300
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit("the code server exited before it loaded the code location")
    try:
        answer = deserialize_value(client.list_repositories())
    except Exception:  # not listening yet, or still loading the definitions
        time.sleep(0.5)
        continue
    if isinstance(answer, SerializableErrorInfo):
        sys.exit(f"the code location did not load:\n{answer.to_string()}")
    sys.exit(0)
sys.exit("the code server did not load the code location in 300 s")
EOF

cat >"$dir/workspace.yaml" <<EOF
load_from:
  - grpc_server:
      socket: $socket
      host: localhost
      location_name: "$LOCATION"
EOF
env --default-signal=INT "$VENV/bin/dagster-daemon" run -w "$dir/workspace.yaml" &
pids=("$!" "$code_server")
wait -n "${pids[@]}"
