#!/usr/bin/env bash
# Backfill customers through the Dagster daemon, exactly as the UI's "Launch backfill" does, and
# wait for it. Uses the daemon of a running `make ui` if there is one; otherwise runs one of its
# own for as long as the backfill takes. Arguments go to forecast-backfill (default: --all).
set -euo pipefail
VENV=${VENV:-.venv}
: "${DAGSTER_HOME:?DAGSTER_HOME must be set (the Makefile sets it)}"
args=("$@")
[ ${#args[@]} -gt 0 ] || args=(--all)

if "$VENV/bin/dagster-daemon" liveness-check >/dev/null 2>&1; then
  echo "using the running Dagster daemon"
  exec "$VENV/bin/forecast-backfill" --wait "${args[@]}"
fi
log="$DAGSTER_HOME/backfill-daemon.log"
echo "starting a Dagster daemon for this backfill (log: $log)"
# The daemon with a standing code server (scripts/daemon.sh says why).
bash scripts/daemon.sh >"$log" 2>&1 &
daemon=$!
trap 'kill "$daemon" 2>/dev/null || true; wait "$daemon" 2>/dev/null || true' EXIT
"$VENV/bin/forecast-backfill" --wait "${args[@]}"
