# -*- coding: utf-8 -*-
"""Rollback: the original plain table live again, with every change made since the swap.

    before the swap  (prepared .. verified): the original never stopped being live; remove
                     the sync trigger and the partial <t>_new.  Nothing else changed.
    after the swap   (swapped, converted): <t>_old is exactly current thanks to the reverse
                     trigger; prove it (per-month count and hash), then swap back in one short
                     transaction (swap.swap_back) and drop the partitioned table.
    after cleanup    <t>_old no longer exists: refuse, with the restore procedure.

With force=true a rollback proceeds even when <t>_old and <t> differ; the partitioned table
is then kept aside as <t>_new (renamed, not dropped) so nothing is lost.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.pgpart_db import LOCK_DEFAULTS, PgpartError, sql, ident, retry_on_lock_timeout
from ansible.module_utils import pgpart_catalog as catalog
from ansible.module_utils import pgpart_journal as journal
from ansible.module_utils import pgpart_swap as swap
from ansible.module_utils import pgpart_sync as sync
from ansible.module_utils import pgpart_verify as verify

RESTORE_PROCEDURE = (
    'The partitioned table {t} holds every current row: if it is healthy, keep it (a rollback only changes the '
    'layout). To go back to a plain table anyway, or if its data is damaged, follow README "Restoring after '
    'cleanup": restore the pre-conversion dump (it holds the table as of the snapshot time in its manifest) into a '
    'scratch schema with pg_restore, then reconcile the rows changed since then from {t}.')


def rollback(session, schema, name, force=False, lock_timeout_ms=LOCK_DEFAULTS['lock_timeout_ms'],
             lock_attempts=LOCK_DEFAULTS['lock_attempts'], max_backoff_ms=LOCK_DEFAULTS['max_backoff_ms']):
    """Roll one table back; returns a result dict (changed, action, ...)."""
    with session.table_lock(schema, name):
        entry = journal.read(session, schema, name)
        phase = entry['phase'] if entry else None

        def locked(work):
            return retry_on_lock_timeout(session, work, lock_timeout_ms, lock_attempts, max_backoff_ms)
        if phase is None:
            return {'changed': False, 'action': 'none', 'msg': '%s.%s was never converted by pgpart' % (schema, name)}
        if phase == 'rolled_back':
            return drop_leftover(session, entry, locked)
        if phase == 'cleaned':
            backup = journal.latest_backup(session, schema, name)
            raise PgpartError(
                'cannot roll back %s.%s online: cleanup dropped %s at %s. %s Latest backup manifest: %s' % (
                    schema, name, entry['plan']['old_table'], entry['finished_at'],
                    RESTORE_PROCEDURE.format(t=name), backup['manifest_path'] if backup else 'none recorded'))
        if phase in journal.BEFORE_SWAP:
            return remove_partial(session, entry, locked)
        return swap_back(session, entry, locked, force)


def remove_partial(session, entry, locked):
    """Before the swap: drop the sync trigger and <t>_new; the original table is untouched."""
    schema, name, plan = entry['table_schema'], entry['table_name'], entry['plan']
    if session.check_mode:
        return {'changed': True, 'action': 'remove_partial', 'would_drop': plan['new_table']}

    def work():
        sync.remove(session, (schema, name), entry['original']['oid'], 'forward')
        if catalog.relation_exists(session, schema, plan['new_table']):
            session.run(sql.SQL('DROP TABLE {}').format(ident(schema, plan['new_table'])))
        journal.set_phase(session, schema, name, 'rolled_back', finished_at=True)
    _, attempts, seconds = locked(work)
    return {'changed': True, 'action': 'remove_partial', 'phase_before': entry['phase'],
            'dropped': plan['new_table'], 'attempts': attempts, 'lock_ms': round(seconds * 1000, 1)}


def swap_back(session, entry, locked, force):
    schema, name, plan = entry['table_schema'], entry['table_name'], entry['plan']
    data = verify.compare_rows(session, schema, plan['old_table'], name, plan['key'], plan['key_type'])
    if not data['ok'] and not force:
        raise PgpartError(
            'refusing to roll back %s.%s: %s differs from the live partitioned table in %d month(s) (%s), so rows '
            'would be lost. Nothing was changed. Investigate; force=true rolls back anyway and keeps the '
            'partitioned table aside as %s.' % (schema, name, plan['old_table'], len(data['mismatches']),
                                               ', '.join(str(m['month']) for m in data['mismatches'][:10]),
                                               plan['new_table']), mismatches=data['mismatches'])
    if session.check_mode:
        return {'changed': True, 'action': 'swap_back', 'rows': data['rows_plain'], 'would_drop': plan['new_table']}
    _, attempts, seconds = locked(lambda: swap.swap_back(session, entry, keep_aside=not data['ok']))
    session.run(sql.SQL('ANALYZE {}').format(ident(schema, name)))
    result = {'changed': True, 'action': 'swap_back', 'phase_before': entry['phase'], 'rows': data['rows_plain'],
              'attempts': attempts, 'lock_ms': round(seconds * 1000, 1), 'data_matched': data['ok']}
    if data['ok']:
        result['dropped'] = drop_leftover(session, journal.read(session, schema, name), locked).get('dropped')
    else:
        result['kept_aside'] = plan['new_table']
    return result


def drop_leftover(session, entry, locked):
    """After a rollback, the partitioned table (renamed <t>_new) is dropped; also finishes a run
    that was interrupted between the swap back and the drop."""
    schema, plan = entry['table_schema'], entry['plan']
    if not catalog.relation_exists(session, schema, plan['new_table']):
        return {'changed': False, 'action': 'none', 'msg': 'already rolled back'}
    if (entry.get('saved') or {}).get('kept_aside'):
        return {'changed': False, 'action': 'none', 'kept_aside': plan['new_table'],
                'msg': '%s was kept aside because it differed from the restored table; compare them and drop it '
                       'by hand when it is no longer needed' % plan['new_table']}
    if session.check_mode:
        return {'changed': True, 'action': 'drop_leftover', 'would_drop': plan['new_table']}

    def work():
        session.run(sql.SQL('DROP TABLE {}').format(ident(schema, plan['new_table'])))
        journal.log(session, schema, entry['table_name'], 'dropped_partitioned', {'table': plan['new_table']})
    try:
        locked(work)
    except PgpartError:
        raise
    except Exception as exc:
        raise PgpartError('the rollback is done, but %s.%s could not be dropped: %s. Drop it by hand once '
                          'nothing depends on it.' % (schema, plan['new_table'], str(exc).strip()))
    return {'changed': True, 'action': 'drop_leftover', 'dropped': plan['new_table']}
