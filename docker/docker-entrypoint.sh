#!/usr/bin/env bash
# Entrypoint of pgpart/postgres:15-local. It follows the contract of the
# official postgres image, so tests can use either image unchanged:
#   POSTGRES_PASSWORD (required unless POSTGRES_HOST_AUTH_METHOD=trust),
#   POSTGRES_USER (postgres), POSTGRES_DB (= user), POSTGRES_INITDB_ARGS,
#   POSTGRES_INITDB_WALDIR, POSTGRES_HOST_AUTH_METHOD (scram-sha-256), PGDATA,
#   PGPORT (postgres reads it itself), the *_FILE variants of the first four,
#   /docker-entrypoint-initdb.d/*.sh|*.sql|*.sql.gz run once on a fresh PGDATA,
#   and "docker run IMAGE postgres -c name=value ..." or "IMAGE -c ...".
# Unlike the official image, TCP from 127.0.0.1 also needs the password
# (initdb --auth-host), so tests that forget it fail here too.
set -Eeuo pipefail

log() { echo "entrypoint: $*" >&2; }

# VAR_FILE=/path reads VAR from that file (docker secrets style).
file_env() {
    local var=$1 def=${2:-} fvar="${1}_FILE"
    if [ -n "${!var:-}" ] && [ -n "${!fvar:-}" ]; then
        log "both $var and $fvar are set; use one"
        exit 1
    fi
    local val=$def
    if [ -n "${!var:-}" ]; then
        val=${!var}
    elif [ -n "${!fvar:-}" ]; then
        val=$(<"${!fvar}")
    fi
    export "$var"="$val"
    unset "$fvar"
}

# "IMAGE -c x=y" means "IMAGE postgres -c x=y".
if [ $# = 0 ] || [ "${1:0:1}" = '-' ]; then
    set -- postgres "$@"
fi

# Anything else (bash, psql, ...) runs as asked.
if [ "$1" != postgres ]; then
    exec "$@"
fi

: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA

# As root: prepare directories, then re-run this script as postgres.
# setpriv execs in place (no extra process), so postgres gets the signals.
if [ "$(id -u)" = 0 ]; then
    mkdir -p "$PGDATA" /var/run/postgresql
    chmod 700 "$PGDATA"
    chmod 3777 /var/run/postgresql
    chown postgres:postgres "$PGDATA" /var/run/postgresql
    if [ -n "${POSTGRES_INITDB_WALDIR:-}" ]; then
        mkdir -p "$POSTGRES_INITDB_WALDIR"
        chown postgres:postgres "$POSTGRES_INITDB_WALDIR"
    fi
    exec setpriv --reuid=postgres --regid=postgres --init-groups "${BASH_SOURCE[0]}" "$@"
fi

file_env POSTGRES_PASSWORD
file_env POSTGRES_USER postgres
file_env POSTGRES_DB "$POSTGRES_USER"
file_env POSTGRES_INITDB_ARGS
: "${POSTGRES_HOST_AUTH_METHOD:=scram-sha-256}"

init_database() {
    if [ -z "$POSTGRES_PASSWORD" ] && [ "$POSTGRES_HOST_AUTH_METHOD" != trust ]; then
        log "the database is uninitialized and POSTGRES_PASSWORD is not set;"
        log "set it, or POSTGRES_HOST_AUTH_METHOD=trust to allow every connection without one"
        exit 1
    fi
    local opts=(--username="$POSTGRES_USER" --auth-local=trust --auth-host="$POSTGRES_HOST_AUTH_METHOD")
    local pwfile=''
    if [ -n "$POSTGRES_PASSWORD" ]; then
        pwfile=$(umask 077; mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        opts+=(--pwfile="$pwfile")
    fi
    [ -n "${POSTGRES_INITDB_WALDIR:-}" ] && opts+=(--waldir="$POSTGRES_INITDB_WALDIR")
    # POSTGRES_INITDB_ARGS is split into words, as upstream does; it comes
    # last so that it can override the options above.
    # shellcheck disable=SC2086
    initdb "${opts[@]}" $POSTGRES_INITDB_ARGS >/dev/null
    [ -z "$pwfile" ] || rm -f "$pwfile"
    printf '\nhost all all all %s\n' "$POSTGRES_HOST_AUTH_METHOD" >>"$PGDATA/pg_hba.conf"

    # A temporary server on the Unix socket only creates the database and
    # runs the init scripts; the user's -c options apply to it as well.
    local port=${PGPORT:-5432} user_opts=''
    [ $# -gt 1 ] && user_opts=$(printf '%q ' "${@:2}")
    pg_ctl -D "$PGDATA" -w -t 60 -l /tmp/pg-init.log \
        -o "$user_opts -c listen_addresses='' -p $port" start >/dev/null \
        || { cat /tmp/pg-init.log >&2; exit 1; }
    local psql=(psql -v ON_ERROR_STOP=1 --no-psqlrc --no-password -q
                --username "$POSTGRES_USER" --port "$port")
    if [ "$POSTGRES_DB" != postgres ]; then
        "${psql[@]}" --dbname postgres --set db="$POSTGRES_DB" \
            <<<'CREATE DATABASE :"db";'
    fi
    local f
    for f in /docker-entrypoint-initdb.d/*; do
        # shellcheck disable=SC1090  # sources the user's scripts
        case "$f" in
            *.sh)     log "running $f"; . "$f" ;;
            *.sql)    log "running $f"; "${psql[@]}" --dbname "$POSTGRES_DB" -f "$f" ;;
            *.sql.gz) log "running $f"; gunzip -c "$f" | "${psql[@]}" --dbname "$POSTGRES_DB" ;;
            *)        [ -e "$f" ] && log "ignoring $f" ;;
        esac
    done
    pg_ctl -D "$PGDATA" -m fast -w -t 60 stop >/dev/null
    log "database initialized (user $POSTGRES_USER, db $POSTGRES_DB)"
}

if [ ! -s "$PGDATA/PG_VERSION" ]; then
    init_database "$@"
fi
unset POSTGRES_PASSWORD
exec "$@"
