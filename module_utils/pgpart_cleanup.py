# -*- coding: utf-8 -*-
"""Cleanup after the validation window: drop <t>_old, only when it is provably safe.

Every gate must pass, or nothing changes:
  * the journal shows the swap at least `min_age_hours` ago (the decision document's 24-48 h);
  * full verification passes now (data equal month by month, structure, security, ...);
  * the backup taken before the conversion is recorded, and its dump still verifies
    (size, sha256, and read whole with pg_restore; rows equal the manifest).
Then, in one short transaction under lock_timeout: the reverse trigger is removed and
<t>_old dropped WITHOUT CASCADE (a dependency left behind is an error naming it).
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.module_utils.pgpart_db import LOCK_DEFAULTS, PgpartError, psycopg2, sql, ident, retry_on_lock_timeout
from ansible.module_utils import pgpart_backup as backup
from ansible.module_utils import pgpart_catalog as catalog
from ansible.module_utils import pgpart_journal as journal
from ansible.module_utils import pgpart_sync as sync
from ansible.module_utils import pgpart_verify as verify


def gates(session, entry, min_age_hours, pg_restore=None):
    """(problems, facts): every reason cleanup must not run now."""
    schema, name = entry['table_schema'], entry['table_name']
    problems, facts = [], {}
    hours = entry['hours_since_swap'] or 0.0
    facts['hours_since_swap'] = round(hours, 2)
    if hours < min_age_hours:
        allowed_at = session.scalar("SELECT (%s::timestamptz + %s * interval '1 hour')::text",
                                    (entry['swapped_at'], float(min_age_hours)))
        problems.append('the swap was %.1f hours ago; the validation window is %s hours: cleanup is allowed from %s'
                        % (hours, min_age_hours, allowed_at))
    report = verify.verify_converted(session, schema, name)
    facts['verification'] = {'ok': report['ok'], 'failed': report['failed']}
    if not report['ok']:
        problems.append('verification fails now: %s' % '; '.join(report['failed']))
    latest = journal.latest_backup(session, schema, name)
    if latest is None:
        problems.append('no backup of %s.%s is recorded in the journal: take one (pgpart_backup) before dropping '
                        'the only other copy' % (schema, name))
    else:
        checked = backup.verify_backup(latest['manifest_path'], pg_restore=pg_restore, server_major=session.major)
        facts['backup'] = {'manifest': latest['manifest_path'], 'ok': checked['ok'], 'taken_at': latest['taken_at']}
        if not checked['ok']:
            problems.append('the backup %s does not verify: %s' % (latest['manifest_path'], '; '.join(checked['problems'])))
    return problems, facts


def cleanup(session, schema, name, min_age_hours=24, pg_restore=None, lock_timeout_ms=LOCK_DEFAULTS['lock_timeout_ms'],
            lock_attempts=LOCK_DEFAULTS['lock_attempts'], max_backoff_ms=LOCK_DEFAULTS['max_backoff_ms']):
    with session.table_lock(schema, name):
        entry = journal.read(session, schema, name)
        phase = entry['phase'] if entry else None
        if phase == 'cleaned':
            return {'changed': False, 'msg': '%s.%s is already cleaned up' % (schema, name)}
        if phase != 'converted':
            raise PgpartError('%s.%s is not a completed conversion (journal phase: %s): %s' % (
                schema, name, phase, 're-run deploy.yml to finish it' if phase else 'nothing to clean up'))
        if not catalog.relation_exists(session, schema, entry['plan']['old_table']):
            return record_manual_drop(session, entry)
        problems, facts = gates(session, entry, min_age_hours, pg_restore)
        if problems:
            raise PgpartError('refusing to clean up %s.%s; nothing was changed: %s' % (schema, name, '; '.join(problems)),
                              gates=problems, **facts)
        old = entry['plan']['old_table']
        reclaimed = session.scalar('SELECT pg_total_relation_size(%s::regclass)::bigint',
                                   (catalog.regclass_text(session, schema, old),))
        if session.check_mode:
            session.plan(sql.SQL('DROP TABLE {}').format(ident(schema, old)))
            return dict(facts, changed=True, would_drop=old, bytes_reclaimed=reclaimed)

        def work():
            sync.remove(session, (schema, name), entry['original']['oid'], 'reverse')
            session.run(sql.SQL('DROP TABLE {}').format(ident(schema, old)))
            journal.set_phase(session, schema, name, 'cleaned', finished_at=True)
        try:
            _, attempts, seconds = retry_on_lock_timeout(session, work, lock_timeout_ms, lock_attempts, max_backoff_ms)
        except psycopg2.errors.DependentObjectsStillExist as exc:
            raise PgpartError('cannot drop %s.%s without CASCADE, nothing was changed: %s %s' % (
                schema, old, str(exc).strip(), (exc.diag.message_detail or '')))
        return dict(facts, changed=True, dropped=old, bytes_reclaimed=reclaimed, attempts=attempts,
                    lock_ms=round(seconds * 1000, 1))


def record_manual_drop(session, entry):
    """<t>_old was dropped outside pgpart: remove the reverse trigger and record the cleanup."""
    schema, name = entry['table_schema'], entry['table_name']
    if session.check_mode:
        return {'changed': True, 'msg': '%s was dropped outside pgpart; would record the cleanup' % entry['plan']['old_table']}
    with session.transaction():
        sync.remove(session, (schema, name), entry['original']['oid'], 'reverse')
        journal.set_phase(session, schema, name, 'cleaned', finished_at=True)
    return {'changed': True, 'dropped': None, 'bytes_reclaimed': 0,
            'msg': '%s had already been dropped outside pgpart; the reverse trigger was removed and the cleanup '
                   'recorded' % entry['plan']['old_table']}
