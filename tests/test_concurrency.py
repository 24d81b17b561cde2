"""Online means online: writes during the copy and the swap, a killed run, a blocking reader.

After every scenario the table must hold exactly the initial rows plus every committed
change of the concurrent writer (tests/workload.py), each present once.
"""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from ansible.module_utils import pgpart_journal as journal
from helpers import convert, verified
from workload import LedgerWriter, table_state

pytestmark = pytest.mark.timeout(300)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def activity(db):
    """60k rows over 24 months; ids from a bigserial; an index besides the primary key."""
    db.query("CREATE TABLE activity (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(), "
             "payload text NOT NULL)")
    db.query("CREATE INDEX activity_created_at_idx ON activity (created_at)")
    db.query("INSERT INTO activity (created_at, payload) SELECT now() - make_interval(secs => g * 1036.8), "
             "'init-' || g FROM generate_series(1, 60000) g")
    db.query("ANALYZE activity")
    return db


def assert_exact(db, writer, initial):
    state, count = table_state(db.url, 'public', 'activity')
    expected = writer.expected_state(initial)
    assert count == len(state), 'an id is present more than once'
    missing = set(expected) - set(state)
    extra = set(state) - set(expected)
    changed = [k for k in expected if k in state and state[k] != expected[k]]
    assert not missing and not extra and not changed, (sorted(missing)[:5], sorted(extra)[:5], changed[:5])


def test_writes_during_backfill_and_swap_are_all_present_exactly_once(activity, session_for):
    initial, _ = table_state(activity.url, 'public', 'activity')
    writer = LedgerWriter(activity.url, 'public', 'activity', list(initial), slow_seconds=2.5).start()
    time.sleep(0.3)
    try:
        result = convert(session_for(activity), 'activity', batch_rows=6000, batch_pause_ms=20, workers=2,
                         lock_timeout_ms=200, lock_attempts=100, max_backoff_ms=400)
        time.sleep(0.5)  # keep writing into the partitioned table after the swap
    finally:
        writer.stop()
    assert result['phase'] == 'converted'
    assert writer.failures == []
    assert min(writer.committed['update'], writer.committed['delete'], writer.committed['insert']) > 20
    assert writer.committed['slow'] == 1
    assert_exact(activity, writer, initial)
    verified(session_for(activity), 'activity')  # and activity_old stayed exactly current too


def test_a_run_killed_mid_backfill_resumes_and_ends_exact(activity, session_for):
    initial, _ = table_state(activity.url, 'public', 'activity')
    writer = LedgerWriter(activity.url, 'public', 'activity', list(initial), slow_seconds=0.5).start()
    script = ("import sys, json; sys.path[:0] = ['tests', 'tools']; import conftest; "
              "from ansible.module_utils import pgpart_db, pgpart_convert; "
              "s = pgpart_db.connect({'database_url': sys.argv[1]}); "
              "pgpart_convert.Conversion(s, 'public', 'activity', batch_rows=1000, batch_pause_ms=150, workers=1).run()")
    child = subprocess.Popen([sys.executable, '-c', script, activity.url], cwd=ROOT, start_new_session=True)
    session = session_for(activity)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            progress = journal.backfill_progress(session, 'public', 'activity') if journal.exists(session) else None
            if progress and progress['chunks_done'] >= 5:
                break
            time.sleep(0.1)
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        entry = journal.read(session, 'public', 'activity')
        assert entry['phase'] == 'syncing'
        done_before = journal.backfill_progress(session, 'public', 'activity')['chunks_done']
        assert 5 <= done_before < entry['backfill']['chunks']
        result = convert(session, 'activity', batch_rows=1000, workers=2)
        time.sleep(0.3)
    finally:
        if child.poll() is None:
            os.killpg(child.pid, signal.SIGKILL)
        writer.stop()
    backfill_step = next(s for s in result['steps'] if s['phase'] == 'backfilled')
    assert backfill_step['chunks_resumed_from'] >= done_before  # it did not start over
    assert writer.failures == []
    assert_exact(activity, writer, initial)
    verified(session, 'activity')


def test_a_long_reader_delays_the_swap_but_nobody_queues_behind_it(activity, session_for):
    lock_timeout_ms = 200
    reader = activity.connect(autocommit=False)
    with reader.cursor() as cur:
        cur.execute("SELECT count(*) FROM activity")  # holds ACCESS SHARE until commit
    latencies, stop = [], threading.Event()

    def probe():
        conn = activity.connect()
        with conn.cursor() as cur:
            while not stop.is_set():
                started = time.time()
                cur.execute("SELECT payload FROM activity WHERE id = 1")
                latencies.append(time.time() - started)
                time.sleep(0.02)
        conn.close()
    outcome = {}

    def run():
        outcome['result'] = convert(session_for(activity), 'activity', lock_timeout_ms=lock_timeout_ms,
                                    lock_attempts=200, max_backoff_ms=300)
    probe_thread, convert_thread = threading.Thread(target=probe), threading.Thread(target=run)
    probe_thread.start()
    convert_thread.start()
    time.sleep(4.0)  # the copy finishes quickly; the swap keeps retrying behind the reader
    assert convert_thread.is_alive(), 'the swap did not wait for the reader'
    reader.commit()
    reader.close()
    convert_thread.join(timeout=120)
    stop.set()
    probe_thread.join(timeout=10)
    swap = next(s for s in outcome['result']['steps'] if s['phase'] == 'swapped')
    assert swap['attempts'] > 3
    # Each attempt gives up after lock_timeout; a query queued behind it waits no longer than that
    # (plus the swap itself). Without lock_timeout it would have waited the reader's 4 seconds.
    assert max(latencies) < 1.0, sorted(latencies)[-5:]
    assert len(latencies) > 50
    verified(session_for(activity), 'activity')


def test_a_swap_that_never_gets_its_locks_gives_up_cleanly_and_resumes_later(activity, session_for):
    reader = activity.connect(autocommit=False)
    with reader.cursor() as cur:
        cur.execute("SELECT count(*) FROM activity")
        cur.execute("SELECT pg_backend_pid()")
        reader_pid = cur.fetchone()[0]
    time.sleep(1.2)  # an old enough transaction to be reported as a blocker
    session = session_for(activity)
    with pytest.raises(Exception) as failure:
        convert(session, 'activity', lock_timeout_ms=100, lock_attempts=3, max_backoff_ms=100)
    assert 'could not take the locks needed within lock_timeout=100ms after 3 attempts' in str(failure.value)
    assert reader_pid in [b['pid'] for b in failure.value.details['blockers']]
    assert journal.read(session, 'public', 'activity')['phase'] == 'verified'
    assert activity.scalar("SELECT relkind FROM pg_class WHERE relname = 'activity'") == 'r'
    reader.commit()
    reader.close()
    result = convert(session, 'activity')
    assert [s['phase'] for s in result['steps']] == ['swapped', 'converted']
    verified(session, 'activity')


def test_trap20_database_statement_timeout_does_not_kill_the_conversion(activity, session_for):
    """Supabase sets statement_timeout per role and database (2 min, anon 3 s): whole-table
    verification must not be killed by it, and each chunk runs under its own timeout."""
    activity.query("ALTER DATABASE %s SET statement_timeout = '15ms'" % activity.name)
    slow = "SELECT count(*) FROM activity a, generate_series(1, 40)"
    with pytest.raises(Exception, match='statement timeout'):
        activity.query(slow)  # the setting bites ordinary sessions
    session = session_for(activity)
    with pytest.raises(Exception) as failure:
        convert(session, 'activity', statement_timeout_ms=1, batch_rows=60000)
    assert 'exceeded statement_timeout (1 ms)' in str(failure.value)
    assert 'copied chunks are kept, re-run to continue' in str(failure.value)
    assert journal.read(session, 'public', 'activity')['phase'] == 'syncing'
    result = convert(session, 'activity')  # the default chunk timeout, verification unbounded
    assert result['phase'] == 'converted'
    verified(session, 'activity')


def test_an_index_build_interrupted_half_way_is_finished_by_the_next_run(activity, session_for, monkeypatch):
    """Secondary indexes are built after the copy, CONCURRENTLY per partition; a crash can leave
    some attached, some missing and one INVALID (an interrupted CREATE INDEX CONCURRENTLY)."""
    from ansible.module_utils import pgpart_ddl
    session = session_for(activity)
    real, calls, lock = pgpart_ddl.attach_partition_index, [], threading.Lock()

    def crash_after_five(*args):  # builds run on two worker threads: count under a lock
        with lock:
            if len(calls) == 5:
                raise RuntimeError('simulated crash')
            calls.append(args)
        return real(*args)
    monkeypatch.setattr(pgpart_ddl, 'attach_partition_index', crash_after_five)
    with pytest.raises(RuntimeError, match='simulated crash'):
        convert(session, 'activity')
    monkeypatch.setattr(pgpart_ddl, 'attach_partition_index', real)
    leaves = [r[0] for r in activity.query("SELECT c.relname FROM pg_partition_tree('activity_new') t "
                                           "JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf ORDER BY 1")]
    victim = [l for l in leaves if l != 'activity_phistory'][-1]  # the last in plan order: not reached yet
    activity.query('CREATE INDEX CONCURRENTLY crashed_idx ON %s (created_at)' % victim)
    activity.query("UPDATE pg_index SET indisvalid = false WHERE indexrelid = 'crashed_idx'::regclass")
    result = convert(session, 'activity')
    assert result['phase'] == 'converted'
    backfill = next(s for s in result['steps'] if s['phase'] == 'backfilled')
    assert backfill['indexes_built'] == len(leaves) - 5
    assert activity.scalar("SELECT count(*) FROM pg_class WHERE relname = 'crashed_idx'") == 0
    verified(session, 'activity')  # every index valid, one per partition and parent index


def test_parallel_workers_stop_at_the_first_failure_and_hand_back_their_sql(db, session_for):
    """on_siblings (backfill chunks, partition indexes): work runs on separate backends, the first
    failure stops every worker from taking another item and reaches the caller, and the SQL the
    workers ran joins the caller's record."""
    from ansible.module_utils.pgpart_db import on_siblings
    session = session_for(db)
    db.query('CREATE TABLE work_log (item int PRIMARY KEY, pid int NOT NULL)')
    taken = []

    def do(worker, item):
        taken.append(item)
        if item == 4:
            raise RuntimeError('item 4 failed')
        worker.run('INSERT INTO public.work_log VALUES (%s, pg_backend_pid())', (item,))
        time.sleep(0.05)  # both workers get a share
    with pytest.raises(RuntimeError, match='item 4 failed'):
        on_siblings(session, range(20), 2, do)
    done = dict(db.query('SELECT item, pid FROM work_log'))
    assert 4 not in done and len(taken) <= 6, taken  # at most the other worker's item in flight after 4
    assert len(set(done.values())) == 2 and session.conn.get_backend_pid() not in done.values()
    assert sorted(int(q.split('(')[1].split(',')[0]) for q in session.queries) == sorted(done)
