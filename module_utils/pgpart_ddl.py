# -*- coding: utf-8 -*-
"""Build the partitioned table and its partitions from the catalog description.

Nothing here uses CREATE TABLE ... LIKE the original (trap #1: a second primary key;
trap #3: identity restarts at 1).  Columns, defaults, generated columns, identity options,
CHECKs, the primary key (id, <key>), unique constraints, every index, outgoing foreign
keys, policies, comments and statistics targets are written out explicitly.  The indexes
that back no constraint are built after the copy (build_secondary_indexes).

Partitions are always created as plain tables, given a CHECK implying their bounds and
attached: ATTACH takes only SHARE UPDATE EXCLUSIVE on the parent (trap #13), so the same
code serves the first build and monthly maintenance on a live table.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible.module_utils.pgpart_db import on_siblings, sql, ident
from ansible.module_utils import pgpart_catalog as catalog
from ansible.module_utils import pgpart_plan as planning


def new_primary_key(info, key):
    columns = list(info['primary_key']['columns'])
    return columns if key in columns else columns + [key]


def identity_options(sequence):
    return sql.SQL('INCREMENT BY {} MINVALUE {} MAXVALUE {} START WITH {} CACHE {} {}').format(
        sql.Literal(int(sequence['increment'])), sql.Literal(int(sequence['min_value'])),
        sql.Literal(int(sequence['max_value'])), sql.Literal(int(sequence['start'])),
        sql.Literal(int(sequence['cache'])), sql.SQL('CYCLE' if sequence['cycle'] else 'NO CYCLE'))


def column_definition(column, sequences):
    """One column of CREATE TABLE.  Type, default and expressions are server-deparsed text."""
    parts = [ident(column['name']), sql.SQL(column['type'])]
    if column['collation']:
        parts += [sql.SQL('COLLATE'), sql.SQL(column['collation'])]
    if column['generated'] == 's':
        parts.append(sql.SQL('GENERATED ALWAYS AS ({}) STORED').format(sql.SQL(column['generation_expr'])))
    elif column['generated'] == 'v':
        parts.append(sql.SQL('GENERATED ALWAYS AS ({}) VIRTUAL').format(sql.SQL(column['generation_expr'])))
    elif column['identity']:
        sequence = next(s for s in sequences if s['column'] == column['name'] and s['kind'] == 'identity')
        parts.append(sql.SQL('GENERATED {} AS IDENTITY ({})').format(
            sql.SQL('ALWAYS' if column['identity'] == 'a' else 'BY DEFAULT'), identity_options(sequence)))
    elif column['default'] is not None:
        parts += [sql.SQL('DEFAULT'), sql.SQL(column['default'])]
    if column['not_null']:
        parts.append(sql.SQL('NOT NULL'))
    return sql.SQL(' ').join(parts)


def create_parent(session, info, plan, secondary_indexes=True):
    """CREATE TABLE <t>_new (...) PARTITION BY RANGE (key), with its constraints and (unless
    deferred to build_secondary_indexes) its other indexes."""
    schema, key = info['schema'], plan['key']
    new = ident(schema, plan['new_table'])
    columns = [column_definition(c, info['sequences']) for c in info['columns']]
    columns.append(sql.SQL('PRIMARY KEY ({})').format(
        sql.SQL(', ').join(ident(c) for c in new_primary_key(info, key))))
    session.run(sql.SQL('CREATE TABLE {} ({}) PARTITION BY RANGE ({})').format(
        new, sql.SQL(', ').join(columns), ident(key)))
    for con in info['constraints']:
        if con['type'] in ('c', 'f'):
            session.run(sql.SQL('ALTER TABLE {} ADD CONSTRAINT {} {}').format(
                new, ident(con['name']), sql.SQL(con['definition'])))
        elif con['type'] == 'u':
            session.run(sql.SQL('ALTER TABLE {} ADD {}').format(new, sql.SQL(con['definition'])))
    for index in secondary(info) if secondary_indexes else []:
        session.run(index_on(index['definition'], info, new))
    for column in info['columns']:
        if column['statistics_target'] is not None:
            session.run(sql.SQL('ALTER TABLE {} ALTER COLUMN {} SET STATISTICS {}').format(
                new, ident(column['name']), sql.Literal(column['statistics_target'])))
        if column['storage'] != column['type_storage']:
            session.run(sql.SQL('ALTER TABLE {} ALTER COLUMN {} SET STORAGE {}').format(
                new, ident(column['name']), sql.SQL(STORAGE[column['storage']])))


STORAGE = {'p': 'PLAIN', 'e': 'EXTERNAL', 'm': 'MAIN', 'x': 'EXTENDED'}
_IDENT = r'(?:"(?:[^"]|"")+"|[^\s."]+)'
_INDEX_PREFIX = re.compile(r'^CREATE (UNIQUE )?INDEX %s ON (?:ONLY )?%s(?:\.%s)? USING ' % (_IDENT, _IDENT, _IDENT))


def index_body(definition):
    """'USING btree (a, b) WHERE ...' part of pg_get_indexdef output, and whether UNIQUE."""
    match = _INDEX_PREFIX.match(definition)
    if not match:
        raise ValueError('unexpected index definition: %s' % definition)
    return definition[match.end() - len('USING '):], bool(match.group(1))


def index_on(definition, info, target):
    """The original index re-created, unnamed, on `target` (names are settled at the swap)."""
    body, unique = index_body(definition)
    return sql.SQL('CREATE {}INDEX ON {} {}').format(
        sql.SQL('UNIQUE ' if unique else ''), target, sql.SQL(body))


def finish_parent(session, info, plan):
    """Owner, comments and policies of the new parent; RLS on, no grants until the swap."""
    new = ident(info['schema'], plan['new_table'])
    session.run(sql.SQL('ALTER TABLE {} OWNER TO {}').format(new, ident(info['owner'])))
    lock_down(session, new, info['schema'], plan['new_table'], info['owner'])
    set_replica_identity(session, new, info['replica_identity'])
    if info['comment'] is not None:
        session.run(sql.SQL('COMMENT ON TABLE {} IS %s').format(new), (info['comment'],))
    for column in info['columns']:
        if column['comment'] is not None:
            session.run(sql.SQL('COMMENT ON COLUMN {} IS %s').format(ident(info['schema'], plan['new_table'],
                                                                        column['name'])), (column['comment'],))
    for con in info['constraints']:
        if con['comment'] is not None and con['type'] in ('c', 'f'):
            session.run(sql.SQL('COMMENT ON CONSTRAINT {} ON {} IS %s').format(ident(con['name']), new),
                        (con['comment'],))
    for policy in info['policies']:
        session.run(policy_statement(policy, new))


def lock_down(session, table, schema, name, owner):
    """RLS on and no privileges for anyone but the owner (whatever default privileges granted)."""
    session.run(sql.SQL('ALTER TABLE {} ENABLE ROW LEVEL SECURITY').format(table))
    for grantee in sorted(set(g['grantee'] for g in catalog.table_acl(session, schema, name))):
        session.run(sql.SQL('REVOKE ALL ON TABLE {} FROM {}').format(table, role_ident(grantee)))


def role_ident(role):
    return sql.SQL('PUBLIC') if role in (None, 'PUBLIC') else ident(role)


def policy_statement(policy, table):
    roles = sql.SQL(', ').join(role_ident(r) for r in (policy['roles'] or [None]))
    parts = [sql.SQL('CREATE POLICY {} ON {} AS {} FOR {} TO {}').format(
        ident(policy['name']), table, sql.SQL('PERMISSIVE' if policy['permissive'] else 'RESTRICTIVE'),
        sql.SQL(policy['command']), roles)]
    if policy['using_expr'] is not None:
        parts.append(sql.SQL('USING ({})').format(sql.SQL(policy['using_expr'])))
    if policy['check_expr'] is not None:
        parts.append(sql.SQL('WITH CHECK ({})').format(sql.SQL(policy['check_expr'])))
    return sql.SQL(' ').join(parts)


def partition_template(info):
    """What every partition of this table gets: kept in the plan so maintenance can reuse it."""
    storage_options = [o for o in info['reloptions'] if not o.startswith('toast.')]
    return {'owner': info['owner'], 'reloptions': storage_options,
            'replica_identity': info['replica_identity']}


def attach_partition(session, schema, parent, partition, key, key_type, template):
    """CREATE TABLE + CHECK + ATTACH + settings; the caller owns the transaction."""
    leaf = ident(schema, partition['name'])
    lower = planning.bound_literal(partition['from'], key_type)
    upper = planning.bound_literal(partition['to'], key_type)
    session.run(sql.SQL(
        'CREATE TABLE {} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING GENERATED '
        'INCLUDING STORAGE INCLUDING COMPRESSION)').format(leaf, ident(schema, parent)))
    check_name = ident(planning.fit_name(partition['name'], '_bounds'))
    check = sql.SQL('{} < %s').format(ident(key)) if lower is None else \
        sql.SQL('{k} >= %s AND {k} < %s').format(k=ident(key))
    params = (upper,) if lower is None else (lower, upper)
    session.run(sql.SQL('ALTER TABLE {} ADD CONSTRAINT {} CHECK ({})').format(leaf, check_name, check), params)
    session.run(sql.SQL('ALTER TABLE {} ATTACH PARTITION {} FOR VALUES FROM ({}) TO (%s)').format(
        ident(schema, parent), leaf, sql.SQL('MINVALUE') if lower is None else sql.SQL('%s')),
        (upper,) if lower is None else (lower, upper))
    session.run(sql.SQL('ALTER TABLE {} DROP CONSTRAINT {}').format(leaf, check_name))
    session.run(sql.SQL('ALTER TABLE {} OWNER TO {}').format(leaf, ident(template['owner'])))
    lock_down(session, leaf, schema, partition['name'], template['owner'])
    if template['reloptions']:
        session.run(sql.SQL('ALTER TABLE {} SET ({})').format(
            leaf, sql.SQL(', ').join(sql.SQL(o) for o in template['reloptions'] if _safe_reloption(o))))
    set_replica_identity(session, leaf, template['replica_identity'])


def set_replica_identity(session, table, identity):
    """FULL or NOTHING as the original had (DEFAULT needs nothing); partitions do not inherit it."""
    if identity in ('f', 'n'):
        session.run(sql.SQL('ALTER TABLE {} REPLICA IDENTITY {}').format(
            table, sql.SQL('FULL' if identity == 'f' else 'NOTHING')))


_RELOPTION = re.compile(r'^[a-z_.]+=[A-Za-z0-9_.\-]+$')


def _safe_reloption(option):
    """Reloptions come from pg_class as name=value; refuse anything that is not."""
    if not _RELOPTION.match(option):
        raise ValueError('unexpected storage option %r' % option)
    return True


def secondary(info):
    """Indexes that back no constraint (the primary key and unique constraints do)."""
    return [i for i in info['indexes'] if not i['constraint_name']]


def build(session, info, plan, secondary_indexes=True):
    """The whole partitioned table, inside the caller's transaction.

    secondary_indexes=False leaves the indexes that back no constraint to
    build_secondary_indexes(), after the copy: loading into fewer indexes and building them
    afterwards is about twice as fast (bench/README.md).
    """
    create_parent(session, info, plan, secondary_indexes)
    for partition in plan['partitions']:
        attach_partition(session, info['schema'], plan['new_table'], partition, plan['key'],
                         plan['key_type'], plan['partition_template'])
    finish_parent(session, info, plan)


def build_secondary_indexes(session, info, plan, workers=1):
    """Each secondary index of the original on the filled, not yet live, partitioned table.

    The parent's index is created ON ONLY (instant, invalid until complete); each partition's
    CONCURRENTLY, so the sync trigger's writes never wait (trap #5), then attached; the parent's
    becomes valid with the last attachment.  Partition indexes are built on up to `workers`
    connections at once.  Idempotent: a re-run after a crash finds what exists by definition,
    drops a partition index a crash left invalid, and builds the rest.  Runs outside a
    transaction (CREATE INDEX CONCURRENTLY cannot run in one).  Returns how many it built.
    """
    schema, parent = info['schema'], plan['new_table']
    work = []
    for index in secondary(info):
        body, unique = index_body(index['definition'])
        parent_index = index_with_body(session, schema, parent, body)
        if parent_index is None:
            session.run(sql.SQL('CREATE {}INDEX ON ONLY {} {}').format(
                sql.SQL('UNIQUE ' if unique else ''), ident(schema, parent), sql.SQL(body)))
            parent_index = index_with_body(session, schema, parent, body)
        work += [(parent_index, body, unique, p['name']) for p in plan['partitions']]
    built = []

    def build_one(worker, item):
        parent_index, body, unique, leaf = item
        built.append(attach_partition_index(worker, schema, leaf, parent_index, body, unique))
    on_siblings(session, work, workers, build_one)
    return sum(built)


def attach_partition_index(session, schema, leaf, parent_index, body, unique):
    """Build (CONCURRENTLY) and attach one partition's index; 0 when it was already there."""
    if session.scalar("SELECT EXISTS (SELECT 1 FROM pg_inherits i JOIN pg_index x ON x.indexrelid = i.inhrelid "
                      "WHERE i.inhparent = %s AND x.indrelid = %s::regclass)",
                      (parent_index['oid'], catalog.regclass_text(session, schema, leaf))):
        return 0
    existing = index_with_body(session, schema, leaf, body)
    if existing is not None and not existing['is_valid']:
        session.run(sql.SQL('DROP INDEX CONCURRENTLY {}').format(ident(schema, existing['name'])))
        existing = None
    if existing is None:
        session.run(sql.SQL('CREATE {}INDEX CONCURRENTLY ON {} {}').format(
            sql.SQL('UNIQUE ' if unique else ''), ident(schema, leaf), sql.SQL(body)))
        existing = index_with_body(session, schema, leaf, body)
    session.run(sql.SQL('ALTER INDEX {} ATTACH PARTITION {}').format(
        ident(schema, parent_index['name']), ident(schema, existing['name'])))
    return 1


def index_with_body(session, schema, table, body):
    """The index of schema.table whose definition, name and table aside, is `body`, or None."""
    for index in session.fetch(catalog.INDEXES_SQL, (catalog.regclass_text(session, schema, table),)):
        if not index['is_primary'] and index_body(index['definition'])[0] == body:
            return index
    return None


def index_pairs(old_info, new_info):
    """[(old index name, new index name)] matched by definition; the primary keys pair up."""
    def body(index):
        return index_body(index['definition'])
    pairs, unmatched = [], list(new_info['indexes'])
    for index in old_info['indexes']:
        if index['is_primary']:
            match = next((n for n in unmatched if n['is_primary']), None)
        else:
            match = next((n for n in unmatched if not n['is_primary'] and body(n) == body(index)), None)
        if match is None:
            raise ValueError('no index on the partitioned table matches %s' % index['name'])
        unmatched.remove(match)
        pairs.append((index['name'], match['name']))
    return pairs


def copy_list(info):
    return sql.SQL(', ').join(ident(c) for c in catalog.copy_columns(info))
