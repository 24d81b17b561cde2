#!/usr/bin/env python3
"""A small concurrent writer for the demo and the benchmarks.

Keeps inserting rows into event_impressions and ticket_analytics, about `rate`
rows per second into each, through the table names only (so after the swap it
writes into the partitioned table), one connection and thread per table:

    python tools/demo_writer.py --dsn URL [--rate 20] [--duration SECONDS]
                                [--stop-file PATH] [--summary PATH] [--api-roles]

It stops after --duration, when the stop file exists, or on SIGTERM/SIGINT, and
prints a one-line JSON summary (also written to --summary PATH):

    attempted / committed / failed   inserts, all tables together (and per table)
    uncertain                        failures where the connection was lost mid-statement:
                                     the row may or may not have been committed
    longest_stall_ms                 the longest time any single insert took (failed or not)
    p50_ms / p99_ms                  statement latency percentiles
    reconnects, errors               reconnections, and the first distinct error messages
    run_id                           marks the rows of this run (see below)

Only the INSERT statement is timed (autocommit: the statement is the transaction).
Pacing sleeps happen between statements; a slow statement is never hidden by them,
and after a stall the writer resumes its rate without bursting to catch up.
On failure it reconnects with bounded exponential backoff (50 ms .. 2 s, jittered)
and counts the failure.

Rows are marked so a checker can count them: event_impressions.session_id is
'demo-<run_id>' and ticket_analytics.channel is 'Demo-<RUN_ID>' on insert, which the
normalize trigger stores lower-cased ('demo-<run_id>'): a row stored with the capital
letter means the trigger was lost.  `count_rows(dsn, run_id)` returns the counts.

From Python:

    w = Writer(dsn, rate=20).start(); ...; w.stop(); w.summary()
"""
import argparse
import json
import os
import random
import signal
import sys
import threading
import time
import uuid

import psycopg2
from psycopg2 import sql

TABLES = ("event_impressions", "ticket_analytics")
# with --api-roles each table is written as the role a Supabase client would use
API_ROLES = {"event_impressions": "authenticated", "ticket_analytics": "service_role"}
BACKOFF_MIN, BACKOFF_MAX = 0.05, 2.0
MAX_ERRORS_KEPT = 10


class _TableWriter:
    """One table, one connection, one thread."""

    def __init__(self, parent, table, role):
        self.parent = parent
        self.table = table
        self.role = role
        self.conn = None
        self.event_ids = None
        self.attempted = self.committed = self.failed = self.uncertain = self.reconnects = 0
        self.longest = 0.0
        self.durations = []
        self.rng = random.Random(f"{parent.run_id}:{table}")
        self.seq = 0
        self.thread = threading.Thread(target=self._run, name=f"demo-writer-{table}", daemon=True)

    # -- connection
    def _connect(self):
        p = self.parent
        conn = psycopg2.connect(p.dsn, application_name=f"demo_writer:{self.table}",
                                connect_timeout=p.connect_timeout)
        conn.autocommit = True
        with conn.cursor() as cur:
            if p.statement_timeout_ms is not None:
                cur.execute("SELECT set_config('statement_timeout', %s, false)", (f"{p.statement_timeout_ms}ms",))
            if self.event_ids is None:
                cur.execute("SELECT id FROM events ORDER BY id LIMIT 1000")
                self.event_ids = [r[0] for r in cur.fetchall()] or [1]
            if self.role:
                cur.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.role)))
        self.conn = conn

    def _close(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
            self.conn = None

    # -- one insert
    def _statement(self):
        self.seq += 1
        rng = self.rng
        event_id = rng.choice(self.event_ids)
        if self.table == "event_impressions":
            return ("INSERT INTO event_impressions (event_id, user_id, session_id, source, metadata)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    (event_id, str(uuid.UUID(int=rng.getrandbits(128))) if rng.random() < 0.7 else None,
                     f"demo-{self.parent.run_id}", rng.choice(("web", "ios", "android")),
                     json.dumps({"writer": "demo_writer", "run": self.parent.run_id, "n": self.seq})))
        return ("INSERT INTO ticket_analytics (event_id, ticket_type, quantity, unit_price, channel)"
                " VALUES (%s, %s, %s, %s, %s)",
                (event_id, rng.choice(("general", "vip", "student")), rng.randint(1, 4),
                 rng.choice(("25.00", "49.50", "75.00")), f"Demo-{self.parent.run_id.upper()}"))

    def _insert_once(self):
        query, params = self._statement()
        self.attempted += 1
        started = time.monotonic()
        try:
            with self.conn.cursor() as cur:
                cur.execute(query, params)
        except psycopg2.Error as exc:
            elapsed = time.monotonic() - started
            self._record(elapsed)
            self.failed += 1
            # an error reported by the server (it has a SQLSTATE) means the autocommitted insert
            # was rolled back; without one the connection broke and the outcome is unknown
            if getattr(exc, "pgcode", None) is None:
                self.uncertain += 1
            self.parent._error(self.table, exc)
            return False
        self._record(time.monotonic() - started)
        self.committed += 1
        return True

    def _record(self, elapsed):
        with self.parent.lock:
            self.durations.append(elapsed)
            if elapsed > self.longest:
                self.longest = elapsed

    # -- loop
    def _run(self):
        p = self.parent
        interval = 1.0 / p.rate if p.rate > 0 else 0.0
        backoff = BACKOFF_MIN
        next_due = time.monotonic()
        while not p.stopping.is_set():
            if self.conn is None:
                try:
                    self._connect()
                    backoff = BACKOFF_MIN
                except psycopg2.Error as exc:
                    p._error(self.table, exc)
                    self._close()
                    if p.stopping.wait(backoff * (0.5 + random.random() / 2)):
                        break
                    backoff = min(BACKOFF_MAX, backoff * 2)
                    continue
            ok = self._insert_once()
            if not ok:
                self._close()
                self.reconnects += 1
                if p.stopping.wait(backoff * (0.5 + random.random() / 2)):
                    break
                backoff = min(BACKOFF_MAX, backoff * 2)
                next_due = time.monotonic()
                continue
            backoff = BACKOFF_MIN
            next_due += interval
            now = time.monotonic()
            if next_due < now:          # after a stall: resume the rate, do not burst
                next_due = now
            elif p.stopping.wait(next_due - now):
                break
        self._close()

    def cancel(self):
        conn = self.conn
        if conn is not None:
            try:
                conn.cancel()
            except Exception:
                pass


class Writer:
    """Concurrent writer running in background threads (one per table).

    Writer(dsn, rate=20.0, tables=TABLES, roles=None, statement_timeout_ms=None)
      dsn                 libpq URL or key=value string
      rate                rows per second per table
      roles               {table: role} to SET ROLE per table (e.g. API_ROLES), default none
      statement_timeout_ms  per-statement timeout on the writer's sessions (default: none,
                          so that a blocked insert shows up as a stall rather than an error)
    start() -> self; stop(timeout=10) -> summary dict; summary() -> dict (also while running).
    """

    def __init__(self, dsn, rate=20.0, *, tables=TABLES, roles=None, statement_timeout_ms=None,
                 connect_timeout=5, run_id=None):
        if rate <= 0:
            raise ValueError("rate must be > 0")
        unknown = set(tables) - set(TABLES)
        if unknown:
            raise ValueError(f"unknown tables: {sorted(unknown)}")
        self.dsn = dsn
        self.rate = float(rate)
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout = connect_timeout
        self.run_id = run_id or uuid.uuid4().hex[:12]
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.errors = []
        self.started_at = self.stopped_at = None
        roles = roles or {}
        self.writers = [_TableWriter(self, t, roles.get(t)) for t in tables]

    def start(self):
        if self.started_at is not None:
            raise RuntimeError("Writer already started")
        self.started_at = time.monotonic()
        for w in self.writers:
            w.thread.start()
        return self

    def stop(self, timeout=10.0):
        """Stop the threads (cancelling a statement still blocked after `timeout` s); return summary()."""
        self.stopping.set()
        deadline = time.monotonic() + timeout
        for w in self.writers:
            w.thread.join(max(0.0, deadline - time.monotonic()))
        for w in self.writers:
            if w.thread.is_alive():
                w.cancel()
                w.thread.join(5.0)
        if self.stopped_at is None:
            self.stopped_at = time.monotonic()
        return self.summary()

    def wait(self, duration=None, stop_file=None, poll=0.2):
        """Block until `duration` s passed, `stop_file` exists or stop() was called."""
        end = None if duration is None else time.monotonic() + duration
        while not self.stopping.is_set():
            if stop_file and os.path.exists(stop_file):
                return "stop-file"
            if end is not None and time.monotonic() >= end:
                return "duration"
            remaining = poll if end is None else max(0.0, min(poll, end - time.monotonic()))
            self.stopping.wait(remaining)
        return "stopped"

    def _error(self, table, exc):
        message = f"{table}: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        with self.lock:
            if message not in self.errors and len(self.errors) < MAX_ERRORS_KEPT:
                self.errors.append(message)

    def summary(self):
        with self.lock:
            durations = sorted(d for w in self.writers for d in w.durations)
            per_table = {w.table: {"attempted": w.attempted, "committed": w.committed, "failed": w.failed,
                                   "uncertain": w.uncertain, "longest_stall_ms": round(w.longest * 1000, 1)}
                         for w in self.writers}
            errors = list(self.errors)

        def pct(q):
            if not durations:
                return None
            return round(durations[min(len(durations) - 1, int(q * len(durations)))] * 1000, 2)

        end = self.stopped_at or time.monotonic()
        return {
            "run_id": self.run_id,
            "duration_s": round(end - self.started_at, 2) if self.started_at else 0.0,
            "rate_per_table": self.rate,
            "attempted": sum(w.attempted for w in self.writers),
            "committed": sum(w.committed for w in self.writers),
            "failed": sum(w.failed for w in self.writers),
            "uncertain": sum(w.uncertain for w in self.writers),
            "reconnects": sum(w.reconnects for w in self.writers),
            "longest_stall_ms": round(max((w.longest for w in self.writers), default=0.0) * 1000, 1),
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "per_table": per_table,
            "errors": errors,
        }


def count_rows(dsn_or_conn, run_id):
    """Rows written by run `run_id`, per table, as stored: {"event_impressions": n,
    "ticket_analytics": n, "ticket_analytics_not_normalized": n}."""
    own = not hasattr(dsn_or_conn, "cursor")
    conn = psycopg2.connect(dsn_or_conn) if own else dsn_or_conn
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM event_impressions WHERE session_id = %s", (f"demo-{run_id}",))
            ei = cur.fetchone()[0]
            cur.execute("SELECT count(*) FILTER (WHERE channel = %s), count(*) FILTER (WHERE channel = %s)"
                        " FROM ticket_analytics WHERE lower(channel) = %s",
                        (f"demo-{run_id}", f"Demo-{run_id.upper()}", f"demo-{run_id}"))
            ta, raw = cur.fetchone()
        conn.rollback()
        return {"event_impressions": ei, "ticket_analytics": ta + raw, "ticket_analytics_not_normalized": raw}
    finally:
        if own:
            conn.close()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"),
                        help="libpq URL or key=value string (default: $DATABASE_URL, which keeps the "
                             "password off the command line)")
    parser.add_argument("--rate", type=float, default=20.0, help="rows per second per table (default 20)")
    parser.add_argument("--duration", type=float, default=None, help="seconds to run (default: until stopped)")
    parser.add_argument("--stop-file", help="stop as soon as this file exists")
    parser.add_argument("--summary", help="also write the JSON summary to this file")
    parser.add_argument("--tables", default=",".join(TABLES), help="comma-separated (default both)")
    parser.add_argument("--api-roles", action="store_true",
                        help="write event_impressions as authenticated and ticket_analytics as service_role "
                             "(exercises grants and policies)")
    parser.add_argument("--statement-timeout-ms", type=int, default=None)
    parser.add_argument("--run-id", help="marker of this run's rows (default: random)")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("give --dsn or set DATABASE_URL")

    tables = tuple(t.strip() for t in args.tables.split(",") if t.strip())
    writer = Writer(args.dsn, args.rate, tables=tables, roles=API_ROLES if args.api_roles else None,
                    statement_timeout_ms=args.statement_timeout_ms, run_id=args.run_id)

    def on_signal(signum, frame):
        writer.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    writer.start()
    writer.wait(args.duration, args.stop_file)
    summary = writer.stop()
    line = json.dumps(summary, sort_keys=False)
    if args.summary:
        tmp = f"{args.summary}.tmp"
        with open(tmp, "w") as f:
            f.write(line + "\n")
        os.replace(tmp, args.summary)
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
