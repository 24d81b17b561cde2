#!/usr/bin/env bash
# Make a Docker engine available and the local PostgreSQL test image present.
# Idempotent and bounded: safe to run on every CI run and on a developer box.
#
#   scripts/provision_docker.sh
#
# Environment:
#   PGPART_PG_IMAGE        image to ensure (default pgpart/postgres:15-local);
#                          a pgpart/* image is built locally, any other one
#                          (postgres:15, ...) is pulled
#   DOCKERD_LOG            dockerd's log file (default /var/log/pgpart-dockerd.log)
#   DOCKERD_WAIT_SECONDS   how long to wait for the engine (default 60)
#
# Without a running engine it installs Debian's docker.io (root only) and
# starts dockerd in the background with no bridge and no iptables: the test
# containers use the host network and bind 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${PGPART_PG_IMAGE:-pgpart/postgres:15-local}
dockerd_log=${DOCKERD_LOG:-/var/log/pgpart-dockerd.log}
wait_seconds=${DOCKERD_WAIT_SECONDS:-60}

log() { echo "provision_docker: $*"; }
die() { echo "provision_docker: ERROR: $*" >&2; exit 1; }

# docker info can itself hang on a wedged daemon: always bound it.
engine_up() { timeout 10 docker info >/dev/null 2>&1; }

install_engine() {
    [ "$(id -u)" = 0 ] || die "no Docker engine, and installing one needs root"
    command -v apt-get >/dev/null || die "no Docker engine, and no apt-get to install docker.io"
    export DEBIAN_FRONTEND=noninteractive
    log "installing docker.io from Debian"
    # Try with the current package lists first; refresh them only if needed.
    if ! timeout 600 apt-get install -y -q --no-install-recommends docker.io >/tmp/pgpart-apt.log 2>&1; then
        log "apt-get install failed; running apt-get update and retrying"
        timeout 300 apt-get update -q >>/tmp/pgpart-apt.log 2>&1 \
            || { tail -20 /tmp/pgpart-apt.log >&2; die "apt-get update failed"; }
        timeout 600 apt-get install -y -q --no-install-recommends docker.io >>/tmp/pgpart-apt.log 2>&1 \
            || { tail -20 /tmp/pgpart-apt.log >&2; die "apt-get install docker.io failed"; }
    fi
}

# Is a live (not zombie) dockerd process there? Read /proc: no procps needed.
dockerd_running() {
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '$2 == "(dockerd)" && $3 != "Z" {f = 1} END {exit !f}'
}

launched=0
start_engine() {
    if dockerd_running; then
        log "dockerd is already running; waiting for it"
        return
    fi
    # A dockerd killed without cleanup leaves pid files behind, and a new
    # dockerd then refuses to start.
    rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
    mkdir -p "$(dirname "$dockerd_log")"
    log "starting dockerd (log: $dockerd_log)"
    # setsid + nohup: dockerd outlives this script and the CI step that ran it.
    setsid nohup dockerd --bridge=none --iptables=false --ip6tables=false \
        >>"$dockerd_log" 2>&1 </dev/null &
    launched=$((launched + 1))
}

if engine_up; then
    log "Docker engine already running"
else
    command -v dockerd >/dev/null || install_engine
    command -v docker >/dev/null || die "docker client missing after installing docker.io"
    start_engine
    t0=$SECONDS
    until engine_up; do
        sleep 1
        if ! dockerd_running; then
            # Ours died: that is an error. One found running died: start ours.
            if (( launched > 0 )); then
                tail -30 "$dockerd_log" >&2 2>/dev/null || true
                die "dockerd exited (see $dockerd_log)"
            fi
            start_engine
        fi
        if (( SECONDS - t0 >= wait_seconds )); then
            tail -30 "$dockerd_log" >&2 2>/dev/null || true
            die "Docker engine not ready after ${wait_seconds}s (see $dockerd_log)"
        fi
    done
    log "Docker engine ready after $((SECONDS - t0))s"
fi

if timeout 30 docker image inspect "$image" >/dev/null 2>&1; then
    log "image $image present"
elif [[ "$image" == pgpart/* ]]; then
    PGPART_PG_IMAGE=$image scripts/build_pg_image.sh
else
    log "pulling $image"
    timeout 600 docker pull -q "$image" >/dev/null \
        || die "could not pull $image (no registry reachable?); use PGPART_PG_IMAGE=pgpart/postgres:15-local"
fi
