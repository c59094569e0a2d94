#!/usr/bin/env bash
# Makes sure Redis and Postgres answer at REDIS_URL and DATABASE_URL.
#
#   scripts/services.sh up     start what does not answer (installing Debian packages when missing and
#                              possible); what it started is recorded in .run/started
#   scripts/services.sh down   stop what `up` started (nothing else)
#
# Only local addresses are started here; a remote URL that does not answer is an error that says so.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
run_dir="$root/.run"
mkdir -p "$run_dir"
# What `up` started, for `down`. `make run` passes a file of its own, so its Ctrl-C never stops servers that
# another command (a `make test` running meanwhile) relies on.
started=${RELAY_STARTED_FILE:-$run_dir/started}

REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
DATABASE_URL=${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/relay}

say() { echo "services: $*" >&2; }
die() { say "$*"; exit 1; }

# host and port of a URL like scheme://[user[:pw]@]host[:port][/…]
url_host() { local u=${1#*://}; u=${u#*@}; u=${u%%/*}; u=${u%%\?*}; echo "${u%%:*}"; }
url_port() { local u=${1#*://}; u=${u#*@}; u=${u%%/*}; u=${u%%\?*}; [[ $u == *:* ]] && echo "${u##*:}" || echo "$2"; }
is_local() { [[ $1 == 127.* || $1 == localhost || $1 == ::1 || $1 == "[::1]" ]]; }

apt_install() {
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
    die "missing: $* — install it (Debian/Ubuntu: sudo apt-get install -y $*; macOS: brew install ${2:-$1}) and run again"
  fi
  say "installing $* (apt-get)"
  apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

redis_up() {
  local host port; host=$(url_host "$REDIS_URL"); port=$(url_port "$REDIS_URL" 6379)
  command -v redis-cli >/dev/null || apt_install redis-tools
  if redis-cli -u "$REDIS_URL" ping 2>/dev/null | grep -q PONG; then return; fi
  is_local "$host" || die "Redis does not answer at $REDIS_URL, and it is not local: start it there"
  command -v redis-server >/dev/null || apt_install redis-server
  say "starting redis-server on port $port (data in memory only)"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$run_dir" --logfile "$run_dir/redis.log" --pidfile "$run_dir/redis.pid"
  for _ in $(seq 50); do redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && { echo "redis $port" >>"$started"; return; }; sleep 0.1; done
  die "redis-server did not start: see $run_dir/redis.log"
}

pg_bin() {
  local d; d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
  [[ -n $d ]] && echo "$d" || dirname "$(command -v initdb 2>/dev/null || echo /nonexistent/initdb)"
}

postgres_up() {
  local host port; host=$(url_host "$DATABASE_URL"); port=$(url_port "$DATABASE_URL" 5432)
  command -v pg_isready >/dev/null || apt_install postgresql-client
  if pg_isready -q -h "$host" -p "$port"; then return; fi
  is_local "$host" || die "Postgres does not answer at $host:$port, and it is not local: start it there"
  [[ -x $(pg_bin)/initdb ]] || apt_install postgresql
  local bin data="$run_dir/pg" as=(); bin=$(pg_bin)
  # Postgres refuses to run as root: run the throwaway cluster as the `postgres` user.
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || die "running as root and no 'postgres' user exists to run Postgres"
    as=(runuser -u postgres --)
  fi
  if [[ ! -f $data/PG_VERSION ]]; then
    say "creating a throwaway Postgres cluster in $data"
    mkdir -p "$data" && [[ ${#as[@]} -eq 0 ]] || chown postgres "$data"
    ${as[@]+"${as[@]}"} "$bin/initdb" -D "$data" -U postgres --auth=trust >"$run_dir/initdb.log" 2>&1 \
      || die "initdb failed: see $run_dir/initdb.log"
  fi
  say "starting Postgres on port $port (data in $data)"
  touch "$run_dir/pg.log"; [[ ${#as[@]} -eq 0 ]] || chown postgres "$run_dir/pg.log"
  ${as[@]+"${as[@]}"} "$bin/pg_ctl" -D "$data" -l "$run_dir/pg.log" -w -t 30 \
    -o "-p $port -c listen_addresses=127.0.0.1 -k /tmp" start >/dev/null \
    || die "Postgres did not start: see $run_dir/pg.log"
  echo "postgres $port" >>"$started"
}

down() {
  [[ -f $started ]] || return 0
  while read -r what port; do
    case $what in
      redis) redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; say "stopped redis-server on $port" ;;
      postgres)
        local as=(); [[ $(id -u) -eq 0 ]] && as=(runuser -u postgres --)
        ${as[@]+"${as[@]}"} "$(pg_bin)/pg_ctl" -D "$run_dir/pg" -m fast stop >/dev/null 2>&1 || true
        say "stopped Postgres on $port" ;;
    esac
  done <"$started"
  rm -f "$started"
}

case ${1:-up} in
  up) redis_up; postgres_up ;;
  down) down ;;
  *) die "usage: $0 up|down" ;;
esac
