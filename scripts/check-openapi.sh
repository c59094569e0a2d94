#!/usr/bin/env bash
# The OpenAPI document as ingest-api generates it (`ingest-api --openapi`), validated as OpenAPI 3.1 by
# openapi-spec-validator (PyPI), installed into a private virtualenv (RELAY_TEST_VENV, default
# ~/.cache/relay/test-venv): nothing is installed by hand. Run by `make test` after the build.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${RELAY_TEST_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/relay/test-venv}
BIN=${RELAY_BIN_DIR:-target/debug}
PKG="openapi-spec-validator==0.7.1"

if [ ! -x "$VENV/bin/python" ]; then
  command -v python3 >/dev/null || { echo "missing: python3 (Debian: apt-get install python3 python3-venv)" >&2; exit 1; }
  if ! python3 -m venv "$VENV" >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
      echo "installing python3-venv (Debian)" >&2
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
      python3 -m venv "$VENV"
    else
      echo "missing: Python's venv module (Debian: apt-get install python3-venv)" >&2; exit 1
    fi
  fi
fi
if ! "$VENV/bin/python" -c "import openapi_spec_validator" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$PKG"
fi
doc=$(mktemp --suffix=.json)
trap 'rm -f "$doc"' EXIT
"$BIN/ingest-api" --openapi > "$doc"
"$VENV/bin/python" - "$doc" <<'PY'
import json, sys
from openapi_spec_validator import validate
from openapi_spec_validator.validation.validators import OpenAPIV31SpecValidator
doc = json.load(open(sys.argv[1]))
assert doc["openapi"].startswith("3.1"), doc["openapi"]
validate(doc, cls=OpenAPIV31SpecValidator)
print(f"openapi: {len(doc['paths'])} paths, valid OpenAPI {doc['openapi']}")
PY
