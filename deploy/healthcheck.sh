#!/bin/sh
# Container health check: exits 0 when this container's service answers 200 on /readyz (or on the path
# given as $1, e.g. healthz). The port is read from the service's own listen address, so a changed
# INGEST_ADDR / GATEWAY_ADDR / PERSISTER_ADDR moves the check with it.
set -eu
case "${RELAY_SERVICE:-}" in
  ingest-api) addr=${INGEST_ADDR:-0.0.0.0:8080} ;;
  push-gateway) addr=${GATEWAY_ADDR:-0.0.0.0:8081} ;;
  persister) addr=${PERSISTER_ADDR:-0.0.0.0:8082} ;;
  *) echo "healthcheck: RELAY_SERVICE is '${RELAY_SERVICE:-}', not ingest-api, push-gateway or persister" >&2; exit 2 ;;
esac
port=${addr##*:}
exec curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:${port}/${1:-readyz}"
