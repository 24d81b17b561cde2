#!/usr/bin/env bash
# Build the PostgreSQL 15 test image without any container registry:
# debootstrap a minimal Debian 12 with postgresql-15 from Debian's mirror,
# add docker/docker-entrypoint.sh, and `docker import` the tree.
#
#   scripts/build_pg_image.sh            (root, a running Docker engine)
#
# Environment:
#   PGPART_PG_IMAGE   image name (default pgpart/postgres:15-local)
#   DEBIAN_MIRROR     default http://deb.debian.org/debian
#   BUILD_DIR         scratch parent directory (default /var/tmp)
#
# The image honours the official postgres image's variables and arguments;
# see docker/docker-entrypoint.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

image=${PGPART_PG_IMAGE:-pgpart/postgres:15-local}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
pgver=15

log() { echo "build_pg_image: $*"; }
die() { echo "build_pg_image: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap needs it)"
timeout 10 docker info >/dev/null 2>&1 || die "no Docker engine; run scripts/provision_docker.sh"

if ! command -v debootstrap >/dev/null; then
    log "installing debootstrap"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get install -y -q debootstrap >/dev/null 2>&1 \
        || { timeout 300 apt-get update -q >/dev/null && timeout 300 apt-get install -y -q debootstrap >/dev/null; } \
        || die "could not install debootstrap"
fi

start=$SECONDS
old_id=$(docker image inspect -f '{{.Id}}' "$image" 2>/dev/null || true)
root=$(mktemp -d "${BUILD_DIR:-/var/tmp}/pgpart-rootfs.XXXXXX")
cleanup() {
    # debootstrap unmounts proc/sys itself, but not when it is killed:
    # never let rm walk into a mounted /proc or /dev.
    local m
    awk -v r="$root" 'index($2, r) == 1 {print $2}' /proc/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$root"
}
trap cleanup EXIT

log "debootstrap $suite with postgresql-$pgver into $root (log: $root.log)"
# The postinst scripts run in the chroot but start no server there (checked:
# no postgres process is left with its root in the build tree).
if ! timeout 900 debootstrap --variant=minbase --include="postgresql-$pgver" \
        "$suite" "$root" "$mirror" >"$root.log" 2>&1; then
    tail -30 "$root.log" >&2
    die "debootstrap failed (full log: $root.log)"
fi
rm -f "$root.log"
log "debootstrap done after $((SECONDS - start))s"

# postgresql-common's postinst created a 15/main cluster we do not use.
rm -rf "$root/var/lib/postgresql/$pgver" "$root/etc/postgresql/$pgver"
# Listen on every address by default, as the official image does; tests
# pass -c listen_addresses=127.0.0.1 since they share the host network.
sed -i "s/^#listen_addresses = 'localhost'/listen_addresses = '*'/" \
    "$root/usr/share/postgresql/$pgver/postgresql.conf.sample"
grep -q "^listen_addresses = '\*'" "$root/usr/share/postgresql/$pgver/postgresql.conf.sample" \
    || die "could not set listen_addresses in postgresql.conf.sample"
install -m 0755 docker/docker-entrypoint.sh "$root/usr/local/bin/docker-entrypoint.sh"
mkdir -p "$root/docker-entrypoint-initdb.d"
# Keep it small: documentation, translations, caches and logs are not needed,
# nor LLVM (~150 MB), used only by JIT compilation; without llvmjit.so the
# server simply runs with JIT unavailable.
rm -rf "$root"/usr/share/{doc,man,info,locale}/* "$root"/var/cache/apt/* \
       "$root"/var/lib/apt/lists/* "$root"/var/log/* "$root/debootstrap" \
       "$root/usr/lib/postgresql/$pgver/lib/"{llvmjit.so,llvmjit_types.bc,bitcode} \
       "$root"/usr/lib/x86_64-linux-gnu/{libLLVM,libz3}*

log "importing as $image"
tar -C "$root" --numeric-owner --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' -c . |
    docker import \
        --change "ENV PATH=/usr/lib/postgresql/$pgver/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" \
        --change 'ENV LANG=C.UTF-8' \
        --change 'ENV PGDATA=/var/lib/postgresql/data' \
        --change 'EXPOSE 5432' \
        --change 'ENTRYPOINT ["docker-entrypoint.sh"]' \
        --change 'CMD ["postgres"]' \
        - "$image" >/dev/null
# `docker import` cannot set STOPSIGNAL; a one-line build on top of the local
# image can (no registry involved). SIGINT = fast shutdown, as upstream, so
# `docker stop` does not wait for clients to disconnect.
# (The legacy builder needs no buildx plugin; its deprecation notice is noise.)
if ! out=$(printf 'FROM %s\nSTOPSIGNAL SIGINT\n' "$image" |
           DOCKER_BUILDKIT=0 docker build -q -t "$image" - 2>&1); then
    echo "$out" >&2
    die "docker build (STOPSIGNAL layer) failed"
fi
# A rebuild leaves the previous image untagged: drop it unless a container uses it.
new_id=$(docker image inspect -f '{{.Id}}' "$image")
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    docker rmi "$old_id" >/dev/null 2>&1 || true
fi

size=$(docker image inspect -f '{{.Size}}' "$image")
log "built $image ($((size / 1024 / 1024)) MiB) in $((SECONDS - start))s"
