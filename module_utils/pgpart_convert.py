# -*- coding: utf-8 -*-
"""Online, resumable conversion of one table: the phases of pgpart_journal, in order.

    prepare -> sync -> backfill -> verify -> swap -> analyze

Each phase is recorded in the journal in the same transaction as its work, so a run that
is killed at any point continues, when re-run, from the last recorded phase.  Only the
swap takes an ACCESS EXCLUSIVE lock, for one short transaction under lock_timeout.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import time

from ansible.module_utils.pgpart_db import LOCK_DEFAULTS, PgpartError, sql, ident, lock_blockers, retry_on_lock_timeout
from ansible.module_utils import pgpart_assess as assess
from ansible.module_utils import pgpart_backfill as backfill
from ansible.module_utils import pgpart_catalog as catalog
from ansible.module_utils import pgpart_ddl as ddl
from ansible.module_utils import pgpart_journal as journal
from ansible.module_utils import pgpart_swap as swap
from ansible.module_utils import pgpart_sync as sync
from ansible.module_utils import pgpart_verify as verify

DEFAULTS = dict(LOCK_DEFAULTS, column='created_at', premake=3, max_future_months=24, batch_rows=50000, workers=2,
                statement_timeout_ms=120000, batch_pause_ms=0, stop_before=None)

STEPS = (('prepared', 'prepare'), ('syncing', 'start_sync'), ('backfilled', 'backfill'),
         ('verified', 'verify'), ('swapped', 'swap'), ('converted', 'analyze'))


class DryRun:
    """A session stand-in that records the statements it is given instead of running them."""

    def __init__(self, session):
        self._session = session

    def run(self, query, params=None, record=True):
        self._session.plan(query, params)
        return 0

    def __getattr__(self, name):
        return getattr(self._session, name)


class Conversion:
    def __init__(self, session, schema, table, **options):
        self.session = session
        self.schema, self.table = schema, table
        self.options = dict(DEFAULTS, **dict((k, v) for k, v in options.items() if v is not None))
        self.steps = []
        self.report = None

    # -- driver --------------------------------------------------------------------------------
    def run(self):
        with self.session.table_lock(self.schema, self.table):
            self.report = assess.assess_table(self.session, self.schema, self.table, self.options['column'],
                                              self.options['premake'], self.options['max_future_months'])
            if self.report['state'] == 'converted':
                return self.result()
            if not self.report['eligible']:
                raise PgpartError(refusal_message(self.report), reasons=self.report['reasons'],
                                  assessment=self.report)
            if self.session.check_mode:
                return self.preview() if self.report['state'] == 'plain' else self.remaining()
            journal.ensure(self.session)
            for phase, method in STEPS:
                if self.reached(phase):
                    continue
                if phase == self.options['stop_before']:
                    break
                started = time.time()
                detail = getattr(self, method)()
                self.steps.append(dict(detail or {}, phase=phase, seconds=round(time.time() - started, 3)))
            return self.result()

    def entry(self):
        return journal.read(self.session, self.schema, self.table)

    def reached(self, phase):
        entry = self.entry()
        if entry is None or entry['phase'] in ('rolled_back', 'cleaned'):
            return False
        return journal.PHASES.index(entry['phase']) >= journal.PHASES.index(phase)

    def locked(self, work, relations=None):
        return retry_on_lock_timeout(self.session, work, self.options['lock_timeout_ms'],
                                     self.options['lock_attempts'], self.options['max_backoff_ms'],
                                     relations=relations)

    # -- phases ----------------------------------------------------------------------------------
    def planned(self):
        info = catalog.read_table(self.session, self.schema, self.table)
        plan = dict(self.report['plan'], partition_template=ddl.partition_template(info))
        return info, plan

    def prepare(self):
        info, plan = self.planned()

        def work():
            ddl.build(self.session, info, plan, secondary_indexes=False)  # built after the copy
            journal.start(self.session, self.schema, self.table, plan, info)
        self.locked(work)
        return {'partitions': len(plan['partitions'])}

    def start_sync(self):
        entry = self.entry()
        original, plan = entry['original'], entry['plan']

        def work():
            sync.grant_schema_to_owner(self.session, original['owner'])
            sync.install(self.session, (self.schema, self.table), (self.schema, plan['new_table']), original,
                         ddl.new_primary_key(original, plan['key']), original['oid'], 'forward',
                         original['owner'])
            journal.set_phase(self.session, self.schema, self.table, 'syncing')
        _, attempts, seconds = self.locked(work)
        return {'attempts': attempts, 'lock_ms': round(seconds * 1000, 1)}

    def backfill(self):
        entry = self.entry()
        chunking = entry['backfill']
        if 'chunks' not in chunking:  # first start, or killed before the layout was recorded
            chunking = backfill.layout(self.session, self.schema, self.table, self.options['batch_rows'])
            with self.session.transaction():
                journal.update(self.session, self.schema, self.table, backfill=chunking)
        copier = backfill.Backfill(self.session, entry['original'], entry['plan'], chunking,
                                   workers=self.options['workers'],
                                   statement_timeout_ms=self.options['statement_timeout_ms'],
                                   pause_ms=self.options['batch_pause_ms'])
        done = copier.run()
        started = time.time()
        built = ddl.build_secondary_indexes(self.session, entry['original'], entry['plan'], self.options['workers'])
        done.update(indexes_built=built, index_seconds=round(time.time() - started, 3))
        # Before the new table goes live: set its visibility map (index-only scans) and hint bits,
        # and collect statistics of the partitions and of the parent (autovacuum never analyzes a
        # partitioned parent, trap #16). Online: VACUUM takes no lock that blocks reads or writes.
        started = time.time()
        self.session.run(sql.SQL('VACUUM (ANALYZE) {}').format(ident(self.schema, entry['plan']['new_table'])))
        with self.session.transaction():
            journal.set_phase(self.session, self.schema, self.table, 'backfilled')
        return dict(done, chunks=chunking['chunks'], chunk_blocks=chunking['chunk_blocks'],
                    vacuum_seconds=round(time.time() - started, 3))

    def verify(self):
        entry = self.entry()
        plan = entry['plan']
        result = verify.compare_rows(self.session, self.schema, self.table, plan['new_table'], plan['key'],
                                     plan['key_type'])
        summary = summarize(result)
        if not result['ok']:
            raise PgpartError(
                'verification failed before the swap: %d month(s) differ between %s and %s (%s). Nothing was '
                'swapped: the original table is still live and unchanged. Investigate, then roll back the partial '
                'conversion (rollback.yml) and convert again.' % (
                    len(result['mismatches']), self.table, plan['new_table'],
                    ', '.join(str(m['month']) for m in result['mismatches'][:10])), verification=summary)
        with self.session.transaction():
            journal.set_phase(self.session, self.schema, self.table, 'verified', verification=summary)
        return {'rows': result['rows_plain'], 'months': len(result['months'])}

    def swap(self):
        entry = self.entry()
        tables = [(self.schema, self.table), (self.schema, entry['plan']['new_table'])]
        waited_for = lock_blockers(self.session, tables)
        _, attempts, seconds = self.locked(lambda: swap.swap_in(self.session, entry), relations=tables)
        return {'attempts': attempts, 'lock_ms': round(seconds * 1000, 1), 'waited_for': waited_for}

    def analyze(self):
        # The partitions and the parent were analyzed at the end of the backfill (trap #16). A run
        # that resumes after the swap on a parent without statistics analyzes it now.
        if not self.session.scalar("SELECT EXISTS (SELECT 1 FROM pg_statistic WHERE starelid = %s::regclass "
                                   "AND stainherit)", (catalog.regclass_text(self.session, self.schema, self.table),)):
            self.session.run(sql.SQL('ANALYZE {}').format(ident(self.schema, self.table)))
        with self.session.transaction():
            journal.set_phase(self.session, self.schema, self.table, 'converted', finished_at=True)

    # -- results ----------------------------------------------------------------------------------
    def preview(self):
        """Check mode: build the partitioned table in a transaction that is rolled back (so the
        generated DDL is proven against this server), and record what the later phases would run."""
        info, plan = self.planned()
        dry = DryRun(self.session)

        class Rollback(Exception):
            pass
        try:
            with self.session.transaction(settings={'lock_timeout': '%dms' % self.options['lock_timeout_ms']}):
                for statement in journal.DDL:
                    if not journal.exists(self.session):
                        self.session.run(statement)
                ddl.build(self.session, info, plan)
                sync.install(dry, (self.schema, self.table), (self.schema, plan['new_table']), info,
                             ddl.new_primary_key(info, plan['key']), info['oid'], 'forward', info['owner'])
                raise Rollback()
        except Rollback:
            pass
        chunking = backfill.layout(self.session, self.schema, self.table, self.options['batch_rows'])
        self.session.queries.append(backfill.first_chunk_sql(self.session, info, plan, chunking))
        return self.result(changed=True, would=['prepare', 'sync', 'backfill %d chunks' % chunking['chunks'],
                                                'verify', 'swap', 'analyze'])

    def remaining(self):
        """Check mode on a conversion already under way: the phases a re-run would finish."""
        entry = self.entry()
        left = [phase for phase, _ in STEPS if not self.reached(phase)] if entry else []
        return self.result(changed=bool(left), would=left)

    def result(self, changed=None, would=None):
        entry = self.entry() if not self.session.check_mode else None
        plan = (entry or {}).get('plan') or self.report['plan'] or {}
        out = {
            'changed': bool(self.steps) if changed is None else changed,
            'table': '%s.%s' % (self.schema, self.table),
            'state_before': self.report['state'],
            'phase': entry['phase'] if entry else None,
            'steps': self.steps,
            'partitions': [p['name'] for p in plan.get('partitions', [])],
            'concerns': self.report['concerns'],
            'verification': (entry or {}).get('verification') or None,
        }
        if would:
            out['would_run'] = would
        return out


def summarize(result):
    """The verification result without the per-month detail of months that matched."""
    return {'ok': result['ok'], 'rows_plain': result['rows_plain'], 'rows_partitioned': result['rows_partitioned'],
            'months': len(result['months']), 'mismatches': result['mismatches']}


def refusal_message(report):
    return 'refusing to convert %s: %s' % (report['table'], '; '.join(report['reasons']))
