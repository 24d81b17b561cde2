# -*- coding: utf-8 -*-
"""Row triggers that keep a second copy of a table exactly current (traps #9 and #10).

Forward, before the swap: a trigger on the original table applies every INSERT, UPDATE,
DELETE and TRUNCATE to <t>_new.  It is installed before the backfill starts, so every
write committed after it is carried by the trigger and every row committed before it is
seen by the backfill; the backfill inserts with ON CONFLICT DO NOTHING and locks the rows
it reads (FOR SHARE), so a concurrent update or delete waits for the batch to commit and
then reaches the copied row.

Reverse, after the swap: the same trigger on the partitioned table applies every change to
<t>_old, so a rollback before cleanup loses nothing.

Changes are applied as upserts on the target's primary key: the latest row image wins,
whichever of the trigger and the backfill gets there first.  The functions are generated
per table with static SQL (no EXECUTE), SECURITY DEFINER owned by the table owner (the API
roles that write the table have no rights on the copy), with a fixed search_path.  The
triggers are ENABLE ALWAYS so they also fire under session_replication_role = replica.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.pgpart_db import sql, ident
from ansible.module_utils import pgpart_catalog as catalog

ROW_TRIGGER = 'pgpart_sync'
TRUNCATE_TRIGGER = 'pgpart_sync_truncate'


def function_names(table_oid, direction):
    """(row function, truncate function) names in schema pgpart for 'forward' or 'reverse'."""
    return ('sync_%s_%s' % (table_oid, direction), 'truncate_%s_%s' % (table_oid, direction))


def _upsert(target, columns, conflict, overriding, never_updated):
    """INSERT the NEW row into target; on a key conflict overwrite it with the NEW image."""
    updatable = [c for c in columns if c not in conflict and c not in never_updated]
    action = sql.SQL('DO NOTHING') if not updatable else sql.SQL('DO UPDATE SET {}').format(
        sql.SQL(', ').join(sql.SQL('{c} = EXCLUDED.{c}').format(c=ident(c)) for c in updatable))
    return sql.SQL('INSERT INTO {t} ({cols}) {ov}VALUES ({vals}) ON CONFLICT ({keys}) {action};').format(
        t=target, cols=sql.SQL(', ').join(ident(c) for c in columns),
        ov=sql.SQL('OVERRIDING SYSTEM VALUE ' if overriding else ''),
        vals=sql.SQL(', ').join(sql.SQL('NEW.{}').format(ident(c)) for c in columns),
        keys=sql.SQL(', ').join(ident(c) for c in conflict), action=action)


def _match(keys, row):
    return sql.SQL(' AND ').join(sql.SQL('{c} = {r}.{c}').format(c=ident(c), r=sql.SQL(row)) for c in keys)


def row_function_body(target, target_name, columns, conflict, row_keys, overriding, never_updated):
    """plpgsql body applying one row change to `target`.

    conflict: the target's primary key columns.  row_keys: the columns identifying a row
    in the target (the same, spelled for OLD/NEW).  never_updated: GENERATED ALWAYS
    identity columns, which an upsert may not SET.
    """
    upsert = _upsert(target, columns, conflict, overriding, never_updated)
    key_changed = sql.SQL(' OR ').join(
        sql.SQL('OLD.{c} IS DISTINCT FROM NEW.{c}').format(c=ident(c)) for c in row_keys)
    return sql.SQL(
        "BEGIN\n"
        "  {guard}\n"
        "  IF TG_OP = 'INSERT' THEN\n    {upsert}\n"
        "  ELSIF TG_OP = 'UPDATE' THEN\n"
        "    IF {key_changed} THEN\n      DELETE FROM {t} WHERE {old_match};\n    END IF;\n"
        "    {upsert}\n"
        "  ELSE\n    DELETE FROM {t} WHERE {old_match};\n  END IF;\n"
        "  RETURN NULL;\nEND").format(
            guard=target_guard(target_name), upsert=upsert, key_changed=key_changed, t=target,
            old_match=_match(row_keys, 'OLD'))


def target_guard(target_name):
    """If the copy was dropped by hand, the application's writes must still succeed: skip.
    (Verification then reports the missing copy; nothing is silently wrong.)
    target_name: the target's quoted, qualified name as text."""
    return sql.SQL('IF to_regclass({}) IS NULL THEN RETURN NULL; END IF;').format(sql.Literal(target_name))


def install(session, source, target, source_info, target_pk, table_oid, direction, owner):
    """Create the functions and triggers on `source` that mirror changes into `target`.

    source/target are (schema, name).  The caller owns the transaction (and its lock_timeout:
    CREATE TRIGGER takes SHARE ROW EXCLUSIVE on the source, which briefly blocks its writers).
    """
    row_fn, truncate_fn = function_names(table_oid, direction)
    columns = catalog.copy_columns(source_info)
    always_identity = [c['name'] for c in source_info['columns'] if c['identity'] == 'a']
    overriding = bool(always_identity) or target_has_always_identity(session, target)
    target_name = ident(*target).as_string(session.conn)
    body = row_function_body(ident(*target), target_name, columns, target_pk, target_pk, overriding,
                             [c for c in always_identity if c not in target_pk])
    _create_function(session, row_fn, body, owner)
    _create_function(session, truncate_fn, sql.SQL('BEGIN\n  {}\n  TRUNCATE {};\n  RETURN NULL;\nEND').format(
        target_guard(target_name), ident(*target)), owner)
    src = ident(*source)
    session.run(sql.SQL('CREATE TRIGGER {} AFTER INSERT OR UPDATE OR DELETE ON {} FOR EACH ROW '
                        'EXECUTE FUNCTION {}()').format(ident(ROW_TRIGGER), src, ident('pgpart', row_fn)))
    session.run(sql.SQL('CREATE TRIGGER {} AFTER TRUNCATE ON {} FOR EACH STATEMENT '
                        'EXECUTE FUNCTION {}()').format(ident(TRUNCATE_TRIGGER), src, ident('pgpart', truncate_fn)))
    for trigger in (ROW_TRIGGER, TRUNCATE_TRIGGER):
        session.run(sql.SQL('ALTER TABLE {} ENABLE ALWAYS TRIGGER {}').format(src, ident(trigger)))


def target_has_always_identity(session, target):
    return bool(session.scalar(
        "SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relname = %s AND a.attidentity = 'a'", target))


def _create_function(session, name, body, owner):
    fn = ident('pgpart', name)
    session.run(sql.SQL('CREATE OR REPLACE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER '
                        'SET search_path = pg_catalog, pg_temp AS %s').format(fn), (body.as_string(session.conn),))
    session.run(sql.SQL('REVOKE ALL ON FUNCTION {}() FROM PUBLIC').format(fn))
    session.run(sql.SQL('ALTER FUNCTION {}() OWNER TO {}').format(fn, ident(owner)))


def remove(session, source, table_oid, direction):
    """Drop the triggers on `source` (if it still exists) and their functions."""
    row_fn, truncate_fn = function_names(table_oid, direction)
    if source is not None:
        for trigger in (ROW_TRIGGER, TRUNCATE_TRIGGER):
            session.run(sql.SQL('DROP TRIGGER IF EXISTS {} ON {}').format(ident(trigger), ident(*source)))
    for fn in (row_fn, truncate_fn):
        session.run(sql.SQL('DROP FUNCTION IF EXISTS {}()').format(ident('pgpart', fn)))


def grant_schema_to_owner(session, owner):
    """The table owner must be able to own functions in schema pgpart."""
    if not session.scalar("SELECT pg_get_userbyid(nspowner) = %s FROM pg_namespace WHERE nspname = 'pgpart'",
                          (owner,)):
        session.run(sql.SQL('GRANT USAGE, CREATE ON SCHEMA pgpart TO {}').format(ident(owner)))
