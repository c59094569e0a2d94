#!/usr/bin/env bash
# The benchmark's load generator and baselines: wrk, redis-benchmark, psql. Install them when missing and
# possible; otherwise say how.
set -euo pipefail
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
command -v psql >/dev/null || missing+=(postgresql-client)
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "bench: installing ${missing[*]} (apt-get)" >&2
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "bench: missing ${missing[*]}. Debian/Ubuntu: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
