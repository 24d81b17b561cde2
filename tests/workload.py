"""A concurrent writer that remembers every change it committed (the ledger).

It inserts, updates (sometimes moving a row to another month) and deletes rows of a table
with columns (id, created_at, payload), including rows that existed before it started, and
runs one slow transaction that stays open for `slow_seconds`.  After the run,
expected_state(initial) is what the table must contain: every committed change present
exactly once, nothing else.
"""
import random
import threading
import time

import psycopg2
from psycopg2 import sql


class LedgerWriter:
    def __init__(self, url, schema, table, initial_ids, seed=7, slow_seconds=2.0, pause=0.002, threads=3):
        self.url, self.schema, self.table = url, schema, table
        self.known = list(initial_ids)
        self.slow_seconds = slow_seconds
        self.pause = pause
        self.threads = threads
        self.ledger = {}            # id -> (created_at text, payload) or None when deleted
        self.committed = {'insert': 0, 'update': 0, 'delete': 0, 'slow': 0}
        self.failures = []
        self._stop = threading.Event()
        self._threads = []
        self._lock = threading.Lock()

    def start(self):
        self._threads = [threading.Thread(target=self._loop, args=(seed,), daemon=True) for seed in range(self.threads)]
        self._threads.append(threading.Thread(target=self._slow_transaction, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self):
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        return self

    def _conn(self):
        conn = psycopg2.connect(self.url)
        conn.autocommit = False
        return conn

    def _target(self):
        return sql.Identifier(self.schema, self.table)

    def _loop(self, seed):
        conn = self._conn()
        rng = random.Random(seed)
        try:
            while not self._stop.is_set():
                op = rng.choice(('insert', 'update', 'update', 'delete'))
                try:
                    self._one(conn, op, rng)
                except psycopg2.Error as exc:
                    conn.rollback()
                    self.failures.append('%s: %s' % (op, str(exc).strip()))
                time.sleep(self.pause)
        finally:
            conn.close()

    def _one(self, conn, op, rng):
        with conn.cursor() as cur:
            if op == 'insert':
                payload = 'ins-%d' % rng.randrange(10 ** 9)
                cur.execute(sql.SQL("INSERT INTO {} (created_at, payload) VALUES (now() - make_interval(days => %s), %s) "
                                    "RETURNING id, created_at::text").format(self._target()),
                            (rng.randrange(0, 200), payload))
                row_id, created = cur.fetchone()
                conn.commit()
                self._record(row_id, (created, payload), op)
                return
            with self._lock:
                if not self.known:
                    return
                row_id = rng.choice(self.known)
            if op == 'update':
                payload = 'upd-%d' % rng.randrange(10 ** 9)
                move = rng.random() < 0.3  # sometimes move the row to another month
                cur.execute(sql.SQL("UPDATE {} SET payload = %s, created_at = CASE WHEN %s THEN created_at - "
                                    "interval '40 days' ELSE created_at END WHERE id = %s "
                                    "RETURNING id, created_at::text").format(self._target()), (payload, move, row_id))
                row = cur.fetchone()
                conn.commit()
                if row:
                    self._record(row[0], (row[1], payload), op)
            else:
                cur.execute(sql.SQL('DELETE FROM {} WHERE id = %s RETURNING id').format(self._target()), (row_id,))
                row = cur.fetchone()
                conn.commit()
                if row:
                    self._record(row_id, None, op)

    def _record(self, row_id, value, op):
        with self._lock:
            self.ledger[row_id] = value
            self.committed[op] += 1
            if value is None:
                self.known = [k for k in self.known if k != row_id]
            elif op == 'insert':
                self.known.append(row_id)

    def _slow_transaction(self):
        """Inserts and updates, then keeps the transaction open across the copy or the swap."""
        conn = self._conn()
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("INSERT INTO {} (created_at, payload) VALUES (now(), 'slow') "
                                    "RETURNING id, created_at::text").format(self._target()))
                row_id, created = cur.fetchone()
                deadline = time.time() + self.slow_seconds
                while time.time() < deadline and not self._stop.is_set():
                    time.sleep(0.05)
                conn.commit()
            self._record(row_id, (created, 'slow'), 'insert')
            with self._lock:
                self.committed['slow'] += 1
        except psycopg2.Error as exc:
            self.failures.append('slow: %s' % exc)
        finally:
            conn.close()

    def expected_state(self, initial):
        """initial: {id: (created_at, payload)} before the writer started."""
        state = dict(initial)
        for row_id, value in self.ledger.items():
            if value is None:
                state.pop(row_id, None)
            else:
                state[row_id] = value
        return state


def table_state(url, schema, table):
    """{id: (created_at text, payload)} and the number of rows, read in one statement."""
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL('SELECT id, created_at::text, payload FROM {}').format(sql.Identifier(schema, table)))
            rows = cur.fetchall()
    finally:
        conn.close()
    return dict((r[0], (r[1], r[2])) for r in rows), len(rows)
