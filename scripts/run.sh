#!/usr/bin/env bash
# `make run`: the whole pipeline in the foreground, logs prefixed by service; Ctrl-C stops everything
# (and the Redis/Postgres that scripts/services.sh started for this run, if any).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${BIN_DIR:-$root/target/debug}
export RUST_LOG=${RUST_LOG:-info}

export RELAY_STARTED_FILE="$root/.run/started.$$"
"$root/scripts/services.sh" up

pids=()
stop() {
  trap - INT TERM EXIT
  echo "run: stopping…" >&2
  if [[ ${#pids[@]} -gt 0 ]]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    # The services exit within seconds of SIGTERM; do not let a stuck one hold the terminal.
    for _ in $(seq 150); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "${pids[@]}" 2>/dev/null || true
  fi
  "$root/scripts/services.sh" down
}
trap 'stop; exit 130' INT TERM
trap stop EXIT

start() { # name
  local name=$1
  ( exec "$bin/$name" ) > >(sed -u "s/^/[$name] /") 2>&1 &
  pids+=($!)
}

wait_ready() { # name url
  for _ in $(seq 100); do
    curl -fsS "$2/readyz" >/dev/null 2>&1 && return 0
    kill -0 "${pids[@]}" 2>/dev/null || { echo "run: a service exited; see its log above" >&2; exit 1; }
    sleep 0.2
  done
  echo "run: $1 is not ready after 20 s; see its log above" >&2
  exit 1
}

# The persister first: it creates the database and runs the migrations.
start persister
wait_ready persister "http://${PERSISTER_ADDR:-127.0.0.1:8082}"
start ingest-api
start push-gateway
wait_ready ingest-api "http://${INGEST_ADDR:-127.0.0.1:8080}"
wait_ready push-gateway "http://${GATEWAY_ADDR:-127.0.0.1:8081}"

cat >&2 <<MSG

  Relay is running.
    post:      curl -XPOST http://${INGEST_ADDR:-127.0.0.1:8080}/messages -H 'content-type: application/json' -d '{"hello":"world"}'
    read:      curl http://${INGEST_ADDR:-127.0.0.1:8080}/messages
    live page: http://${GATEWAY_ADDR:-127.0.0.1:8081}/
  Ctrl-C stops everything.

MSG
wait -n "${pids[@]}" || true
echo "run: a service exited; stopping the others" >&2
