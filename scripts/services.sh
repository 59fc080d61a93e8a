# Sourced by scripts/test and scripts/chaos: installs and starts what the
# tests need (PostgreSQL clusters, the Docker test image, Chromium and
# chromedriver) and exports where they are. Fails loudly if a service cannot
# be brought up.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf '\n==> %s\n' "$*"; }
die() { printf '%s: %s\n' "$0" "$*" >&2; exit 1; }

# ---- PostgreSQL -------------------------------------------------------------
say "PostgreSQL"
if ! command -v pg_lsclusters >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null \
    || die "could not install postgresql"
fi
main_cluster() { pg_lsclusters --no-header | awk '$2 !~ /^dockhand_/' | head -n 1; }
cluster=$(main_cluster | awk '{print $1" "$2}')
[ -n "$cluster" ] || die "no PostgreSQL cluster found after install"
read -r pg_version pg_name <<<"$cluster"
if ! main_cluster | awk '{print $4}' | grep -q online; then
  pg_ctlcluster "$pg_version" "$pg_name" start || die "could not start PostgreSQL $pg_version/$pg_name"
fi
for _ in $(seq 1 30); do
  su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
  sleep 0.5
done
su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 || die "PostgreSQL does not answer"
su postgres -c "psql -qtAc \"select 1 from pg_roles where rolname='dockhand'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"create role dockhand login superuser password 'dockhand'\"" >/dev/null
su postgres -c "psql -qtAc \"select 1 from pg_database where datname='dockhand_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O dockhand dockhand_test"
pg_port=$(main_cluster | awk '{print $3}')
export DOCKHAND_TEST_PG="postgres://dockhand:dockhand@127.0.0.1:${pg_port}/dockhand_test"
echo "PostgreSQL $pg_version/$pg_name on port $pg_port"
# Drop databases (and the roles some were given to) that earlier runs left:
# each test drops its own, but a killed or crashed test run cannot. A name
# ends in its test process's pid and a counter after it (a role's in the
# pid alone); a live process's are left alone, as a test run beside
# this one still uses them. One psql session for all: a psql per database
# cost a third of a second each.
# `drop_leftovers PORT KIND QUERY [counter]` drops what QUERY names.
drop_leftovers() {
  local port=$1 kind=$2 query=$3 counter=${4:-} force=''
  # A process the dead test left behind (a worker it never stopped) may
  # still hold a session; nothing else should, so it is cut off.
  [ "$kind" = DATABASE ] && force=' WITH (FORCE)'
  su postgres -c "psql -p $port -qtAX -c \"$query\"" | while read -r name; do
    pid=$name
    [ -n "$counter" ] && pid=${name%_*}
    pid=${pid##*_}
    [ -d "/proc/$pid" ] || printf 'DROP %s IF EXISTS %s%s;\n' "$kind" "$name" "$force"
  done | su postgres -c "psql -p $port -qX" >/dev/null 2>&1 || true
}
test_databases="select datname from pg_database where datname like 'dht\\_%'"
drop_leftovers "$pg_port" DATABASE "$test_databases" counter
drop_leftovers "$pg_port" ROLE "select rolname from pg_roles where rolname ~ '^job_[a-z]+_[0-9]+\$'"

# Clusters of their own for the tests that stop and restart the server (the
# restart test and the chaos test), so neither disturbs the tests running in
# parallel on the first. `extra_cluster NAME PORT` prints the database URL.
extra_cluster() {
  local name=$1 port=$2
  if ! pg_lsclusters --no-header | awk '{print $2}' | grep -qx "$name"; then
    pg_createcluster "$pg_version" "$name" -p "$port" >/dev/null || die "could not create cluster $name"
  fi
  if ! pg_lsclusters --no-header | awk -v c="$name" '$2 == c {print $4}' | grep -q online; then
    pg_ctlcluster "$pg_version" "$name" start >&2 || die "could not start cluster $name"
  fi
  port=$(pg_lsclusters --no-header | awk -v c="$name" '$2 == c {print $3}')
  for _ in $(seq 1 30); do
    su postgres -c "psql -p $port -qtAc 'select 1'" >/dev/null 2>&1 && break
    sleep 0.5
  done
  su postgres -c "psql -p $port -qtAc \"select 1 from pg_roles where rolname='dockhand'\"" | grep -q 1 \
    || su postgres -c "psql -p $port -qc \"create role dockhand login superuser password 'dockhand'\"" >/dev/null \
    || die "cluster $name does not answer"
  su postgres -c "psql -p $port -qtAc \"select 1 from pg_database where datname='dockhand_test'\"" | grep -q 1 \
    || su postgres -c "createdb -p $port -O dockhand dockhand_test"
  drop_leftovers "$port" DATABASE "$test_databases" counter
  echo "postgres://dockhand:dockhand@127.0.0.1:${port}/dockhand_test"
}
DOCKHAND_TEST_PG_RESTART=$(extra_cluster dockhand_restart 54329)
export DOCKHAND_TEST_PG_RESTART
export DOCKHAND_TEST_PG_RESTART_CLUSTER="$pg_version dockhand_restart"
echo "restart-test cluster $pg_version/dockhand_restart: $DOCKHAND_TEST_PG_RESTART"
DOCKHAND_TEST_PG_CHAOS=$(extra_cluster dockhand_chaos 54330)
export DOCKHAND_TEST_PG_CHAOS
export DOCKHAND_TEST_PG_CHAOS_CLUSTER="$pg_version dockhand_chaos"
echo "chaos-test cluster $pg_version/dockhand_chaos: $DOCKHAND_TEST_PG_CHAOS"

# ---- Docker -------------------------------------------------------------------
say "Docker"
docker info >/dev/null 2>&1 || die "the Docker engine is not reachable (docker info failed); the container tests need it"
if ! dpkg -s busybox-static >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null \
    || die "could not install busybox-static"
fi
# The worker-as-a-container test strips the binary it puts in its image.
if ! command -v strip >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binutils >/dev/null \
    || die "could not install binutils"
fi
image=dockhand-test-busybox:latest
ctx=$(mktemp -d)
cp /bin/busybox "$ctx/busybox"
printf 'FROM scratch\nCOPY busybox /bin/busybox\nENTRYPOINT ["/bin/busybox"]\n' > "$ctx/Dockerfile"
docker build -q -t "$image" "$ctx" >/dev/null 2>&1 || die "could not build the test image $image"
rm -rf "$ctx"
export DOCKHAND_TEST_IMAGE="$image"
echo "test image $image built (FROM scratch + static busybox; nothing pulled)"


# ---- Chromium -----------------------------------------------------------------
# The dashboard's tests drive a real headless Chromium through chromedriver.
say "Chromium"
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
    || die "could not install chromium and chromium-driver (the dashboard's browser tests need them)"
fi
chromium --version >/dev/null 2>&1 || die "chromium is installed but does not run"
echo "$(chromium --version 2>/dev/null), $(chromedriver --version 2>/dev/null | cut -d' ' -f1-2)"
