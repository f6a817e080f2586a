#!/usr/bin/env bash
# The interop tier's Gnocchi: a separate, git-ignored virtualenv (.gnocchi-venv/) holding a
# PINNED Gnocchi from PyPI with its PostgreSQL indexer driver and uwsgi, and a PostgreSQL that
# answers on 127.0.0.1:5432 with a role the tests create their own databases with. The tests
# (tests/interop/gnocchi_service.py) start gnocchi-api (uwsgi) and gnocchi-metricd themselves,
# on a fresh database and file storage per run, and drop both afterwards.
# Idempotent; the venv is rebuilt only when this script changes (stamp), so CI pays the install
# once per cache. GNOCCHI_VENV overrides the location. PostgreSQL is installed from Debian's
# packages and started only where none answers (a fresh machine; needs root), and the role
# created only where it cannot log in: both change the host's services, so only on a host
# marked as a test host (CI=true or LIFECYCLE_STATS_TEST_HOST=1); elsewhere the script refuses
# (exit 3) unless both are already there.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${GNOCCHI_VENV:-.gnocchi-venv}
GNOCCHI_VERSION=4.7.1  # the current 4.7 (ended_at is kept against older measures: #1466)
UWSGI_VERSION=2.0.31
PG_HOST=127.0.0.1
PG_PORT=${LIFECYCLE_STATS_PG_PORT:-5432}
ROLE=lifecycle_stats_gnocchi  # password = role name; CREATEDB, no superuser
say() { echo "gnocchi_env: $*"; }
die() { echo "gnocchi_env: ERROR: $*" >&2; exit 1; }
quiet() { "$@" 2>&1 | { grep -v '^WARNING: Location' || true; }; return "${PIPESTATUS[0]}"; }

build_venv() {
  local stamp=$VENV/.installed-$(sha1sum "$0" | cut -c1-12)
  [ -f "$stamp" ] && return 0
  say "building $VENV (gnocchi[postgresql]==$GNOCCHI_VERSION, uwsgi==$UWSGI_VERSION)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  quiet "$VENV/bin/pip" install -q --upgrade pip
  quiet "$VENV/bin/pip" install -q "gnocchi[postgresql]==$GNOCCHI_VERSION" "uwsgi==$UWSGI_VERSION"
  # what the tests start; fail here, not in a test
  "$VENV/bin/python" -W ignore -c "import gnocchi.indexer.sqlalchemy, gnocchi.storage.file, psycopg2"
  [ -x "$VENV/bin/uwsgi" ] || die "no uwsgi in $VENV"
  rm -f "$VENV"/.installed-*
  touch "$stamp"
}

pg_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }
test_host() { [ "${CI:-}" = "true" ] || [ "${LIFECYCLE_STATS_TEST_HOST:-}" = "1" ]; }
needs_test_host() {
  test_host && return 0
  echo "gnocchi_env: refusing to $1: this host is not marked as a test host" \
       "(CI=true or LIFECYCLE_STATS_TEST_HOST=1)" >&2
  exit 3
}

start_postgresql() {
  if ! command -v psql >/dev/null; then  # the tests create and drop their databases with it
    say "installing postgresql-client from Debian's packages"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql-client
  fi
  pg_up && return 0
  needs_test_host "install or start PostgreSQL"
  if ! command -v pg_ctlcluster >/dev/null; then
    say "installing postgresql from Debian's packages"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql
  fi
  pg_up && return 0
  local version; version=$(ls /etc/postgresql | sort -V | tail -1)
  say "starting PostgreSQL $version"
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  for _ in $(seq 60); do pg_up && return 0; sleep 1; done
  die "PostgreSQL does not answer on $PG_HOST:$PG_PORT"
}

as_superuser() {  # trust on loopback (these machines), else peer auth as postgres (Debian)
  if psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -w -Atc "select 1" >/dev/null 2>&1; then
    psql -h "$PG_HOST" -p "$PG_PORT" -U postgres -w -v ON_ERROR_STOP=1 -qAt "$@"
  else
    runuser -u postgres -- psql -p "$PG_PORT" -v ON_ERROR_STOP=1 -qAt "$@"
  fi
}

ensure_role() {
  if PGPASSWORD=$ROLE psql -h "$PG_HOST" -p "$PG_PORT" -U "$ROLE" -w -d postgres -Atc \
      "select rolcreatedb from pg_roles where rolname = current_user" 2>/dev/null | grep -qx t
  then return 0; fi
  needs_test_host "create the PostgreSQL role $ROLE"
  say "creating PostgreSQL role $ROLE (CREATEDB)"
  as_superuser -c "DO \$\$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE')
    THEN CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$ROLE'; END IF; END \$\$;"
  PGPASSWORD=$ROLE psql -h "$PG_HOST" -p "$PG_PORT" -U "$ROLE" -w -d postgres -Atc "select 1" \
    >/dev/null || die "role $ROLE cannot log in on $PG_HOST:$PG_PORT (pg_hba.conf?)"
}

build_venv
start_postgresql
ensure_role
say "ready: $VENV, postgresql://$ROLE@$PG_HOST:$PG_PORT"
