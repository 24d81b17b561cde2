# -*- coding: utf-8 -*-
"""Monthly maintenance of a converted table: premake, ANALYZE, coverage alert, retention.

One run, under the table's pgpart advisory lock (two runs never overlap), in this order
(a failed step is reported, the later steps still run, and the run then fails):

  premake    partitions through the current UTC month plus `premake` months, each created
             by pgpart_ddl.attach_partition (CREATE TABLE + CHECK + ATTACH: only SHARE UPDATE
             EXCLUSIVE on the live parent, never CREATE TABLE ... PARTITION OF, trap #13) in
             its own short transaction under lock_timeout, retried with backoff; the journal
             plan gains the partition in the same transaction, so pgpart_verify's exact
             partition-tree check stays true.
  retention  (optional) partitions whose whole range ends on or before the first day of
             (current month - retention_months), <t>_phistory included, are detached
             (DETACH PARTITION ... CONCURRENTLY; a detach left pending by a killed run is
             finished with FINALIZE), dumped with pg_dump and verified (pgpart_backup), then
             dropped, only when the dump verifies and its row count equals count(*) of the
             detached table read under an exclusive lock in the dropping transaction.
             Only once <t>_old is gone (phase 'cleaned'): before, it still holds every
             row and verification compares month by month against it.
  analyze    ANALYZE of the parent, every run: autovacuum never analyzes a partitioned
             parent (trap #16).
  alert      the run fails when now() + alert_days reaches the upper bound of the last
             partition (coverage is about to end: inserts would fail with "no partition of
             relation found for row").

Retention is crash-safe: the journal plan moves a partition from plan['partitions'] to
plan['retiring'] once it is detached, records the dump's manifest there once it verified,
and forgets it in the transaction that drops it.  Whatever the point a run died at, the next
run finds the partition again (by name, in the plan, and in the catalog: attached, detach
pending, detached or gone) and finishes the job; every step is an event in pgpart.events.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import random
import re
import time

from ansible.module_utils.pgpart_db import (LOCK_DEFAULTS, PgpartError, psycopg2, sql, ident, retry_on_lock_timeout,
                                            lock_blockers)
from ansible.module_utils import pgpart_catalog as catalog
from ansible.module_utils import pgpart_ddl as ddl
from ansible.module_utils import pgpart_journal as journal
from ansible.module_utils import pgpart_plan as planning

CONVERTED_PHASES = ('swapped', 'converted', 'cleaned')

DEFAULTS = dict(LOCK_DEFAULTS, column=None, premake=3, alert_days=14, retention_months=None, backup_dir=None,
                pg_dump=None, pg_restore=None)

# pg_get_expr(relpartbound) of a pgpart partition: FROM (MINVALUE | 'YYYY-MM-01[ 00:00:00[+00]]') TO (...)
_MONTH_BOUND = r"(?:MINVALUE|MAXVALUE|'(\d{4}-\d{2})-01(?: 00:00:00(?:\+00)?)?')"
_RANGE_BOUND = re.compile(r"^FOR VALUES FROM \(%s\) TO \(%s\)$" % (_MONTH_BOUND, _MONTH_BOUND))


class _Recorder:
    """A session stand-in for check mode: statements are recorded, never executed."""

    def __init__(self, session):
        self._session = session

    def run(self, query, params=None):
        self._session.plan(query, params)
        return 0

    def __getattr__(self, name):
        return getattr(self._session, name)


def backup_api():
    """pgpart_backup (take_backup, verify_backup); imported only when retention is asked for."""
    try:
        from ansible.module_utils import pgpart_backup
    except ImportError as exc:
        raise PgpartError('retention needs module_utils/pgpart_backup.py (take_backup, verify_backup), which '
                          'cannot be imported: %s. Nothing was detached or dropped.' % exc)
    return pgpart_backup


def parse_bound(bound):
    """(from month or None for MINVALUE, to month or None for MAXVALUE) of a pgpart partition bound.

    'DEFAULT' and bounds that are not whole UTC months raise ValueError.
    """
    match = _RANGE_BOUND.match(bound or '')
    if not match:
        raise ValueError(bound)
    lower, upper = match.group(1), match.group(2)
    if upper is None and 'MAXVALUE' not in bound.split(' TO ')[1]:
        raise ValueError(bound)
    return lower, upper


class Maintenance:
    """One maintenance run of one converted table; run() returns the result dict."""

    def __init__(self, session, schema, table, **options):
        unknown = set(options) - set(DEFAULTS)
        if unknown:
            raise TypeError('unknown options: %s' % ', '.join(sorted(unknown)))
        self.session = session
        self.schema, self.table = schema, table
        self.options = dict(DEFAULTS, **dict((k, v) for k, v in options.items() if v is not None))
        self.check_mode = session.check_mode
        self.created, self.created_months, self.detached, self.dropped, self.warnings = [], [], [], [], []
        self.retention = None
        self.analyzed = False
        self.plan_fixed = False
        self.errors = []
        self.details = {}
        self.validate_options()

    def validate_options(self):
        o = self.options
        problems = []
        if o['premake'] < 0:
            problems.append('premake must be 0 or more (got %s)' % o['premake'])
        if o['alert_days'] < 0:
            problems.append('alert_days must be 0 or more (got %s)' % o['alert_days'])
        if o['retention_months'] is not None:
            if o['retention_months'] < 1:
                problems.append('retention_months must be 1 or more (got %s): the current month is never '
                                'dropped' % o['retention_months'])
            if not o['backup_dir']:
                problems.append('backup_dir is required with retention_months: no partition is dropped without '
                                'a verified dump')
        if problems:
            raise PgpartError('invalid options: %s' % '; '.join(problems))

    # -- driver ----------------------------------------------------------------------------------
    def run(self):
        self.first_query = len(self.session.queries)
        with self.session.table_lock(self.schema, self.table):
            self.entry = self.converted_entry()
            self.plan = self.entry['plan']
            self.current_month = self.session.scalar("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')")
            self.guarded(self.premake)
            if self.options['retention_months'] is not None:
                self.guarded(self.retain)
            self.guarded(self.analyze)
            return self.finish()

    def guarded(self, step):
        """Run a step; a PgpartError is kept so the later steps (ANALYZE, the alert) still run."""
        try:
            step()
        except PgpartError as exc:
            self.errors.append(str(exc))
            self.details.update(exc.details)
            # a rolled-back transaction may have edited self.plan: the journal is the truth
            self.plan = journal.read(self.session, self.schema, self.table)['plan']

    def converted_entry(self):
        """The journal row, or a refusal: maintenance is only for tables pgpart converted."""
        name = '%s.%s' % (self.schema, self.table)
        entry = journal.read(self.session, self.schema, self.table)
        phase = entry['phase'] if entry else None
        if phase not in CONVERTED_PHASES:
            raise PgpartError(
                'refusing to maintain %s: pgpart has not converted it (journal phase: %s). Maintenance only adds '
                'and retires partitions of tables converted by pgpart_convert (phase swapped, converted or '
                'cleaned); %s' % (name, phase or 'none, no journal row',
                                  'finish the conversion first (deploy.yml)' if phase else 'convert it first'),
                phase=phase)
        found = catalog.find_relation(self.session, self.schema, self.table)
        if not found or found[1] != 'p':
            raise PgpartError('refusing to maintain %s: the journal says it was converted (phase %s) but it is %s; '
                              'inspect it before anything else changes' % (
                                  name, phase, 'missing' if not found else 'not a partitioned table'), phase=phase)
        key = entry['plan']['key']
        if self.options['column'] and self.options['column'] != key:
            raise PgpartError('refusing to maintain %s: column=%s but the table is partitioned by %s'
                              % (name, self.options['column'], key), phase=phase)
        self.parent_oid = found[0]
        return entry

    # -- the live partition tree -----------------------------------------------------------------
    def leaves(self):
        """[{name, bound, pending}] of the partitions attached to the parent (detach pending included)."""
        pending = 'i.inhdetachpending' if self.session.major >= 14 else 'false'
        return self.session.fetch(
            "SELECT c.relname::text AS name, pg_get_expr(c.relpartbound, c.oid) AS bound, %s AS pending "
            "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %%s::oid "
            "ORDER BY c.relname" % pending, (self.parent_oid,))

    def coverage(self, extra_months=()):
        """(first month not covered, or None when a partition goes to MAXVALUE), over attached partitions."""
        upper, unbounded = None, False
        for leaf in self.leaves():
            if leaf['pending']:
                continue
            if leaf['bound'] == 'DEFAULT':
                continue
            try:
                _, to = parse_bound(leaf['bound'])
            except ValueError:
                raise PgpartError('partition %s.%s has a bound pgpart does not create (%s): maintenance handles '
                                  'whole UTC months only; inspect the partition tree' % (
                                      self.schema, leaf['name'], leaf['bound']))
            if to is None:
                unbounded = True
            elif upper is None or to > upper:
                upper = to
        for month in extra_months:
            after = planning.month_add(month, 1)
            if upper is None or after > upper:
                upper = after
        if unbounded:
            return None
        if upper is None:
            raise PgpartError('%s.%s has no partitions: nothing accepts rows; inspect the table'
                              % (self.schema, self.table))
        return upper

    def default_partition(self):
        return next((leaf['name'] for leaf in self.leaves() if leaf['bound'] == 'DEFAULT'), None)

    def relation_state(self, name):
        """attached | pending (detach pending) | detached | missing | foreign (attached elsewhere or not a table)."""
        pending = 'i.inhdetachpending' if self.session.major >= 14 else 'false'
        row = self.session.one(
            "SELECT c.relkind::text AS relkind, i.inhparent::bigint AS parent, %s AS pending "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_inherits i ON i.inhrelid = c.oid "
            "WHERE n.nspname = %%s AND c.relname = %%s" % pending, (self.schema, name))
        if row is None:
            return 'missing'
        if row['relkind'] != 'r':
            return 'foreign'
        if row['parent'] is None:
            return 'detached'
        if row['parent'] != self.parent_oid:
            return 'foreign'
        return 'pending' if row['pending'] else 'attached'

    # -- journal plan edits (inside the caller's transaction) -------------------------------------
    def edit_plan(self, change):
        """Apply change(plan) to the journal's current plan and store it; returns the new plan."""
        plan = journal.read(self.session, self.schema, self.table)['plan']
        change(plan)
        journal.update(self.session, self.schema, self.table, plan=plan)
        self.plan = plan
        return plan

    def locked(self, work):
        o = self.options
        return retry_on_lock_timeout(self.session, work, o['lock_timeout_ms'], o['lock_attempts'],
                                     o['max_backoff_ms'])

    # -- premake ---------------------------------------------------------------------------------
    def premake(self):
        until = self.coverage()
        if until is None:
            return  # a MAXVALUE partition accepts every future row
        months = planning.months_to_add(planning.month_add(until, -1), self.current_month, self.options['premake'])
        if not months:
            return
        default = self.default_partition()
        if default:
            raise PgpartError(
                '%s.%s has a DEFAULT partition (%s): attaching a partition would scan it under ACCESS EXCLUSIVE '
                '(postgres-traps.md #15). pgpart never creates one; move its rows into monthly partitions and drop '
                'it, then re-run. No partition was created.' % (self.schema, self.table, default))
        template = self.plan.get('partition_template') or ddl.partition_template(
            catalog.read_table(self.session, self.schema, self.table))
        for month in months:
            partition = {'name': planning.partition_name(self.table, month), 'from': month,
                         'to': planning.month_add(month, 1), 'rows': 0}
            if catalog.relation_exists(self.session, self.schema, partition['name']):
                raise PgpartError(
                    'cannot create partition %s.%s for %s: a relation of that name exists and is not a partition '
                    'of %s. Rename or drop it, then re-run. Created so far: %s' % (
                        self.schema, partition['name'], month, self.table, ', '.join(self.created) or 'none'))
            self.create(partition, template)

    def create(self, partition, template):
        key, key_type = self.plan['key'], self.plan['key_type']
        if self.check_mode:
            ddl.attach_partition(_Recorder(self.session), self.schema, self.table, partition, key, key_type, template)
            self.created.append(partition['name'])
            self.created_months.append(partition['from'])
            return

        def add(plan):
            plan['partitions'] = [p for p in plan['partitions'] if p['name'] != partition['name']] + [partition]
            plan['covers_until'] = max(plan.get('covers_until') or '', partition['to'])

        def work():
            ddl.attach_partition(self.session, self.schema, self.table, partition, key, key_type, template)
            self.edit_plan(add)
            journal.log(self.session, self.schema, self.table, 'premake',
                        {'partition': partition['name'], 'from': partition['from'], 'to': partition['to']})
        try:
            self.locked(work)
        except PgpartError as exc:
            raise PgpartError('could not create partition %s for %s: %s Created before it: %s' % (
                partition['name'], partition['from'], exc, ', '.join(self.created) or 'none'), **exc.details)
        self.created.append(partition['name'])
        self.created_months.append(partition['from'])

    # -- analyze ---------------------------------------------------------------------------------
    def analyze(self):
        statement = sql.SQL('ANALYZE {}').format(ident(self.schema, self.table))
        if self.check_mode:
            self.session.plan(statement)
            return
        self.session.run(statement)
        self.analyzed = True

    # -- retention -------------------------------------------------------------------------------
    def retention_cutoff(self):
        return planning.month_add(self.current_month, -self.options['retention_months'])

    def retain(self):
        cutoff = self.retention_cutoff()
        self.retention = {'cutoff': cutoff, 'candidates': []}
        if self.entry['phase'] in journal.AFTER_SWAP:
            reason = ('retention waits until cleanup: %s still exists (phase %s), it holds every row and the '
                      'verification compares month by month against it. Run cleanup.yml after the validation '
                      'window; nothing was detached or dropped.' % (self.plan['old_table'], self.entry['phase']))
            self.retention['skipped'] = reason
            self.warnings.append(reason)
            return
        work = list(self.plan.get('retiring') or [])
        work += [p for p in self.plan['partitions'] if p['to'] is not None and p['to'] <= cutoff
                 and p['name'] not in set(r['name'] for r in work)]
        work.sort(key=lambda p: (p['from'] or '', p['name']))
        self.retention['candidates'] = [p['name'] for p in work]
        if not work:
            return
        if self.default_partition():
            raise PgpartError('%s.%s has a DEFAULT partition: DETACH ... CONCURRENTLY is impossible with one '
                              '(postgres-traps.md #15). Nothing was detached or dropped.' % (self.schema, self.table))
        api = backup_api()
        for partition in work:
            self.retire(partition, api)

    def retire(self, partition, api):
        name = partition['name']
        state = self.relation_state(name)
        if state == 'foreign':
            raise PgpartError('%s.%s is not a plain table detached from or attached to %s: retention leaves it '
                              'alone; inspect it. Nothing was dropped.' % (self.schema, name, self.table))
        if state == 'missing':
            self.forget_missing(partition)
            return
        if self.check_mode:
            self.preview_retire(partition, state, api)
            return
        if state in ('attached', 'pending'):
            self.detach(partition, state)
        if any(p['name'] == name for p in self.plan['partitions']):
            self.record_detached(partition)  # detached by a run that died before it wrote the journal
        manifest_path = self.dump(partition, api)
        self.drop(partition, manifest_path, api)

    def forget_missing(self, partition):
        """A partition in the plan that no longer exists: nothing to drop; the plan stops listing it."""
        name = partition['name']
        retiring = any(p['name'] == name for p in self.plan.get('retiring') or [])
        if not retiring:
            self.warnings.append('%s.%s is in the journal plan but does not exist (dropped outside pgpart?): '
                                 'pgpart_verify will report the partition tree; retention left the plan as it is'
                                 % (self.schema, name))
            return
        self.warnings.append('%s.%s was detached by an earlier run and no longer exists (dropped outside pgpart); '
                             'removed from the journal plan' % (self.schema, name))
        if self.check_mode:
            return

        def forget(plan):
            plan['retiring'] = [p for p in plan.get('retiring') or [] if p['name'] != name]
        with self.session.transaction():
            self.edit_plan(forget)
            journal.log(self.session, self.schema, self.table, 'retention_missing', {'partition': name})
        self.plan_fixed = True

    def preview_retire(self, partition, state, api):
        """Check mode: the statements and the dump a real run would make; nothing runs."""
        name = partition['name']
        leaf = ident(self.schema, name)
        if state == 'attached':
            self.session.plan(self.detach_sql(name, 'CONCURRENTLY'))
        elif state == 'pending':
            self.session.plan(self.detach_sql(name, 'FINALIZE'))
        if state in ('attached', 'pending'):
            self.detached.append(name)
        recorded = self.retiring_entry(name).get('manifest_path')
        o = self.options
        would = recorded or api.plan_backup(self.session, self.schema, name, o['backup_dir'], pg_dump=o['pg_dump'],
                                            pg_restore=o['pg_restore'])['manifest_path']
        self.session.plan(sql.SQL('LOCK TABLE {} IN ACCESS EXCLUSIVE MODE').format(leaf))
        self.session.plan(sql.SQL('DROP TABLE {}').format(leaf))
        self.dropped.append({'name': name, 'from': partition['from'], 'to': partition['to'],
                             'manifest_path': would, 'rows': None, 'sha256': None})

    def detach_sql(self, name, mode=''):
        statement = sql.SQL('ALTER TABLE {} DETACH PARTITION {}').format(ident(self.schema, self.table),
                                                                          ident(self.schema, name))
        return sql.SQL(' ').join([statement, sql.SQL(mode)]) if mode else statement

    def detach(self, partition, state):
        """DETACH ... CONCURRENTLY (outside any transaction block), FINALIZE when left pending.

        Both wait for the transactions using the parent; each attempt is bounded by lock_timeout and
        retried with backoff.  A timed-out CONCURRENTLY leaves the partition detach pending (already
        invisible to new queries), which the next attempt, or the next run, finalizes.
        """
        o = self.options
        delay, attempt = o['lock_timeout_ms'], 0
        while state in ('attached', 'pending'):
            attempt += 1
            try:
                if state == 'attached' and self.session.major >= 14:
                    # Not allowed in a transaction block, so no SET LOCAL: set, then restore, the session's value.
                    before = self.session.scalar("SELECT current_setting('lock_timeout')")
                    self.session.scalar("SELECT set_config('lock_timeout', %s, false)", ('%dms' % o['lock_timeout_ms'],))
                    try:
                        self.session.run(self.detach_sql(partition['name'], 'CONCURRENTLY'))
                    finally:
                        if not self.session.conn.closed:
                            self.session.scalar("SELECT set_config('lock_timeout', %s, false)", (before,))
                else:
                    mode = 'FINALIZE' if state == 'pending' else ''
                    with self.session.transaction(settings={'lock_timeout': '%dms' % o['lock_timeout_ms']}):
                        self.session.run(self.detach_sql(partition['name'], mode))
            except psycopg2.errors.LockNotAvailable:
                if attempt >= o['lock_attempts']:
                    now_state = self.relation_state(partition['name'])
                    raise PgpartError(
                        'could not detach %s.%s within lock_timeout=%dms after %d attempts: transactions using %s '
                        'are still open (see blockers). It is %s; nothing was dropped. Re-run when they have '
                        'finished%s.' % (self.schema, partition['name'], o['lock_timeout_ms'], attempt, self.table,
                                         'detach pending (invisible to new queries)' if now_state == 'pending'
                                         else 'still attached',
                                         ' (the next run finishes it with DETACH PARTITION ... FINALIZE)'
                                         if now_state == 'pending' else ''),
                        blockers=lock_blockers(self.session))
                time.sleep((delay * (0.5 + random.random())) / 1000.0)
                delay = min(delay * 2, o['max_backoff_ms'])
            state = self.relation_state(partition['name'])
        if state != 'detached':
            raise PgpartError('%s.%s is %s after DETACH; nothing was dropped' % (self.schema, partition['name'], state))
        self.record_detached(partition)
        self.detached.append(partition['name'])

    def record_detached(self, partition):
        name = partition['name']

        def move(plan):
            plan['partitions'] = [p for p in plan['partitions'] if p['name'] != name]
            retiring = [p for p in plan.get('retiring') or [] if p['name'] != name]
            plan['retiring'] = retiring + [{'name': name, 'from': partition['from'], 'to': partition['to']}]
        with self.session.transaction():
            self.edit_plan(move)
            journal.log(self.session, self.schema, self.table, 'retention_detach',
                        {'partition': name, 'from': partition['from'], 'to': partition['to'],
                         'cutoff': self.retention_cutoff()})

    def retiring_entry(self, name):
        return next((p for p in self.plan.get('retiring') or [] if p['name'] == name), {})

    def dump(self, partition, api):
        """The manifest path of a dump of the detached table: the one an earlier run recorded, or a new one.

        pgpart_backup.take_backup dumps in the snapshot of an exact count, reads the archive whole and
        records the backup in pgpart.backups (under the partition's name); the manifest path is then
        remembered in the journal plan, so a run that dies before the drop reuses it.
        """
        name = partition['name']
        o = self.options
        recorded = self.retiring_entry(name).get('manifest_path')
        if recorded:
            checked = self.check_dump(api, recorded)
            rows = self.session.scalar(sql.SQL('SELECT count(*) FROM {}').format(ident(self.schema, name)))
            if checked['ok'] and checked.get('rows_in_dump') == rows:
                return recorded
            self.warnings.append('the dump %s recorded by an earlier run %s; taking a new one' % (
                recorded, 'does not verify (%s)' % '; '.join(checked.get('problems') or []) if not checked['ok']
                else 'holds %s rows, the table now %d' % (checked.get('rows_in_dump'), rows)))
        try:
            manifest = api.take_backup(self.session, self.schema, name, o['backup_dir'], pg_dump=o['pg_dump'],
                                       pg_restore=o['pg_restore'])
        except PgpartError as exc:
            raise PgpartError(self.kept_message(partition, 'the dump failed: %s' % exc), **exc.details)
        backup = {'manifest_path': manifest['manifest_path'], 'sha256': manifest.get('sha256'),
                  'bytes': manifest.get('bytes'), 'rows': manifest.get('rows')}

        def remember(plan):
            for p in plan.get('retiring') or []:
                if p['name'] == name:
                    p.update(backup)
        with self.session.transaction():
            self.edit_plan(remember)
            journal.log(self.session, self.schema, self.table, 'retention_backup', dict(backup, partition=name))
        return backup['manifest_path']

    def check_dump(self, api, manifest_path):
        return api.verify_backup(manifest_path, pg_restore=self.options['pg_restore'], server_major=self.session.major)

    def kept_message(self, partition, why):
        leaf = '%s.%s' % (self.schema, partition['name'])
        lower = planning.bound_literal(partition['from'], self.plan['key_type'])
        upper = planning.bound_literal(partition['to'], self.plan['key_type'])
        attach = "ALTER TABLE %s.%s ATTACH PARTITION %s FOR VALUES FROM (%s) TO ('%s')" % (
            self.schema, self.table, leaf, 'MINVALUE' if lower is None else "'%s'" % lower, upper)
        return ('retention kept %s (detached from %s, with all its rows) and dropped nothing: %s. Fix the backup '
                '(backup_dir, pg_dump_path, pg_restore_path) and re-run; to make its rows visible through %s '
                'again instead: %s' % (leaf, self.table, why, self.table, attach))

    def drop(self, partition, manifest_path, api):
        """DROP TABLE (no CASCADE), only when the dump verifies now (read whole by pg_restore) and the
        rows in it equal count(*) of the detached table, read under ACCESS EXCLUSIVE in the dropping
        transaction (no write can slip in between the count and the drop)."""
        name = partition['name']
        leaf = ident(self.schema, name)
        checked = self.check_dump(api, manifest_path)
        if not checked['ok']:
            raise PgpartError(self.kept_message(partition, 'its dump %s does not verify: %s' % (
                manifest_path, '; '.join(checked.get('problems') or ['no reason given']))),
                backup_problems=checked.get('problems') or [])
        in_dump = checked.get('rows_in_dump')
        manifest = checked.get('manifest') or {}
        if in_dump is None or manifest.get('schema') != self.schema or manifest.get('table') != name:
            raise PgpartError(self.kept_message(partition, 'the dump %s is not a dump of %s.%s with its rows' % (
                manifest_path, self.schema, name)))
        counted = {}

        def forget(plan):
            plan['retiring'] = [p for p in plan.get('retiring') or [] if p['name'] != name]

        def work():
            self.session.run(sql.SQL('LOCK TABLE {} IN ACCESS EXCLUSIVE MODE').format(leaf))
            rows = self.session.scalar(sql.SQL('SELECT count(*) FROM {}').format(leaf))
            counted['rows'] = rows
            if rows != in_dump:
                raise PgpartError(self.kept_message(partition, 'it holds %d rows, its dump %s holds %s (rows were '
                                                               'written to the detached table; the next run dumps '
                                                               'it again)' % (rows, manifest_path, in_dump)),
                                  rows_in_table=rows, rows_in_dump=in_dump)
            self.session.run(sql.SQL('DROP TABLE {}').format(leaf))
            self.edit_plan(forget)
            journal.log(self.session, self.schema, self.table, 'retention_drop',
                        {'partition': name, 'from': partition['from'], 'to': partition['to'], 'rows': rows,
                         'manifest_path': manifest_path, 'sha256': manifest.get('sha256')})
        try:
            self.locked(work)
        except psycopg2.errors.DependentObjectsStillExist as exc:
            raise PgpartError(self.kept_message(partition, 'it cannot be dropped without CASCADE: %s %s' % (
                str(exc).strip(), exc.diag.message_detail or '')))
        self.dropped.append({'name': name, 'from': partition['from'], 'to': partition['to'],
                             'manifest_path': manifest_path, 'rows': counted['rows'],
                             'sha256': manifest.get('sha256')})

    # -- result and alert ------------------------------------------------------------------------
    def finish(self):
        # In check mode the partitions are not there: coverage is what it would be after this run.
        until = self.coverage(extra_months=self.created_months if self.check_mode else ())
        o = self.options
        result = {
            'changed': bool(self.created or self.detached or self.dropped or self.plan_fixed),
            'table': '%s.%s' % (self.schema, self.table),
            'phase': self.entry['phase'],
            'created': list(self.created),
            'detached': list(self.detached),
            'dropped': list(self.dropped),
            'coverage_until': until,
            'coverage_ends_at': None,
            'days_of_coverage_left': None,
            'analyzed': self.analyzed,
            'retention': self.retention,
            'warnings': list(self.warnings),
            'alert': None,
            'queries': list(self.session.queries[self.first_query:]),
        }
        if until is not None:
            ends_at = planning.bound_literal(until, 'timestamp with time zone')
            row = self.session.one(
                "SELECT round((extract(epoch FROM %s::timestamptz - now()) / 86400)::numeric, 2)::float AS days, "
                "now() + make_interval(days => %s) >= %s::timestamptz AS alert",
                (ends_at, o['alert_days'], ends_at))
            result.update(coverage_ends_at=ends_at, days_of_coverage_left=row['days'])
            if row['alert']:
                result['alert'] = (
                    'partition coverage of %s.%s ends at %s, in %.1f days, within alert_days=%d: rows from then on '
                    'will fail with "no partition of relation found for row". %s' % (
                        self.schema, self.table, ends_at, row['days'], o['alert_days'],
                        'Raise premake (now %d) so maintenance creates partitions further ahead, or run it more '
                        'often.' % o['premake'] if not self.errors else
                        'This run could not create the partitions it should have (see above).'))
        problems = list(self.errors) + ([result['alert']] if result['alert'] else [])
        if problems:
            # Details become keys of the failed task's result; run_module adds `queries` itself and Ansible
            # reserves `warnings` (they join the message).
            details = dict(self.details, **dict((k, v) for k, v in result.items() if k not in ('warnings', 'queries')))
            raise PgpartError('maintenance of %s.%s failed: %s%s' % (
                self.schema, self.table, ' | '.join(problems),
                ''.join(' | warning: %s' % w for w in self.warnings)), **details)
        return result


def maintain(session, schema, table, **options):
    return Maintenance(session, schema, table, **options).run()
