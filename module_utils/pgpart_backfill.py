# -*- coding: utf-8 -*-
"""Copy the rows that existed before the sync trigger, in physical chunks, resumably.

The table's heap is cut into chunks of consecutive blocks, sized from the average rows per
block so one chunk is about `batch_rows` rows.  Chunks are read with a TID range scan
(PostgreSQL 14+), so the copy needs no index and works for any primary key type.  Each
chunk is one transaction:

    INSERT INTO <t>_new (cols) SELECT cols FROM ONLY <t> WHERE ctid in the chunk
        FOR SHARE ON CONFLICT DO NOTHING;
    INSERT INTO pgpart.backfill_chunks ... -- the journal, in the same transaction

so after a crash a chunk is either fully copied and recorded or neither, and a re-run
copies exactly the chunks not recorded.  The block count is fixed when the backfill
starts, after the sync trigger exists: rows added later are carried by the trigger.
FOR SHARE makes a concurrent UPDATE or DELETE of a row in the chunk wait until the chunk
commits, so the trigger then finds the copied row (trap #9).  synchronous_commit is off
for chunk transactions: a chunk lost in a crash is lost together with its journal row and
simply copied again.

Two costs are avoided where they buy nothing (bench/README.md has the measurements):

ON CONFLICT DO NOTHING leaves a row the sync trigger already wrote as the trigger wrote it.
Its speculative insertion costs a second index probe and a WAL record per row (~18% of the
copy), and a conflict needs a row the application changed during the backfill.  So chunks
are first inserted without it; the first chunk that fails with a unique violation is rolled
back (with its journal row) and redone with ON CONFLICT DO NOTHING, as is every chunk after
it.  What is committed is the same.

Foreign keys: re-checking each copied row through the copy's foreign-key triggers (a lookup
and a row lock of the referenced row, per row) was ~45% of the copy's CPU.  The rows come
from the original table, which has the same foreign keys, validated (assess refuses NOT
VALID ones) and enforced; a source row stays locked FOR SHARE until its chunk commits, so
the row it references cannot be deleted meanwhile (the delete must check or change the
source row first).  So where the role may set session_replication_role (superuser, a PG15+
GRANT SET, Supabase's postgres role) and the original's foreign-key triggers are all
enabled, the copy statement alone runs with session_replication_role = replica, which skips
those triggers (before the swap the copy has no other triggers).  Otherwise every row is
checked as before.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
import time

from ansible.module_utils.pgpart_db import PgpartError, on_siblings, psycopg2, sql, ident
from ansible.module_utils import pgpart_catalog as catalog
from ansible.module_utils import pgpart_journal as journal

RETRYABLE = ('40P01', '40001', '55P03')  # deadlock, serialization failure, lock not available
UNIQUE_VIOLATION = '23505'
ATTEMPTS_PER_CHUNK = 5


def layout(session, schema, table, batch_rows):
    """Fix the chunking of the heap as it is now: {'blocks', 'chunk_blocks', 'chunks'}."""
    row = session.one(
        "SELECT (pg_relation_size(c.oid) / current_setting('block_size')::int)::bigint AS blocks, "
        "c.reltuples::float AS tuples, c.relpages::bigint AS pages FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
        (schema, table))
    rows_per_block = row['tuples'] / row['pages'] if row['pages'] > 0 and row['tuples'] > 0 else 50.0
    chunk_blocks = max(1, int(batch_rows / max(rows_per_block, 1.0)))
    chunks = (row['blocks'] + chunk_blocks - 1) // chunk_blocks
    return {'blocks': row['blocks'], 'chunk_blocks': chunk_blocks, 'chunks': chunks,
            'rows_estimate': int(max(row['tuples'], 0)), 'batch_rows': batch_rows}


def chunk_statement(schema, table, new_table, columns, overriding, on_conflict=True):
    cols = sql.SQL(', ').join(ident(c) for c in columns)
    return sql.SQL(
        "INSERT INTO {new} ({cols}) {ov}SELECT {cols} FROM ONLY {old} "
        "WHERE ctid >= %(lo)s::tid AND ctid < %(hi)s::tid FOR SHARE{conflict}").format(
            new=ident(schema, new_table), cols=cols, old=ident(schema, table),
            ov=sql.SQL('OVERRIDING SYSTEM VALUE ' if overriding else ''),
            conflict=sql.SQL(' ON CONFLICT DO NOTHING' if on_conflict else ''))


class Backfill:
    """Copies every chunk not yet recorded, with `workers` connections in parallel."""

    def __init__(self, session, info, plan, chunking, workers=2, statement_timeout_ms=120000,
                 pause_ms=0):
        self.session = session
        self.schema, self.table = info['schema'], info['name']
        self.chunking = chunking
        self.workers = max(1, workers)
        self.statement_timeout_ms = statement_timeout_ms
        self.pause_ms = pause_ms
        overriding = any(c['identity'] == 'a' for c in info['columns'])
        args = (self.schema, self.table, plan['new_table'], catalog.copy_columns(info), overriding)
        self.statements = {False: chunk_statement(*args, on_conflict=False), True: chunk_statement(*args)}
        self.on_conflict = False  # set for good by the first chunk that meets a row already copied
        self._lock = threading.Lock()
        self.rows_copied = 0
        self.oid = info['oid']
        self.skip_fk_checks = False

    def run(self):
        done = journal.chunks_done(self.session, self.schema, self.table)
        todo = [c for c in range(self.chunking['chunks']) if c not in done]
        self.skip_fk_checks = self._may_skip_fk_checks()
        on_siblings(self.session, todo, self.workers, self._copy_chunk, prepare=self._lower_deadlock_timeout)
        return {'chunks_resumed_from': len(done), 'chunks_copied': len(todo), 'rows_copied': self.rows_copied,
                'fk_checks': 'enforced by the original' if self.skip_fk_checks else 'per row'}

    def _copy_chunk(self, worker, chunk):
        self._copy_with_retries(worker, chunk)
        if self.pause_ms:
            time.sleep(self.pause_ms / 1000.0)

    @staticmethod
    def _lower_deadlock_timeout(worker):
        """If a chunk and an application transaction ever deadlock, the chunk should be the one
        that notices first and gives way (it is retried); needs superuser or a SET grant."""
        try:
            worker.scalar("SELECT set_config('deadlock_timeout', '100ms', false)")
        except psycopg2.Error:
            pass

    def _may_skip_fk_checks(self):
        """Whether the copy statement may run without foreign-key triggers (module docstring)."""
        if self.session.scalar(
                "SELECT count(*) FROM pg_trigger t JOIN pg_constraint c ON c.oid = t.tgconstraint "
                "WHERE c.conrelid = %s::oid AND c.contype = 'f' AND t.tgenabled = 'D'", (self.oid,)):
            return False
        try:  # setting it to its current value proves the right to set it, and changes nothing
            self.session.scalar("SELECT set_config('session_replication_role', "
                                "current_setting('session_replication_role'), false)")
            return True
        except psycopg2.Error:
            return False

    def _copy_with_retries(self, worker, chunk):
        attempt = 0
        while True:
            on_conflict = self.on_conflict
            try:
                return self._copy(worker, chunk, on_conflict)
            except psycopg2.Error as exc:
                if exc.pgcode == UNIQUE_VIOLATION and not on_conflict:
                    self.on_conflict = True  # the sync trigger wrote rows of this chunk: redo it skipping them
                    continue
                attempt += 1
                if exc.pgcode not in RETRYABLE or attempt == ATTEMPTS_PER_CHUNK:
                    raise self._explain(exc, chunk)
                time.sleep(0.05 * attempt)

    def _copy(self, worker, chunk, on_conflict):
        lo = chunk * self.chunking['chunk_blocks']
        hi = lo + self.chunking['chunk_blocks']
        settings = {'statement_timeout': '%dms' % self.statement_timeout_ms, 'synchronous_commit': 'off'}
        if self.skip_fk_checks:
            settings['session_replication_role'] = 'replica'
        with worker.transaction(settings=settings):
            with worker.conn.cursor() as cur:
                cur.execute(self.statements[on_conflict], {'lo': '(%d,0)' % lo, 'hi': '(%d,0)' % hi})
                copied = cur.rowcount
                if self.skip_fk_checks:  # the journal row is checked as usual
                    cur.execute("SET LOCAL session_replication_role TO DEFAULT")
                cur.execute("INSERT INTO pgpart.backfill_chunks (table_schema, table_name, chunk, rows) "
                            "VALUES (%s, %s, %s, %s)", (self.schema, self.table, chunk, copied))
        with self._lock:
            self.rows_copied += copied

    def _explain(self, exc, chunk):
        if exc.pgcode == '57014':
            return PgpartError('copying chunk %d of %s.%s exceeded statement_timeout (%d ms): lower batch_rows '
                               'or raise statement_timeout_ms; copied chunks are kept, re-run to continue'
                               % (chunk, self.schema, self.table, self.statement_timeout_ms))
        return PgpartError('copying chunk %d of %s.%s failed: %s; copied chunks are kept, re-run to continue'
                           % (chunk, self.schema, self.table, str(exc).strip()))


def first_chunk_sql(session, info, plan, chunking):
    """The statements of chunk 0, as check mode shows them."""
    overriding = any(c['identity'] == 'a' for c in info['columns'])
    args = (info['schema'], info['name'], plan['new_table'], catalog.copy_columns(info), overriding)
    params = {'lo': '(0,0)', 'hi': '(%d,0)' % chunking['chunk_blocks']}
    return '%s;\n-- once a chunk meets a row the sync trigger wrote, it and the chunks after it run as:\n%s' % (
        session.text(chunk_statement(*args, on_conflict=False), params), session.text(chunk_statement(*args), params))
