# -*- coding: utf-8 -*-
"""The journal: pgpart's own schema in the target database, recording each table's phase.

Every phase change is written in the same transaction as the work it records, so after a
crash the journal says exactly what exists: a re-run continues from the recorded phase.

    prepared    the partitioned <t>_new, its partitions and indexes exist
    syncing     the row trigger on <t> applies every change to <t>_new
    backfilled  every pre-existing row has been copied (chunks in pgpart.backfill_chunks)
    verified    per-month counts and hashes matched
    swapped     <t>_new is now <t>, the original is <t>_old, a reverse trigger keeps it current
    converted   ANALYZE done; the conversion is complete and verify can be run at any time
    cleaned     <t>_old dropped after the validation window
    rolled_back the original table is live again (or the partial conversion was removed)
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json

from ansible.module_utils.pgpart_db import sql

PHASES = ('prepared', 'syncing', 'backfilled', 'verified', 'swapped', 'converted', 'cleaned', 'rolled_back')
# Phases in which the original table is still the live one.
BEFORE_SWAP = ('prepared', 'syncing', 'backfilled', 'verified')
# Phases in which the partitioned table is live and <t>_old still exists.
AFTER_SWAP = ('swapped', 'converted')

SCHEMA = 'pgpart'

DDL = [
    "CREATE SCHEMA IF NOT EXISTS pgpart",
    "COMMENT ON SCHEMA pgpart IS 'pgpart journal: partition conversions of this database (do not edit)'",
    "REVOKE ALL ON SCHEMA pgpart FROM PUBLIC",
    """CREATE TABLE IF NOT EXISTS pgpart.conversions (
        table_schema text NOT NULL,
        table_name text NOT NULL,
        phase text NOT NULL CHECK (phase IN ('prepared', 'syncing', 'backfilled', 'verified',
                                             'swapped', 'converted', 'cleaned', 'rolled_back')),
        plan jsonb NOT NULL,
        original jsonb NOT NULL,
        saved jsonb NOT NULL DEFAULT '{}',
        backfill jsonb NOT NULL DEFAULT '{}',
        verification jsonb NOT NULL DEFAULT '{}',
        started_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        swapped_at timestamptz,
        finished_at timestamptz,
        PRIMARY KEY (table_schema, table_name))""",
    """CREATE TABLE IF NOT EXISTS pgpart.backfill_chunks (
        table_schema text NOT NULL,
        table_name text NOT NULL,
        chunk integer NOT NULL,
        rows bigint NOT NULL,
        done_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        PRIMARY KEY (table_schema, table_name, chunk),
        FOREIGN KEY (table_schema, table_name) REFERENCES pgpart.conversions ON DELETE CASCADE)""",
    """CREATE TABLE IF NOT EXISTS pgpart.backups (
        id bigserial PRIMARY KEY,
        taken_at timestamptz NOT NULL DEFAULT now(),
        table_schema text NOT NULL,
        table_name text NOT NULL,
        manifest_path text NOT NULL,
        dump_sha256 text NOT NULL,
        dump_bytes bigint NOT NULL,
        row_count bigint NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS pgpart.events (
        id bigserial PRIMARY KEY,
        at timestamptz NOT NULL DEFAULT clock_timestamp(),
        table_schema text NOT NULL,
        table_name text NOT NULL,
        action text NOT NULL,
        detail jsonb NOT NULL DEFAULT '{}')""",
]


def exists(session):
    return session.scalar("SELECT to_regclass('pgpart.conversions') IS NOT NULL")


def ensure(session):
    """Create the journal if missing (idempotent; run under the table's advisory lock)."""
    if exists(session):
        return False
    with session.transaction():
        session.run("SELECT pg_advisory_xact_lock(hashtext('pgpart journal'))")
        for statement in DDL:
            session.run(statement)
    return True


def read(session, schema, table):
    """The journal row of a table as a dict, or None (also when there is no journal yet)."""
    if not exists(session):
        return None
    return session.one(
        "SELECT table_schema, table_name, phase, plan, original, saved, backfill, verification, "
        "started_at::text, updated_at::text, swapped_at::text, finished_at::text, "
        "extract(epoch FROM now() - swapped_at)::float / 3600 AS hours_since_swap "
        "FROM pgpart.conversions WHERE table_schema = %s AND table_name = %s", (schema, table))


def start(session, schema, table, plan, original):
    """Record a new conversion in phase 'prepared' (replacing a rolled-back or cleaned one)."""
    session.run(
        "INSERT INTO pgpart.conversions (table_schema, table_name, phase, plan, original) "
        "VALUES (%s, %s, 'prepared', %s, %s) ON CONFLICT (table_schema, table_name) DO UPDATE "
        "SET phase = 'prepared', plan = EXCLUDED.plan, original = EXCLUDED.original, saved = '{}', "
        "backfill = '{}', verification = '{}', started_at = now(), updated_at = now(), swapped_at = NULL, "
        "finished_at = NULL",
        (schema, table, json.dumps(plan), json.dumps(original)), record=False)
    session.run("DELETE FROM pgpart.backfill_chunks WHERE table_schema = %s AND table_name = %s",
                (schema, table), record=False)
    log(session, schema, table, 'prepared', {'partitions': len(plan['partitions'])})


def set_phase(session, schema, table, phase, **fields):
    """Move a table to `phase`; `fields` are jsonb columns to set, or timestamps set to now()."""
    assignments, params = [sql.SQL('phase = %s, updated_at = now()')], [phase]
    for name, value in sorted(fields.items()):
        if name in ('swapped_at', 'finished_at'):
            assignments.append(sql.SQL('{} = now()').format(sql.Identifier(name)))
        else:
            assignments.append(sql.SQL('{} = %s').format(sql.Identifier(name)))
            params.append(json.dumps(value))
    session.run(sql.SQL('UPDATE pgpart.conversions SET {} WHERE table_schema = %s AND table_name = %s')
                .format(sql.SQL(', ').join(assignments)), params + [schema, table], record=False)
    log(session, schema, table, phase)


def update(session, schema, table, **fields):
    """Set jsonb fields without changing the phase."""
    for name, value in sorted(fields.items()):
        session.run(sql.SQL('UPDATE pgpart.conversions SET {} = %s, updated_at = now() '
                            'WHERE table_schema = %s AND table_name = %s').format(sql.Identifier(name)),
                    (json.dumps(value), schema, table), record=False)


def log(session, schema, table, action, detail=None):
    session.run("INSERT INTO pgpart.events (table_schema, table_name, action, detail) VALUES (%s, %s, %s, %s)",
                (schema, table, action, json.dumps(detail or {})), record=False)


def chunks_done(session, schema, table):
    rows = session.fetch("SELECT chunk FROM pgpart.backfill_chunks WHERE table_schema = %s AND table_name = %s",
                         (schema, table))
    return set(r['chunk'] for r in rows)


def backfill_progress(session, schema, table):
    """Chunks and rows copied so far, and the first and latest chunk completion times."""
    return session.one(
        "SELECT count(*)::int AS chunks_done, coalesce(sum(rows), 0)::bigint AS rows_done, "
        "extract(epoch FROM max(done_at) - min(done_at))::float AS seconds, "
        "extract(epoch FROM clock_timestamp() - max(done_at))::float AS seconds_since_last "
        "FROM pgpart.backfill_chunks WHERE table_schema = %s AND table_name = %s", (schema, table))


def record_backup(session, schema, table, manifest_path, sha256, size, rows, taken_at):
    """taken_at: the time of the dump's snapshot (what 'rows written since the backup' counts from)."""
    session.run("INSERT INTO pgpart.backups (taken_at, table_schema, table_name, manifest_path, dump_sha256, "
                "dump_bytes, row_count) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (taken_at, schema, table, manifest_path, sha256, size, rows), record=False)


def latest_backup(session, schema, table):
    """The newest recorded backup of a table, or None."""
    if not exists(session):
        return None
    return session.one(
        "SELECT taken_at::text, manifest_path, dump_sha256, dump_bytes, row_count FROM pgpart.backups "
        "WHERE table_schema = %s AND table_name = %s ORDER BY taken_at DESC, id DESC LIMIT 1", (schema, table))


def history(session, schema, table, limit=50):
    if not exists(session):
        return []
    return session.fetch(
        "SELECT at::text, action, detail FROM pgpart.events WHERE table_schema = %s AND table_name = %s "
        "ORDER BY id DESC LIMIT %s", (schema, table, limit))
