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
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import threading
import time

from ansible.module_utils.pgpart_db import PgpartError, psycopg2, sql, ident
from ansible.module_utils import pgpart_catalog as catalog
from ansible.module_utils import pgpart_journal as journal

RETRYABLE = ('40P01', '40001', '55P03')  # deadlock, serialization failure, lock not available
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


def chunk_statement(schema, table, new_table, columns, overriding):
    cols = sql.SQL(', ').join(ident(c) for c in columns)
    return sql.SQL(
        "INSERT INTO {new} ({cols}) {ov}SELECT {cols} FROM ONLY {old} "
        "WHERE ctid >= %(lo)s::tid AND ctid < %(hi)s::tid FOR SHARE ON CONFLICT DO NOTHING").format(
            new=ident(schema, new_table), cols=cols, old=ident(schema, table),
            ov=sql.SQL('OVERRIDING SYSTEM VALUE ' if overriding else ''))


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
        self.statement = chunk_statement(self.schema, self.table, plan['new_table'],
                                         catalog.copy_columns(info), overriding)
        self._lock = threading.Lock()
        self._errors = []
        self.rows_copied = 0

    def run(self):
        done = journal.chunks_done(self.session, self.schema, self.table)
        self._todo = [c for c in range(self.chunking['chunks']) if c not in done]
        pending = len(self._todo)
        threads = [threading.Thread(target=self._worker, name='pgpart-backfill-%d' % i)
                   for i in range(min(self.workers, len(self._todo)) or 0)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if self._errors:
            raise self._errors[0]
        return {'chunks_resumed_from': len(done), 'chunks_copied': pending, 'rows_copied': self.rows_copied}

    def _next_chunk(self):
        with self._lock:
            if self._errors or not self._todo:
                return None
            return self._todo.pop(0)

    def _worker(self):
        try:
            worker = self.session.sibling()
        except PgpartError as exc:
            self._fail(exc)
            return
        try:
            self._lower_deadlock_timeout(worker)
            chunk = self._next_chunk()
            while chunk is not None:
                self._copy_with_retries(worker, chunk)
                if self.pause_ms:
                    time.sleep(self.pause_ms / 1000.0)
                chunk = self._next_chunk()
        except Exception as exc:  # any failure stops every worker; the journal keeps what is done
            self._fail(exc)
        finally:
            worker.close()

    @staticmethod
    def _lower_deadlock_timeout(worker):
        """If a chunk and an application transaction ever deadlock, the chunk should be the one
        that notices first and gives way (it is retried); needs superuser or a SET grant."""
        try:
            worker.scalar("SELECT set_config('deadlock_timeout', '100ms', false)")
        except psycopg2.Error:
            pass

    def _copy_with_retries(self, worker, chunk):
        for attempt in range(1, ATTEMPTS_PER_CHUNK + 1):
            try:
                return self._copy(worker, chunk)
            except psycopg2.Error as exc:
                if exc.pgcode not in RETRYABLE or attempt == ATTEMPTS_PER_CHUNK:
                    raise self._explain(exc, chunk)
                time.sleep(0.05 * attempt)

    def _copy(self, worker, chunk):
        lo = chunk * self.chunking['chunk_blocks']
        hi = lo + self.chunking['chunk_blocks']
        settings = {'statement_timeout': '%dms' % self.statement_timeout_ms, 'synchronous_commit': 'off'}
        with worker.transaction(settings=settings):
            with worker.conn.cursor() as cur:
                cur.execute(self.statement, {'lo': '(%d,0)' % lo, 'hi': '(%d,0)' % hi})
                copied = cur.rowcount
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

    def _fail(self, exc):
        with self._lock:
            self._errors.append(exc)


def first_chunk_sql(session, info, plan, chunking):
    """The statement of chunk 0, as check mode shows it."""
    overriding = any(c['identity'] == 'a' for c in info['columns'])
    stmt = chunk_statement(info['schema'], info['name'], plan['new_table'], catalog.copy_columns(info), overriding)
    return session.text(stmt, {'lo': '(0,0)', 'hi': '(%d,0)' % chunking['chunk_blocks']})
