# Sourced by scripts/test.sh (or by hand: `source scripts/postgres.sh && start_test_postgres`).
# Starts a private, throwaway PostgreSQL cluster for tests/server/test_postgres.py and exports
# RFTKIT_TEST_POSTGRES_URL=postgresql+psycopg://rft:PASSWORD@127.0.0.1:PORT/rftkit for pytest.
# The cluster lives in a temp dir, listens on 127.0.0.1 only, on a free port, with a random password
# (scram-sha-256); an EXIT trap stops it and deletes the dir. Postgres refuses to run as root, so as
# root the cluster belongs to the `postgres` system user that Debian's postgresql package creates.
# Every wait is bounded (pg_ctl -w -t 60). On failure it prints why and returns 1; the caller goes on
# (the Postgres tests then skip locally and fail under CI=true).

# The newest Debian PostgreSQL (/usr/lib/postgresql/N/bin), else whatever initdb is on PATH.
pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1) || true
  if [ -n "$d" ] && [ -x "$d/initdb" ]; then echo "$d"; elif command -v initdb >/dev/null; then dirname "$(command -v initdb)"; fi
}

# Run a command as the cluster's owner: `postgres` when we are root, ourselves otherwise.
# (cd to the cluster dir first: `postgres` may not be allowed into the caller's working directory.)
_pg_as_owner() {
  if [ "$(id -u)" = 0 ]; then
    (cd "$_pg_dir" && runuser -u postgres -- "$@")
  else
    (cd "$_pg_dir" && "$@")
  fi
}

_pg_note() { echo "note: PostgreSQL for tests/server/test_postgres.py: $*; those tests skip (and fail under CI=true)"; }

stop_test_postgres() {
  if [ -n "${_pg_dir:-}" ] && [ -d "$_pg_dir" ]; then
    [ -f "$_pg_dir/data/postmaster.pid" ] && _pg_as_owner "$_pg_bin/pg_ctl" -D "$_pg_dir/data" -m fast -w -t 60 stop >/dev/null 2>&1
    rm -rf "$_pg_dir"
  fi
  _pg_dir=""
}

# Note: called as `start_test_postgres || ...`, where bash ignores `set -e`: hence every step's `|| return 1`.
start_test_postgres() {
  _pg_bin=$(pg_bindir)
  [ -n "$_pg_bin" ] || { _pg_note "no initdb (apt-get install postgresql)"; return 1; }
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || { _pg_note "running as root and there is no postgres user to run it as"; return 1; }
    command -v runuser >/dev/null || { _pg_note "running as root and runuser (util-linux) is missing"; return 1; }
  fi
  _pg_dir=$(mktemp -d "${TMPDIR:-/tmp}/rftkit-pg.XXXXXX") || return 1
  trap stop_test_postgres EXIT
  local port password
  port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') || return 1
  password=$(python -c 'import secrets; print(secrets.token_hex(16))') || return 1
  (umask 077 && printf "%s\n" "$password" >"$_pg_dir/pwfile") || return 1
  [ "$(id -u)" = 0 ] && { chown -R postgres: "$_pg_dir" || return 1; }
  # Superuser `rft` with the password above; local socket connections (in the dir itself) by trust.
  _pg_as_owner "$_pg_bin/initdb" -D "$_pg_dir/data" -U rft --pwfile="$_pg_dir/pwfile" --auth-host=scram-sha-256 \
    --auth-local=trust -E UTF8 >"$_pg_dir/initdb.log" 2>&1 \
    || { _pg_note "initdb failed: $(tail -n 3 "$_pg_dir/initdb.log")"; stop_test_postgres; return 1; }
  # TCP on 127.0.0.1:PORT only, the unix socket in the cluster dir (not /var/run/postgresql).
  _pg_as_owner "$_pg_bin/pg_ctl" -D "$_pg_dir/data" -l "$_pg_dir/server.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $port -k $_pg_dir" start >/dev/null \
    || { _pg_note "the server did not start: $(tail -n 3 "$_pg_dir/server.log" 2>/dev/null)"; stop_test_postgres; return 1; }
  PGPASSWORD=$password "$_pg_bin/createdb" -h 127.0.0.1 -p "$port" -U rft rftkit \
    || { _pg_note "createdb failed"; stop_test_postgres; return 1; }
  export RFTKIT_TEST_POSTGRES_URL="postgresql+psycopg://rft:$password@127.0.0.1:$port/rftkit"
  echo "PostgreSQL $("$_pg_bin/postgres" --version | awk '{print $3}') for the tests on 127.0.0.1:$port ($_pg_dir)"
}
