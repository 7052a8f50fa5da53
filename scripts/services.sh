#!/usr/bin/env bash
# Start the local PostgreSQL and Redis the integration tests use, when they are not running, and
# make sure of what the tests connect to: the role postgres over TCP at 127.0.0.1:5432 without a
# password (postgresql://postgres@127.0.0.1:5432/test) and the database `test`.
# Idempotent: on a ready machine it changes nothing and prints nothing.
set -euo pipefail

sudo_cmd=""
[ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"

# Run a command as the postgres OS user: the cluster's superuser over the Unix socket (peer
# authentication on Debian) and the owner of its configuration files. From / so that psql does
# not warn about a working directory postgres may not read.
as_postgres() (
  cd /
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres -- "$@"; fi
)

# "<version> <port>" of the newest cluster named `main` (the one tests/integration restarts),
# else nothing.
main_cluster() {
  command -v pg_lsclusters >/dev/null || return 0
  pg_lsclusters -h | awk '$2 == "main" { print $1, $3 }' | sort -V | tail -n 1
}

# Newest PostgreSQL server installed (/usr/lib/postgresql/<version>/bin/postgres), else none.
installed_server_version() {
  local postgres
  for postgres in /usr/lib/postgresql/*/bin/postgres; do
    if [ -x "$postgres" ]; then basename "$(dirname "$(dirname "$postgres")")"; fi
  done | sort -V | tail -n 1
}

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }

if ! pg_up; then
  read -r version port <<<"$(main_cluster)"
  if [ -n "$version" ]; then
    if [ "$port" != 5432 ]; then
      echo "setup: PostgreSQL $version/main uses port $port, the tests 5432:" \
        "pg_conftool $version main set port 5432" >&2
      exit 1
    fi
    echo "setup: starting PostgreSQL $version/main"
    # --skip-systemctl-redirect: start it directly, also where systemd is not running (containers).
    $sudo_cmd pg_ctlcluster --skip-systemctl-redirect "$version" main start
  else
    # The package is installed but no cluster was created, as happens in containers without
    # systemd (or with create_main_cluster = false): create the default one.
    version=$(installed_server_version)
    if [ -z "$version" ]; then
      echo "setup: PostgreSQL is not installed: apt-get install postgresql" \
        "(scripts/test.sh does)" >&2
      exit 1
    fi
    echo "setup: creating and starting the PostgreSQL cluster $version/main"
    $sudo_cmd pg_createcluster "$version" main --port 5432 --start >/dev/null
  fi
fi
if ! redis_up; then
  echo "setup: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
fi
for _ in $(seq 50); do
  pg_up && redis_up && break
  sleep 0.2
done
if ! pg_up || ! redis_up; then
  echo "setup: PostgreSQL or Redis did not come up on 127.0.0.1 (ports 5432, 6379)" >&2
  exit 1
fi

# The tests log in as postgres over TCP with no password. A fresh Debian cluster asks host
# connections for one (scram-sha-256), so the first time this fails for want of a password, let
# the postgres role in from the loopback addresses without one.
tcp_login() { psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -w -XAtqc "$1" 2>&1; }
if ! error=$(tcp_login "SELECT 1"); then
  case "$error" in
    *password* | *authentication* | *pg_hba.conf*) ;; # asked for a password, or no line lets it in
    *)
      echo "setup: cannot log in to PostgreSQL as postgres on 127.0.0.1:5432: $error" >&2
      exit 1
      ;;
  esac
  # The server listening on 5432 says where its pg_hba.conf is (over its Unix socket).
  hba=$(as_postgres psql -p 5432 -d postgres -XAtqc "SHOW hba_file")
  # pg_hba.conf is read top down and the first matching line wins: put ours first.
  current=$(as_postgres cat "$hba")
  printf '%s\n' \
    "# Added by scripts/services.sh: the tests log in as postgres over TCP without a password." \
    "host    all             postgres        127.0.0.1/32            trust" \
    "host    all             postgres        ::1/128                 trust" \
    "$current" | as_postgres tee "$hba" >/dev/null
  as_postgres psql -p 5432 -d postgres -XAtqc "SELECT pg_reload_conf()" >/dev/null
  echo "setup: PostgreSQL asked for a password on 127.0.0.1 and the tests use none: added trust lines for postgres from 127.0.0.1/32 and ::1/128 at the top of $hba and reloaded"
  for _ in $(seq 25); do
    error=$(tcp_login "SELECT 1") && break
    sleep 0.2
  done
  tcp_login "SELECT 1" >/dev/null || {
    echo "setup: still cannot log in as postgres on 127.0.0.1:5432: $error" >&2
    exit 1
  }
fi

# The database the tests' URL names (they create their own databases from it).
if [ -z "$(tcp_login "SELECT 1 FROM pg_database WHERE datname = 'test'")" ]; then
  echo "setup: creating the PostgreSQL database test"
  as_postgres createdb -p 5432 test
fi
