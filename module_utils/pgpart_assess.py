# -*- coding: utf-8 -*-
"""Pre-flight assessment: is a table safe to convert, with every reason when it is not.

assess_table() reads only.  It returns a report with `eligible`, `reasons` (each one alone
refuses the conversion), `concerns` (the conversion proceeds, someone should know), facts
about the table, and the partition plan.  The convert module runs the same assessment
and refuses to act on anything this refuses.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re

from ansible.module_utils.pgpart_db import psycopg2, sql, ident, qualified_text
from ansible.module_utils import pgpart_catalog as catalog
from ansible.module_utils import pgpart_journal as journal
from ansible.module_utils import pgpart_plan as planning

MIN_SERVER_MAJOR = 14
API_ROLES = ('anon', 'authenticated')
REALTIME_PUBLICATION = 'supabase_realtime'


def month_expr(key, key_type):
    """SQL for the UTC calendar month of the key column, as a timestamp."""
    column = ident(key)
    if key_type == 'timestamp with time zone':
        return sql.SQL("date_trunc('month', {} AT TIME ZONE 'UTC')").format(column)
    return sql.SQL("date_trunc('month', {})").format(column)


def key_statistics(session, schema, table, key, key_type):
    """Per-month row counts, NULL count, min and max of the key in one scan of the table."""
    rows = session.fetch(sql.SQL(
        "SELECT to_char({month}, 'YYYY-MM') AS month, count(*)::bigint AS rows, "
        "min({key})::text AS min, max({key})::text AS max FROM ONLY {table} GROUP BY 1").format(
            month=month_expr(key, key_type), key=ident(key), table=ident(schema, table)))
    months = dict((r['month'], r['rows']) for r in rows if r['month'] is not None)
    nulls = sum(r['rows'] for r in rows if r['month'] is None)
    present = [r for r in rows if r['month'] is not None]
    return {
        'months': months,
        'null_count': nulls,
        'min': min(r['min'] for r in present) if present else None,
        'max': max(r['max'] for r in present) if present else None,
        'rows': sum(months.values()) + nulls,
    }


def current_month(session):
    return session.scalar("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')")


def state_of(info, entry):
    """plain | in_progress | swapped | converted | partitioned (by someone else) | missing."""
    phase = entry['phase'] if entry else None
    if phase in ('converted', 'cleaned'):
        return 'converted'
    if phase == 'swapped':
        return 'swapped'
    if info is None:
        return 'missing'
    if phase in journal.BEFORE_SWAP:
        return 'in_progress'
    return 'partitioned' if info['relkind'] == 'p' else 'plain'


def assess_table(session, schema, name, key='created_at', premake=3, max_future_months=24,
                 review_workload=True):
    """The pre-flight report for one table (read-only)."""
    entry = journal.read(session, schema, name)
    info = catalog.read_table(session, schema, name)
    state = state_of(info, entry)
    report = {'table': qualified_text(schema, name), 'schema': schema, 'name': name, 'key': key,
              'state': state, 'phase': entry['phase'] if entry else None,
              'reasons': [], 'concerns': [], 'plan': None}
    if state in ('converted', 'swapped'):
        report.update(eligible=True, plan=entry['plan'],
                      facts=describe(info) if info else {})
        return report
    if state == 'missing':
        report['reasons'].append('table %s does not exist (check the name, schema and database)'
                                 % report['table'])
        report['eligible'] = False
        return report
    reasons, concerns = report['reasons'], report['concerns']
    resuming = state == 'in_progress'  # <t>_new, its partitions and sync triggers are ours
    check_server(session, reasons)
    check_relation(info, reasons)
    column = check_key_column(info, key, reasons)
    check_keys_and_constraints(info, key, reasons)
    check_dependents(info, reasons, concerns, resuming)
    if not resuming:
        check_names(session, info, reasons)
    check_security_and_publications(info, concerns)
    report['facts'] = describe(info)
    if column and info['relkind'] == 'r':
        stats = key_statistics(session, schema, name, key, column['type'])
        report['key_stats'] = {k: v for k, v in stats.items() if k != 'months'}
        if stats['null_count']:
            reasons.append('%d rows have %s IS NULL: no partition can hold them; fix or delete them first'
                           % (stats['null_count'], key))
        plan, plan_reasons = planning.build_plan(name, key, column['type'], stats['months'],
                                                 current_month(session), premake, max_future_months)
        reasons.extend(plan_reasons)
        report['plan'] = entry['plan'] if state == 'in_progress' else plan
    if review_workload:
        report['workload'] = review_queries(session, info, key)
        concerns.extend(w['warning'] for w in report['workload'])
    report['eligible'] = not reasons
    return report


def check_server(session, reasons):
    if session.major < MIN_SERVER_MAJOR:
        reasons.append('PostgreSQL %d is not supported: pgpart needs %d or newer (TID range scans, '
                       'DETACH CONCURRENTLY); PostgreSQL 13 reached end of life in November 2025'
                       % (session.major, MIN_SERVER_MAJOR))
    if session.scalar('SELECT pg_is_in_recovery()'):
        reasons.append('connected to a standby (read-only replica): connect to the primary')


def check_relation(info, reasons):
    if info['relkind'] == 'p':
        reasons.append('%s.%s is already partitioned (not by pgpart): nothing to convert'
                       % (info['schema'], info['name']))
    elif info['relkind'] != 'r':
        reasons.append('%s.%s is not an ordinary table (relkind %s)' % (info['schema'], info['name'], info['relkind']))
    if info['is_partition']:
        reasons.append('the table is itself a partition of another table')
    if info['has_inheritance']:
        reasons.append('the table takes part in table inheritance (INHERITS): not supported')
    if info['persistence'] != 'p':
        reasons.append('the table is UNLOGGED or TEMPORARY: only permanent tables are supported')
    if not info['current_user_owns']:
        reasons.append('the connected role is not the owner of the table (owner: %s) nor a member of '
                       'that role: connect as the owner or a superuser' % info['owner'])
    if info['rules']:
        reasons.append('rules on the table are not supported: %s' % ', '.join(r['name'] for r in info['rules']))
    if info['replica_identity'] == 'i':
        reasons.append('REPLICA IDENTITY USING INDEX %s is not supported: use DEFAULT or FULL'
                       % info['replica_identity_index'])


def check_key_column(info, key, reasons):
    column = catalog.column(info, key)
    if column is None:
        reasons.append('column %s does not exist in %s.%s' % (key, info['schema'], info['name']))
        return None
    if column['type'] not in catalog.KEY_TYPES:
        reasons.append('column %s has type %s: the partition key must be timestamptz, timestamp or date'
                       % (key, column['type']))
        return None
    if column['generated']:
        reasons.append('column %s is a generated column and cannot be the partition key' % key)
    if not column['not_null']:
        reasons.append(
            'column %(k)s is nullable; the partitioned table needs it NOT NULL. Online fix: '
            'ALTER TABLE %(t)s ADD CONSTRAINT %(c)s CHECK (%(k)s IS NOT NULL) NOT VALID; '
            'ALTER TABLE %(t)s VALIDATE CONSTRAINT %(c)s; ALTER TABLE %(t)s ALTER COLUMN %(k)s SET NOT NULL; '
            'ALTER TABLE %(t)s DROP CONSTRAINT %(c)s;' % {
                'k': key, 't': '%s.%s' % (info['schema'], info['name']), 'c': info['name'] + '_key_not_null'})
    return column


def check_keys_and_constraints(info, key, reasons):
    pk = info['primary_key']
    if pk is None:
        reasons.append('the table has no primary key: the sync trigger needs one to apply updates and deletes')
    for fk in info['incoming_fks']:
        reasons.append('foreign key %s on %s references this table: a partitioned table cannot be '
                       'referenced by (id) alone, so it would break' % (fk['name'], fk['referencing_table']))
    for con in info['constraints']:
        if con['type'] == 'u' and key not in con['columns']:
            reasons.append('unique constraint %s on (%s) does not include %s: uniqueness would be lost '
                           'after partitioning' % (con['name'], ', '.join(con['columns']), key))
        if con['type'] == 'x':
            reasons.append('exclusion constraint %s is not supported on a partitioned table' % con['name'])
        if con['type'] in ('c', 'f') and not con['validated']:
            reasons.append('constraint %s is NOT VALID: existing rows may violate it and the copy would fail; '
                           'run ALTER TABLE ... VALIDATE CONSTRAINT %s first (online)' % (con['name'], con['name']))
    for index in info['indexes']:
        if index['is_unique'] and not index['constraint_name'] and (
                key not in index['key_columns'] or index['has_expressions']):
            reasons.append('unique index %s does not include %s as a plain column: uniqueness would be lost'
                           % (index['name'], key))
        if not index['is_valid']:
            reasons.append('index %s is INVALID (a failed CREATE INDEX CONCURRENTLY?): drop or rebuild it'
                           % index['name'])


def check_dependents(info, reasons, concerns, resuming):
    for view in info['views']:
        if view['kind'] == 'm':
            reasons.append('materialized view %s.%s depends on the table: drop it before and re-create it '
                           'after the conversion' % (view['schema'], view['name']))
    for dependent in info['other_dependents']:
        reasons.append('%s depends on the table and would keep pointing at the retired copy' % dependent['object'])
    for stat in info['statistics']:
        reasons.append('extended statistics %s would be lost: drop it before and re-create it after' % stat['name'])
    for trigger in info['triggers']:
        if trigger['is_constraint']:
            reasons.append('constraint trigger %s is not supported' % trigger['name'])
        if trigger['ours'] and not resuming:
            reasons.append('trigger %s belongs to an unfinished pgpart run that the journal does not know: '
                           'remove it (DROP TRIGGER) after checking no run is active' % trigger['name'])
    for user in info['rowtype_users']:
        concerns.append('%s uses the row type of the table; it will keep the old row type and block cleanup '
                        'until re-created' % user['object'])


def check_names(session, info, reasons):
    schema, name = info['schema'], info['name']
    if len(name.encode('utf-8')) + planning.longest_suffix() > planning.MAX_IDENTIFIER_BYTES:
        reasons.append('table name is too long: partition names (%s_pYYYYMM) must fit in 63 bytes' % name)
        return
    names = planning.names_for(name)
    taken = [n for n in (names['new'], names['old'], names['history'])
             if catalog.relation_exists(session, schema, n)]
    for index in info['indexes']:
        retired = planning.fit_name(index['name'], '_old')
        if catalog.relation_exists(session, schema, retired):
            taken.append(retired)
    if taken:
        reasons.append('names pgpart needs are already taken in schema %s: %s (rename or drop them)'
                       % (schema, ', '.join(sorted(set(taken)))))


def check_security_and_publications(info, concerns):
    for pub in info['publications']:
        if pub['name'] == REALTIME_PUBLICATION:
            concerns.append('LOUD WARNING: %s.%s is in publication supabase_realtime. Supabase Realtime does '
                            'not deliver changes of partitioned tables: subscribers will stop receiving them'
                            % (info['schema'], info['name']))
        elif not pub['via_root']:
            concerns.append('publication %s has publish_via_partition_root = false: after the conversion its '
                            'changes are published under partition names' % pub['name'])
    if not info['rls_enabled'] and any(a['grantee'] in API_ROLES for a in info['acl']):
        concerns.append('row level security is disabled while API roles (%s) have grants: the '
                        'partitioned table keeps exactly these grants' % ', '.join(API_ROLES))


def describe(info):
    """The facts an operator wants to see about a table, compactly."""
    pk = info['primary_key']
    pk_sequences = [s for s in info['sequences'] if pk and s['column'] in pk['columns']]
    return {
        'total_bytes': info['total_bytes'],
        'row_estimate': info['row_estimate'],
        'owner': info['owner'],
        'primary_key': pk['columns'] if pk else None,
        'id_generation': pk_sequences[0]['kind'] if pk_sequences else 'none',
        'incoming_foreign_keys': ['%s (%s)' % (f['name'], f['referencing_table']) for f in info['incoming_fks']],
        'indexes': [i['name'] for i in info['indexes']],
        'views': ['%s.%s' % (v['schema'], v['name']) for v in info['views']],
        'functions': [f['signature'] for f in info['functions']],
        'triggers': [t['name'] for t in catalog.user_triggers(info)],
        'policies': [p['name'] for p in info['policies']],
        'grants': ['%s:%s' % (a['grantee'], a['privilege']) for a in info['acl']],
        'rls': {'enabled': info['rls_enabled'], 'forced': info['rls_forced']},
        'publications': [p['name'] for p in info['publications']],
        'replica_identity': info['replica_identity'],
    }


def review_queries(session, info, key, limit=20):
    """Warnings about the workload's statements on this table, from pg_stat_statements."""
    extension_schema = session.scalar(
        "SELECT n.nspname::text FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_stat_statements'")
    if not extension_schema:
        return []
    try:
        rows = session.fetch(sql.SQL(
            "SELECT query, calls::bigint FROM {} WHERE dbid = (SELECT oid FROM pg_database "
            "WHERE datname = current_database()) AND query ~* %s ORDER BY calls DESC LIMIT 500").format(
                ident(extension_schema, 'pg_stat_statements')), (r'\m%s\M' % re.escape(info['name']),))
    except psycopg2.Error:  # installed but the library is not preloaded: nothing to review
        return []
    findings = []
    for row in rows:
        finding = classify_query(row['query'], info['name'], key, info['primary_key'])
        if finding:
            findings.append(dict(finding, calls=row['calls'], query=row['query'][:300]))
    return findings[:limit]


def classify_query(query, table, key, pk):
    """A warning for one statement text, or None."""
    text = query.lower()
    if text.lstrip().startswith(('create', 'alter', 'drop', 'comment', 'grant', 'revoke', 'analyze', 'vacuum')):
        return None
    if pk and re.search(r'on\s+conflict\s*\(\s*"?%s"?\s*\)' % re.escape(pk['columns'][0].lower()), text) \
            and key.lower() not in text.split('on conflict')[1][:100]:
        return {'kind': 'pk_upsert',
                'warning': 'upsert ON CONFLICT (%s) on %s: after the conversion the unique key is (%s, %s) '
                           'and this statement fails; upserts that do not send %s insert duplicates'
                           % (pk['columns'][0], table, pk['columns'][0], key, key)}
    if text.lstrip().startswith(('select', 'with', 'update', 'delete')) and key.lower() not in text:
        return {'kind': 'no_pruning',
                'warning': 'query on %s without a condition on %s will scan every partition' % (table, key)}
    return None
