# -*- coding: utf-8 -*-
"""The swap: one short transaction that makes the partitioned table the live one.

Under SET LOCAL lock_timeout (retried with backoff and jitter by the caller), it locks the
original then the partitioned table, checks their structure still matches, and:

  * drops the forward sync trigger and renames <t> -> <t>_old, <t>_new -> <t>, and the
    indexes, constraints and identity sequences to the original names;
  * moves serial sequences (OWNED BY) and continues identity sequences past the original;
  * re-creates the views and BEGIN ATOMIC functions that followed the original's OID, from
    definitions read before the rename, so they resolve to the new table (trap #7);
  * gives the new table the original's grants, RLS flags, triggers (in their enabled state)
    and publication membership; the retired <t>_old keeps no grants, its triggers disabled;
  * installs the reverse trigger so <t>_old stays exactly current until cleanup (trap #10).

Statements queued behind the swap re-resolve the table name and land in the new table.
swap_back() is the same in reverse, restoring what the journal saved at the swap.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.pgpart_db import PgpartError, sql, ident
from ansible.module_utils import pgpart_catalog as catalog
from ansible.module_utils import pgpart_ddl as ddl
from ansible.module_utils import pgpart_journal as journal
from ansible.module_utils import pgpart_plan as planning
from ansible.module_utils import pgpart_sync as sync
from ansible.module_utils import pgpart_verify as verify


def lock(session, schema, *names):
    for name in names:
        session.run(sql.SQL('LOCK TABLE {} IN ACCESS EXCLUSIVE MODE').format(ident(schema, name)))


def rename_table(session, schema, name, new_name):
    session.run(sql.SQL('ALTER TABLE {} RENAME TO {}').format(ident(schema, name), ident(new_name)))


def rename_index(session, schema, name, new_name):
    """Renames the index, and the constraint it backs (primary key, unique)."""
    session.run(sql.SQL('ALTER INDEX {} RENAME TO {}').format(ident(schema, name), ident(new_name)))


def rename_sequence(session, schema, name, new_name):
    session.run(sql.SQL('ALTER SEQUENCE {} RENAME TO {}').format(ident(schema, name), ident(new_name)))


def capture_dependents(info):
    """Views and BEGIN ATOMIC functions to re-create after the rename, as read now."""
    return {'views': [v for v in info['views'] if v['kind'] == 'v'], 'functions': info['functions']}


def recreate_dependents(session, dependents):
    """Definitions name the table as schema.table, which now resolves to the other table."""
    for view in dependents['views']:
        options = sql.SQL(' WITH ({})').format(sql.SQL(', ').join(sql.SQL(o) for o in view['options'])) \
            if view['options'] else sql.SQL('')
        check_option = sql.SQL(' WITH {} CHECK OPTION').format(sql.SQL(view['check_option'].upper())) \
            if view['check_option'] else sql.SQL('')
        session.run(sql.SQL('CREATE OR REPLACE VIEW {}{} AS {}{}').format(
            ident(view['schema'], view['name']), options, sql.SQL(view['definition'].rstrip().rstrip(';')),
            check_option))
    for function in dependents['functions']:
        session.run(sql.SQL(function['definition']))


def apply_grants(session, table, acl, column_acl, kind='TABLE'):
    for grant in acl:
        session.run(sql.SQL('GRANT {} ON {} {} TO {}{}').format(
            sql.SQL(grant['privilege']), sql.SQL(kind), table, ddl.role_ident(grant['grantee']),
            sql.SQL(' WITH GRANT OPTION' if grant['grantable'] else '')))
    for grant in column_acl:
        session.run(sql.SQL('GRANT {} ({}) ON TABLE {} TO {}{}').format(
            sql.SQL(grant['privilege']), ident(grant['column']), table, ddl.role_ident(grant['grantee']),
            sql.SQL(' WITH GRANT OPTION' if grant['grantable'] else '')))


def revoke_all(session, schema, name):
    table = ident(schema, name)
    for grantee in sorted(set(g['grantee'] for g in catalog.table_acl(session, schema, name))):
        session.run(sql.SQL('REVOKE ALL ON TABLE {} FROM {}').format(table, ddl.role_ident(grantee)))


def set_rls(session, table, enabled, forced):
    session.run(sql.SQL('ALTER TABLE {} {} ROW LEVEL SECURITY').format(table, sql.SQL('ENABLE' if enabled else 'DISABLE')))
    session.run(sql.SQL('ALTER TABLE {} {} ROW LEVEL SECURITY').format(table, sql.SQL('FORCE' if forced else 'NO FORCE')))


TRIGGER_STATE = {'O': 'ENABLE', 'D': 'DISABLE', 'R': 'ENABLE REPLICA', 'A': 'ENABLE ALWAYS'}


def set_trigger_state(session, table, name, state):
    session.run(sql.SQL('ALTER TABLE {} {} TRIGGER {}').format(table, sql.SQL(TRIGGER_STATE[state]), ident(name)))


def move_publications(session, publications, to_table, from_table):
    for pub in publications:
        target = to_table
        if pub['columns']:
            target = sql.SQL('{} ({})').format(to_table, sql.SQL(', ').join(ident(c) for c in pub['columns']))
        if pub['row_filter']:
            target = sql.SQL('{} WHERE ({})').format(target, sql.SQL(pub['row_filter']))
        session.run(sql.SQL('ALTER PUBLICATION {} ADD TABLE {}').format(ident(pub['name']), target))
        session.run(sql.SQL('ALTER PUBLICATION {} DROP TABLE {}').format(ident(pub['name']), from_table))


def identity_sequences(info):
    return dict((s['column'], s) for s in info['sequences'] if s['kind'] == 'identity')


def continue_sequence(session, source, target):
    """Set `target` to where `source` stands, so ids continue without reuse."""
    session.run(sql.SQL('SELECT setval(%s::regclass, last_value, is_called) FROM {}').format(
        ident(source['sequence_schema'], source['sequence_name'])),
        (catalog.regclass_text(session, target['sequence_schema'], target['sequence_name']),))


def swap_in(session, entry):
    """The forward swap; the caller runs it inside a lock_timeout transaction."""
    schema, name, plan = entry['table_schema'], entry['table_name'], entry['plan']
    original_oid = entry['original']['oid']
    lock(session, schema, name, plan['new_table'])
    live = catalog.read_table(session, schema, name)
    staged = catalog.read_table(session, schema, plan['new_table'])
    problems = verify.structure_before_swap(live, staged, plan['key'])
    if problems:
        raise PgpartError('%s.%s changed since the conversion started, so the copy no longer matches it: %s. '
                          'Roll back (rollback.yml) and convert again.' % (schema, name, '; '.join(problems)),
                          differences=problems)
    pairs = ddl.index_pairs(live, staged)
    saved = {
        'acl': live['acl'], 'column_acl': live['column_acl'],
        'rls': [live['rls_enabled'], live['rls_forced']],
        'triggers': [{'name': t['name'], 'enabled': t['enabled'], 'definition': t['definition']}
                     for t in catalog.user_triggers(live)],
        'publications': live['publications'],
        'indexes': [{'original': o, 'retired': planning.fit_name(o, '_old'), 'staged': n} for o, n in pairs],
        'sequences': [],
    }
    dependents = capture_dependents(live)
    sync.remove(session, (schema, name), original_oid, 'forward')
    rename_table(session, schema, name, plan['old_table'])
    rename_table(session, schema, plan['new_table'], name)
    for index in saved['indexes']:
        rename_index(session, schema, index['original'], index['retired'])
        rename_index(session, schema, index['staged'], index['original'])
    saved['sequences'] = move_sequences_in(session, schema, name, live, staged)
    recreate_dependents(session, dependents)
    new, old = ident(schema, name), ident(schema, plan['old_table'])
    apply_grants(session, new, live['acl'], live['column_acl'])
    set_rls(session, new, live['rls_enabled'], live['rls_forced'])
    revoke_all(session, schema, plan['old_table'])
    set_rls(session, old, live['rls_enabled'], False)  # the reverse trigger's owner must not be filtered
    for trigger in saved['triggers']:
        session.run(sql.SQL(trigger['definition']))  # "ON schema.<t>" now means the new table
        if trigger['enabled'] != 'O':
            set_trigger_state(session, new, trigger['name'], trigger['enabled'])
        set_trigger_state(session, old, trigger['name'], 'D')
    move_publications(session, live['publications'], new, old)
    sync.install(session, (schema, name), (schema, plan['old_table']), live,
                 live['primary_key']['columns'], original_oid, 'reverse', live['owner'])
    journal.set_phase(session, schema, name, 'swapped', saved=saved, swapped_at=True)
    return saved


def move_sequences_in(session, schema, name, live, staged):
    """serial: OWNED BY moves to the new column.  identity: the new sequence continues the
    original's and takes its name.  Returns the renames rollback must undo."""
    renames = []
    staged_identity = identity_sequences(staged)
    for seq in live['sequences']:
        if seq['kind'] == 'owned':
            session.run(sql.SQL('ALTER SEQUENCE {} OWNED BY {}').format(
                ident(seq['sequence_schema'], seq['sequence_name']), ident(schema, name, seq['column'])))
            continue
        new_seq = staged_identity[seq['column']]
        continue_sequence(session, seq, new_seq)
        apply_grants(session, ident(new_seq['sequence_schema'], new_seq['sequence_name']),
                     catalog.table_acl(session, seq['sequence_schema'], seq['sequence_name']), [], kind='SEQUENCE')
        retired = planning.fit_name(seq['sequence_name'], '_old')
        rename_sequence(session, seq['sequence_schema'], seq['sequence_name'], retired)
        rename_sequence(session, new_seq['sequence_schema'], new_seq['sequence_name'], seq['sequence_name'])
        renames.append({'schema': seq['sequence_schema'], 'original': seq['sequence_name'], 'retired': retired,
                        'staged': new_seq['sequence_name']})
    return renames


def swap_back(session, entry, keep_aside=False):
    """The reverse swap (rollback before cleanup): the original plain table becomes live again.

    The partitioned table gets its staging name <t>_new back; the caller drops it, unless
    keep_aside (recorded in the journal, so no later run drops it either).
    """
    schema, name, plan, saved = entry['table_schema'], entry['table_name'], entry['plan'], entry['saved']
    original = entry['original']
    lock(session, schema, name, plan['old_table'])
    live = catalog.read_table(session, schema, name)
    dependents = capture_dependents(live)
    sync.remove(session, (schema, name), original['oid'], 'reverse')
    rename_table(session, schema, name, plan['new_table'])
    rename_table(session, schema, plan['old_table'], name)
    for index in saved['indexes']:
        rename_index(session, schema, index['original'], index['staged'])
        rename_index(session, schema, index['retired'], index['original'])
    move_sequences_back(session, schema, name, original, saved)
    recreate_dependents(session, dependents)
    restored, aside = ident(schema, name), ident(schema, plan['new_table'])
    revoke_all(session, schema, plan['new_table'])
    apply_grants(session, restored, saved['acl'], saved['column_acl'])
    set_rls(session, restored, saved['rls'][0], saved['rls'][1])
    for trigger in saved['triggers']:
        set_trigger_state(session, restored, trigger['name'], trigger['enabled'])
        session.run(sql.SQL('DROP TRIGGER IF EXISTS {} ON {}').format(ident(trigger['name']), aside))
    current_pubs = catalog.read_table(session, schema, plan['new_table'])['publications']
    move_publications(session, current_pubs, restored, aside)
    journal.set_phase(session, schema, name, 'rolled_back', finished_at=True,
                      saved=dict(saved, kept_aside=plan['new_table'] if keep_aside else None))


def move_sequences_back(session, schema, name, original, saved):
    for seq in original['sequences']:
        if seq['kind'] == 'owned':
            session.run(sql.SQL('ALTER SEQUENCE {} OWNED BY {}').format(
                ident(seq['sequence_schema'], seq['sequence_name']), ident(schema, name, seq['column'])))
    for rename in saved['sequences']:
        live_seq = {'sequence_schema': rename['schema'], 'sequence_name': rename['original']}
        old_seq = {'sequence_schema': rename['schema'], 'sequence_name': rename['retired']}
        continue_sequence(session, live_seq, old_seq)
        rename_sequence(session, rename['schema'], rename['original'], rename['staged'])
        rename_sequence(session, rename['schema'], rename['retired'], rename['original'])
