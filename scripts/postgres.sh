#!/usr/bin/env bash
# Start (or reuse) a throw-away PostgreSQL on 127.0.0.1 for the distributed-tuning test and
# print its URL. Installs Debian's postgresql if it is missing. Used by .ci/run:
#   export TUNESMITH_TEST_PG_URL=$(bash scripts/postgres.sh)
set -euo pipefail
PORT=${TUNESMITH_PG_PORT:-54329}
DATA=${TUNESMITH_PG_DATA:-/tmp/tunesmith-pg}
find_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
BIN=$(find_bin)
if [ -z "$BIN" ]; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } >&2
  BIN=$(find_bin)
fi
# PostgreSQL refuses to run as root: run it as the 'postgres' user the package creates.
id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if ! as_pg "$BIN/pg_ctl" status -D "$DATA" >/dev/null 2>&1; then
  if [ ! -f "$DATA/PG_VERSION" ]; then
    mkdir -p "$DATA"
    [ "$(id -u)" = 0 ] && chown postgres "$DATA"
    as_pg "$BIN/initdb" -D "$DATA" -A trust -U tunesmith >&2
  fi
  as_pg "$BIN/pg_ctl" -D "$DATA" -l "$DATA/server.log" -w \
    -o "-p $PORT -k /tmp -c listen_addresses=127.0.0.1" start >&2
fi
"$BIN/psql" -h 127.0.0.1 -p "$PORT" -U tunesmith -d postgres -tAc \
  "SELECT 1 FROM pg_database WHERE datname = 'tunesmith'" | grep -q 1 \
  || "$BIN/createdb" -h 127.0.0.1 -p "$PORT" -U tunesmith tunesmith >&2
echo "postgresql://tunesmith@127.0.0.1:$PORT/tunesmith"
