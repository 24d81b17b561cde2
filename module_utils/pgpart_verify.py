# -*- coding: utf-8 -*-
"""Fail-closed verification: data equal month by month, structure and security equal.

Data: per UTC month, count(*) and sum(hashtextextended(row::text, 0)) of the plain table
and of the partitioned table, read in ONE snapshot (two connections sharing an exported
snapshot scan both tables in parallel).  Zero tolerance.  The sum of row hashes does not
depend on row order and, unlike EXCEPT or md5(string_agg()), works for json columns and
any table size.  Both tables have the same columns in the same order, so equal rows have
equal text.

Structure: the partitioned table must carry everything the original had (columns,
constraints, indexes, policies, grants, RLS flags, triggers, publications), its partition
tree must be exactly the plan, every index valid, no id duplicated, sequences past the
highest id, views pointing at it, and a time-range query must prune partitions.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json
import threading

from ansible.module_utils.pgpart_db import PgpartError, sql, ident
from ansible.module_utils import pgpart_catalog as catalog
from ansible.module_utils import pgpart_journal as journal
from ansible.module_utils import pgpart_ddl as ddl
from ansible.module_utils import pgpart_plan as planning
from ansible.module_utils.pgpart_assess import month_expr


def month_digest_sql(schema, table, key, key_type, only):
    return sql.SQL(
        "SELECT to_char({month}, 'YYYY-MM') AS month, count(*)::bigint AS rows, "
        "coalesce(sum(hashtextextended(r::text, 0)), 0)::text AS hash FROM {only}{table} r GROUP BY 1").format(
            month=month_expr(key, key_type), only=sql.SQL('ONLY ' if only else ''), table=ident(schema, table))


def compare_rows(session, schema, plain, partitioned, key, key_type):
    """{'ok', 'rows_plain', 'rows_partitioned', 'months': [...], 'mismatches': [...]}"""
    results = {}
    other = session.sibling()
    try:
        with session.transaction(isolation='repeatable read', readonly=True):
            snapshot = session.scalar('SELECT pg_export_snapshot()')

            def scan_partitioned():
                try:
                    with other.transaction(isolation='repeatable read', readonly=True, snapshot=snapshot):
                        results['partitioned'] = other.fetch(
                            month_digest_sql(schema, partitioned, key, key_type, only=False))
                except Exception as exc:  # reported below, after the join
                    results['error'] = exc
            thread = threading.Thread(target=scan_partitioned)
            thread.start()
            try:
                results['plain'] = session.fetch(month_digest_sql(schema, plain, key, key_type, only=True))
            finally:
                thread.join()
    finally:
        other.close()
    if 'error' in results:
        raise results['error']
    return month_comparison(results['plain'], results['partitioned'])


def month_comparison(plain_rows, partitioned_rows):
    plain = dict((r['month'], r) for r in plain_rows)
    part = dict((r['month'], r) for r in partitioned_rows)
    months, mismatches = [], []
    for month in sorted(set(plain) | set(part), key=lambda m: m or ''):
        a, b = plain.get(month, {'rows': 0, 'hash': '0'}), part.get(month, {'rows': 0, 'hash': '0'})
        entry = {'month': month, 'rows_plain': a['rows'], 'rows_partitioned': b['rows'],
                 'ok': a['rows'] == b['rows'] and a['hash'] == b['hash']}
        months.append(entry)
        if not entry['ok']:
            mismatches.append(entry)
    return {'ok': not mismatches, 'months': months, 'mismatches': mismatches,
            'rows_plain': sum(r['rows'] for r in plain_rows),
            'rows_partitioned': sum(r['rows'] for r in partitioned_rows)}


# -- structure ---------------------------------------------------------------------------------

def shape(info, key, pk_with_key):
    """What must be equal between the original and the partitioned table, comparably."""
    def body(index):
        return ddl.index_body(index['definition'])[0]
    pk = list(info['primary_key']['columns']) if info['primary_key'] else []
    if pk_with_key and key not in pk:
        pk.append(key)
    return {
        'columns': [[c['name'], c['type'], c['collation'], c['not_null'] or c['name'] in pk, c['default'],
                     c['generation_expr'], c['identity'], c['generated'], c['comment']] for c in info['columns']],
        'primary key': pk,
        'checks and foreign keys': sorted([c['name'], c['definition']] for c in info['constraints']
                                          if c['type'] in ('c', 'f')),
        'unique constraints': sorted(c['definition'] for c in info['constraints'] if c['type'] == 'u'),
        'indexes': sorted(body(i) for i in info['indexes'] if not i['is_primary']),
        'policies': sorted([p['name'], p['permissive'], p['command'], p['roles'], p['using_expr'],
                            p['check_expr']] for p in info['policies']),
        'table comment': info['comment'],
        'replica identity': info['replica_identity'],
        'owner': info['owner'],
    }


def security(info):
    return {
        'grants': sorted([a['grantee'], a['privilege'], a['grantable']] for a in info['acl']),
        'column grants': sorted([a['column'], a['grantee'], a['privilege'], a['grantable']]
                                for a in info['column_acl']),
        'row level security': [info['rls_enabled'], info['rls_forced']],
        'triggers': sorted([t['name'], t['definition'], t['enabled']] for t in catalog.user_triggers(info)),
        'publications': sorted([p['name'], p['row_filter'], p['columns']] for p in info['publications']),
    }


def differences(expected, actual):
    """Names of the aspects that differ, each with both values, as readable strings."""
    out = []
    for aspect in expected:
        if json.dumps(expected[aspect], sort_keys=True) != json.dumps(actual[aspect], sort_keys=True):
            out.append('%s differ: expected %s, found %s' % (aspect, expected[aspect], actual[aspect]))
    return out


def structure_before_swap(original_live, staged, key):
    """Differences that forbid the swap (e.g. DDL on the original during the conversion)."""
    expected = shape(original_live, key, pk_with_key=True)
    actual = shape(staged, key, pk_with_key=True)
    expected['owner'] = actual['owner']  # owner is compared after the swap, with security
    return differences(expected, actual)


def check(name, ok, detail=None):
    return {'check': name, 'ok': bool(ok), 'detail': detail}


def structure_after_swap(session, entry, live):
    """Every structural promise of a converted table, as a list of checks."""
    schema, name, plan, original = entry['table_schema'], entry['table_name'], entry['plan'], entry['original']
    key = plan['key']
    checks = [check('same columns, constraints, indexes, policies and owner as the original',
                    not differences(shape(original, key, True), shape(live, key, True)),
                    differences(shape(original, key, True), shape(live, key, True)))]
    checks.append(check('same grants, RLS flags, triggers and publications as the original',
                        not differences(security(original), security(live)),
                        differences(security(original), security(live))))
    checks.append(partition_tree_check(session, schema, name, plan))
    checks.append(indexes_valid_check(session, schema, name))
    checks.append(partitions_locked_down_check(session, schema, name))
    checks.append(duplicate_id_check(session, schema, name, original, key))
    checks.extend(sequence_checks(session, schema, name, live))
    checks.append(views_check(session, original, live))
    checks.append(pruning_check(session, schema, name, plan))
    return checks


def leaves(session, schema, name):
    return session.fetch(
        "SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound, pt.isleaf, pt.level "
        "FROM pg_partition_tree(%s::regclass) pt JOIN pg_class c ON c.oid = pt.relid "
        "WHERE pt.level > 0 ORDER BY c.relname", (catalog.regclass_text(session, schema, name),))


def expected_bound(partition, key_type):
    lower = planning.bound_literal(partition['from'], key_type)
    upper = planning.bound_literal(partition['to'], key_type)
    return "FOR VALUES FROM (%s) TO ('%s')" % ('MINVALUE' if lower is None else "'%s'" % lower, upper)


def partition_tree_check(session, schema, name, plan):
    found = dict((p['name'], p['bound']) for p in leaves(session, schema, name))
    wanted = dict((p['name'], expected_bound(p, plan['key_type'])) for p in plan['partitions'])
    detail = {}
    if set(found) != set(wanted):
        detail['missing'] = sorted(set(wanted) - set(found))
        detail['unexpected'] = sorted(set(found) - set(wanted))
    wrong = dict((n, found[n]) for n in set(found) & set(wanted) if found[n] != wanted[n])
    if wrong:
        detail['wrong bounds'] = wrong
    return check('partition tree exactly as planned (%d partitions)' % len(wanted), not detail, detail or None)


def indexes_valid_check(session, schema, name):
    rows = session.fetch(
        "SELECT c.relname::text AS table_name, (SELECT count(*) FROM pg_index WHERE indrelid = c.oid)::int AS n, "
        "(SELECT array_agg(ic.relname::text) FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid "
        " WHERE i.indrelid = c.oid AND NOT i.indisvalid) AS invalid, pt.level "
        "FROM pg_partition_tree(%s::regclass) pt JOIN pg_class c ON c.oid = pt.relid",
        (catalog.regclass_text(session, schema, name),))
    parent = next(r for r in rows if r['level'] == 0)
    problems = [r['table_name'] + ': invalid ' + ', '.join(r['invalid']) for r in rows if r['invalid']]
    problems += ['%s has %d indexes, the parent %d' % (r['table_name'], r['n'], parent['n'])
                 for r in rows if r['level'] > 0 and r['n'] != parent['n']]
    return check('every index valid and present on every partition', not problems, problems or None)


def partitions_locked_down_check(session, schema, name):
    rows = session.fetch(
        "SELECT c.relname::text AS name, c.relrowsecurity AS rls, "
        "(SELECT array_agg(DISTINCT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END) "
        " FROM aclexplode(c.relacl) a WHERE a.grantee <> c.relowner) AS grantees "
        "FROM pg_partition_tree(%s::regclass) pt JOIN pg_class c ON c.oid = pt.relid WHERE pt.level > 0",
        (catalog.regclass_text(session, schema, name),))
    problems = ['%s: %s' % (r['name'], 'RLS off' if not r['rls'] else 'granted to ' + ', '.join(r['grantees']))
                for r in rows if not r['rls'] or r['grantees']]
    return check('partitions have RLS on and no grants (not readable through the API)', not problems,
                 problems or None)


def duplicate_id_check(session, schema, name, original, key):
    pk = [c for c in original['primary_key']['columns'] if c != key]
    if not pk:
        return check('no duplicate ids (primary key includes only the key)', True)
    cols = sql.SQL(', ').join(ident(c) for c in pk)
    dupes = session.fetch(sql.SQL('SELECT {c}, count(*) AS copies FROM {t} GROUP BY {c} HAVING count(*) > 1 '
                                  'LIMIT 5').format(c=cols, t=ident(schema, name)))
    return check('no duplicate %s' % ', '.join(pk), not dupes,
                 [dict((k, str(v)) for k, v in d.items()) for d in dupes] or None)


def sequence_checks(session, schema, name, live):
    out = []
    for seq in live['sequences']:
        state = session.one(sql.SQL('SELECT last_value::text, is_called FROM {}').format(
            ident(seq['sequence_schema'], seq['sequence_name'])))
        highest = session.scalar(sql.SQL('SELECT max({})::text FROM {}').format(
            ident(seq['column']), ident(schema, name)))
        ok = highest is None or int(state['last_value']) >= int(highest) and (
            state['is_called'] or int(state['last_value']) > int(highest))
        out.append(check('sequence %s (%s) belongs to %s.%s and is past the highest value' % (
            seq['sequence'], seq['kind'], name, seq['column']), ok,
            {'last_value': state['last_value'], 'max': highest}))
    return out


def views_check(session, original, live):
    wanted = sorted('%s.%s' % (v['schema'], v['name']) for v in original['views'])
    found = sorted('%s.%s' % (v['schema'], v['name']) for v in live['views'])
    options = dict(('%s.%s' % (v['schema'], v['name']), [v['options'], v['check_option']]) for v in original['views'])
    now = dict(('%s.%s' % (v['schema'], v['name']), [v['options'], v['check_option']]) for v in live['views'])
    ok = set(wanted) <= set(found) and all(options[v] == now.get(v) for v in wanted)
    return check('views read the partitioned table with their options: %s' % (', '.join(wanted) or 'none'), ok,
                 None if ok else {'expected': options, 'found': now})


def pruning_check(session, schema, name, plan, months=6):
    """EXPLAIN of `key > now() - N months` must skip the partitions entirely before the range."""
    cutoff = session.scalar("SELECT to_char((now() - make_interval(months => %s)) AT TIME ZONE 'UTC', 'YYYY-MM')",
                            (months,))
    prunable = [p['name'] for p in plan['partitions'] if p['to'] <= cutoff]
    query = sql.SQL('SELECT count(*) FROM {} WHERE {} > now() - make_interval(months => {})').format(
        ident(schema, name), ident(plan['key']), sql.Literal(months))
    plan_json = session.scalar(sql.SQL('EXPLAIN (FORMAT JSON) {}').format(query))
    scanned = set()
    removed = [0]

    def walk(node):
        if 'Relation Name' in node:
            scanned.add(node['Relation Name'])
        removed[0] += node.get('Subplans Removed', 0)
        for child in node.get('Plans', []):
            walk(child)
    walk(plan_json[0]['Plan'])
    wrongly_scanned = sorted(scanned & set(prunable))
    ok = not wrongly_scanned
    return check('a %d-month range query prunes %d of %d partitions' % (months, len(prunable), len(plan['partitions'])),
                 ok, {'query': session.text(query), 'subplans_removed': removed[0],
                      'scanned': sorted(scanned), 'should_not_scan': wrongly_scanned})


def old_table_droppable_check(session, schema, old_name):
    """DROP TABLE <t>_old without CASCADE would succeed: nothing else depends on it."""
    info = catalog.read_table(session, schema, old_name)
    if info is None:
        return check('%s exists' % old_name, False)
    blockers = ['view %s.%s' % (v['schema'], v['name']) for v in info['views']]
    blockers += ['function %s' % f['signature'] for f in info['functions']]
    blockers += ['foreign key %s on %s' % (f['name'], f['referencing_table']) for f in info['incoming_fks']]
    blockers += [d['object'] for d in info['other_dependents']]
    blockers += [u['object'] for u in info['rowtype_users']]
    blockers += ['sequence %s (owned by %s.%s)' % (s['sequence'], old_name, s['column'])
                 for s in info['sequences'] if s['kind'] == 'owned']
    return check('%s can be dropped without CASCADE' % old_name, not blockers, blockers or None)


def verify_converted(session, schema, name):
    """The full verification of a converted table: data (while <t>_old exists) and structure."""
    entry = journal.read(session, schema, name)
    if not entry or entry['phase'] not in journal.AFTER_SWAP + ('cleaned',):
        raise PgpartError('%s.%s has not been converted by pgpart (journal phase: %s): nothing to verify'
                          % (schema, name, entry['phase'] if entry else 'none'))
    plan, live = entry['plan'], catalog.read_table(session, schema, name)
    checks, data = [], None
    old_exists = catalog.relation_exists(session, schema, plan['old_table'])
    if entry['phase'] in journal.AFTER_SWAP and not old_exists:
        checks.append(check('%s exists until cleanup (it is the rollback copy)' % plan['old_table'], False,
                            'dropped outside pgpart: an online rollback is no longer possible; run cleanup.yml '
                            'to record it'))
    elif entry['phase'] in journal.AFTER_SWAP:
        data = compare_rows(session, schema, plan['old_table'], name, plan['key'], plan['key_type'])
        checks.append(check('rows equal month by month between %s and its partitions (count and hash)'
                            % plan['old_table'], data['ok'], data['mismatches'] or None))
        checks.append(old_table_droppable_check(session, schema, plan['old_table']))
    checks.extend(structure_after_swap(session, entry, live))
    failed = [c['check'] for c in checks if not c['ok']]
    return {'ok': not failed, 'failed': failed, 'checks': checks, 'phase': entry['phase'],
            'data': None if data is None else {
                'rows_old': data['rows_plain'], 'rows_partitioned': data['rows_partitioned'],
                'months': data['months'], 'mismatches': data['mismatches']}}
