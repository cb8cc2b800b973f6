#!/usr/bin/env bash
# Source this file to start a throw-away PostgreSQL server for the storage tests:
#   source scripts/postgres.sh && nasforge_pg_start
# It exports NASFORGE_TEST_POSTGRES (an SQLAlchemy URL) and stops the server on shell exit.
# Installs the server from Debian's packages when missing (CI runs as root). Without CI=true a
# failure to start only prints a note and the PostgreSQL tests skip; with CI=true it is fatal.

nasforge_pg_start() {
  local port=${NASFORGE_PG_PORT:-54329}
  local bin
  bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$bin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[postgres] installing the server (apt-get install postgresql)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || true
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
  fi
  if [ -z "$bin" ]; then
    _nasforge_pg_fail "no PostgreSQL server binaries found"; return
  fi
  NASFORGE_PG_DIR=$(mktemp -d /tmp/nasforge-pg.XXXXXX)
  local run=()
  if [ "$(id -u)" = 0 ]; then  # the server refuses to run as root
    chown postgres "$NASFORGE_PG_DIR"
    run=(runuser -u postgres --)
  fi
  if ! "${run[@]}" "$bin/initdb" -D "$NASFORGE_PG_DIR/data" -A trust -U postgres >"$NASFORGE_PG_DIR/initdb.log" 2>&1; then
    _nasforge_pg_fail "initdb failed: $(tail -n 3 "$NASFORGE_PG_DIR/initdb.log")"; return
  fi
  if ! "${run[@]}" "$bin/pg_ctl" -D "$NASFORGE_PG_DIR/data" -l "$NASFORGE_PG_DIR/server.log" -w \
       -o "-p $port -k $NASFORGE_PG_DIR -c listen_addresses=127.0.0.1" start >/dev/null; then
    _nasforge_pg_fail "server did not start: $(tail -n 3 "$NASFORGE_PG_DIR/server.log")"; return
  fi
  NASFORGE_PG_BIN=$bin
  NASFORGE_PG_RUN="${run[*]}"
  trap nasforge_pg_stop EXIT
  "${run[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres nasforge_test
  export NASFORGE_TEST_POSTGRES="postgresql+psycopg2://postgres@127.0.0.1:$port/nasforge_test"
  echo "[postgres] server on 127.0.0.1:$port (NASFORGE_TEST_POSTGRES set)"
}

nasforge_pg_stop() {
  if [ -n "${NASFORGE_PG_DIR:-}" ] && [ -d "$NASFORGE_PG_DIR/data" ]; then
    $NASFORGE_PG_RUN "$NASFORGE_PG_BIN/pg_ctl" -D "$NASFORGE_PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$NASFORGE_PG_DIR"
  fi
}

_nasforge_pg_fail() {
  if [ "${CI:-}" = "true" ]; then
    echo "[postgres] $1" >&2; exit 1
  fi
  echo "[postgres] $1; the PostgreSQL storage tests will skip"
}
