#!/usr/bin/env bash
# Diesel's Postgres backend links libpq: make sure its development files are there.
set -euo pipefail
if pkg-config --exists libpq 2>/dev/null || [[ -f /usr/include/postgresql/libpq-fe.h ]] || ls /usr/lib/*/libpq.so >/dev/null 2>&1; then
  exit 0
fi
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
  echo "installing libpq-dev (apt-get), which Diesel links" >&2
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libpq-dev pkg-config >/dev/null
else
  echo "missing: libpq (Postgres client library). Debian/Ubuntu: sudo apt-get install -y libpq-dev; macOS: brew install libpq" >&2
  exit 1
fi
