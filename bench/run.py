#!/usr/bin/env python3
"""Benchmarks, side by side in one run: this project's online conversion of event_impressions
against the decision document's hand-written one-transaction migration, on identical copies.

    .venv/bin/python bench/run.py [--rows 2000000] [--small-rows N] [--version 15|18]
                                  [--workers 1,2,4] [--rate 50] [--repeat 1] [--set name=value ...]

Starts its own throwaway cluster (PostgreSQL defaults: fsync on, shared_buffers 128MB, ...;
--set overrides), builds the sample database once per size (tools/sample_db.py, fixed seed and
`now`), VACUUM ANALYZEs it, and clones it (CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY)
for every measurement, so each starts from a byte-identical copy.  Writes
bench/results/<UTC timestamp>-<rows>.{md,json}.  See bench/README.md for what is measured.
"""
import argparse
import datetime as dt
import json
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import psycopg2
from psycopg2 import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / 'tools'))
import ansible.module_utils  # noqa: E402

if str(ROOT / 'module_utils') not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / 'module_utils'))

import sample_db  # noqa: E402
from demo_writer import Writer  # noqa: E402
from pgcluster import Cluster  # noqa: E402
from ansible.module_utils import pgpart_assess, pgpart_convert, pgpart_db, pgpart_plan, pgpart_verify  # noqa: E402

TABLE = 'event_impressions'
QUERY = "SELECT COUNT(*) FROM event_impressions WHERE created_at > now() - interval '6 months'"
IN_RANGE = "SELECT count(*) FILTER (WHERE created_at > now() - interval '6 months'), count(*) FROM event_impressions"
SEQ_SCANS = {'enable_indexscan': 'off', 'enable_indexonlyscan': 'off', 'enable_bitmapscan': 'off'}
SERIAL = {'max_parallel_workers_per_gather': 0}
# how the query is planned: as the planner likes, and with the sequential scans the decision
# document assumed; each also without parallel workers (steadier on a small machine)
QUERY_PLANS = {'as planned': {}, 'as planned, serial': SERIAL, 'sequential scans': SEQ_SCANS,
               'sequential scans, serial': dict(SEQ_SCANS, **SERIAL)}
PLANS_SHOWN = ('as planned', 'sequential scans')
SHOWN = ('server_version', 'fsync', 'synchronous_commit', 'full_page_writes', 'wal_compression', 'shared_buffers',
         'max_wal_size', 'checkpoint_timeout', 'work_mem', 'maintenance_work_mem', 'max_parallel_workers_per_gather',
         'max_parallel_maintenance_workers', 'autovacuum', 'jit', 'io_method')
PLAN_LINES = 30

# The decision document's migration, written by hand for event_impressions.  Everything the
# project's conversion also carries is here, so both end with the same table: the indexes and
# the foreign key are built after the one INSERT (the fastest way by hand), then the sequence,
# RLS, policies, grants, the view and the publication.  ANALYZE and the document's row-count
# check follow the transaction.
HAND_CREATE = """CREATE TABLE event_impressions (
    id bigint NOT NULL DEFAULT nextval('event_impressions_id_seq'::regclass),
    event_id bigint NOT NULL,
    user_id uuid,
    session_id text,
    source text NOT NULL DEFAULT 'web'
        CONSTRAINT event_impressions_source_check CHECK (source IN ('web', 'ios', 'android', 'email')),
    metadata jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at)"""
HAND_COLUMNS = 'id, event_id, user_id, session_id, source, metadata, created_at'
HAND_INDEXES = [
    "CREATE INDEX ON event_impressions (event_id, created_at)",
    "CREATE INDEX ON event_impressions (created_at)",
    "CREATE INDEX ON event_impressions (user_id) WHERE user_id IS NOT NULL",
    "CREATE INDEX ON event_impressions ((metadata ->> 'campaign'))",
]
HAND_REST = [
    "ALTER TABLE event_impressions ADD CONSTRAINT event_impressions_event_id_fkey "
    "FOREIGN KEY (event_id) REFERENCES events (id)",
    "ALTER SEQUENCE event_impressions_id_seq OWNED BY event_impressions.id",
    "ALTER TABLE event_impressions ENABLE ROW LEVEL SECURITY",
    "CREATE POLICY impressions_read ON event_impressions FOR SELECT TO authenticated USING (true)",
    "CREATE POLICY impressions_insert ON event_impressions FOR INSERT TO anon, authenticated "
    "WITH CHECK (source <> 'email')",
    "GRANT SELECT, INSERT ON event_impressions TO anon, authenticated",
    "GRANT ALL ON event_impressions TO service_role",
    "CREATE OR REPLACE VIEW event_impressions_daily WITH (security_invoker = true) AS SELECT event_id, "
    "date_trunc('day', created_at) AS day, count(*) AS impressions FROM event_impressions "
    "GROUP BY event_id, date_trunc('day', created_at)",
    "ALTER PUBLICATION analytics_pub DROP TABLE event_impressions_old",
    "ALTER PUBLICATION analytics_pub ADD TABLE event_impressions",
]


def connect(url, **settings):
    conn = psycopg2.connect(url, connect_timeout=10, application_name='bench')
    conn.autocommit = True
    with conn.cursor() as cur:
        for name, value in dict({'statement_timeout': 0}, **settings).items():
            cur.execute('SELECT set_config(%s, %s, false)', (name, str(value)))
    return conn


@contextmanager
def opened(url, **settings):
    conn = connect(url, **settings)
    try:
        yield conn
    finally:
        conn.close()


def execute(url, *statements):
    with opened(url) as conn:
        for statement in statements:
            conn.cursor().execute(statement)


def scalar(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()[0]


def median(values):
    return round(statistics.median(values), 3)


class Watchdog(threading.Thread):
    """Bounds the whole run: at the deadline, every client backend of the cluster is terminated,
    so whatever the bench waits for fails and the cluster is stopped by the caller's finally."""

    def __init__(self, cluster, seconds):
        super().__init__(daemon=True)
        self.cluster, self.seconds, self.done, self.fired = cluster, seconds, threading.Event(), False

    def run(self):
        if self.done.wait(self.seconds):
            return
        self.fired = True
        print('bench: --timeout of %ds reached; terminating every session' % self.seconds, file=sys.stderr)
        with opened(self.cluster.url()) as conn:
            scalar(conn, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")


@contextmanager
def bench_cluster(name, version, seconds, settings=None):
    """A throwaway cluster in .work/<name>, every session terminated after `seconds` (Watchdog),
    stopped and deleted at the end, also on SIGTERM; yields it and its postmaster's pid."""
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit('bench: terminated'))  # finally runs
    cluster = Cluster(ROOT / '.work' / name, version, settings=dict({'max_connections': '50'}, **(settings or {})))
    cluster.start()
    watchdog = Watchdog(cluster, seconds)
    watchdog.start()
    try:
        yield cluster, int((cluster.data / 'postmaster.pid').read_text().split()[0])
    finally:
        watchdog.done.set()
        cluster.stop()


def write_results(name, out, text):
    """bench/results/<name>.json (every number) and .md (the report), printed too."""
    base = ROOT / 'bench' / 'results' / name
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix('.json').write_text(json.dumps(out, indent=1, default=str) + '\n')
    base.with_suffix('.md').write_text(text)
    print(text)
    print('bench: wrote %s.{md,json}' % base)


class CpuMeter:
    """CPU used by everything else on the machine while we measure (the machine may be shared)."""

    def __init__(self, postmaster_pid):
        self.postmaster = psutil.Process(postmaster_pid)
        self.start = self._sample()

    def _ours(self):
        total = sum(psutil.Process().cpu_times()[:2])
        times = self.postmaster.cpu_times()  # children_*: every backend that has exited
        total += times.user + times.system + times.children_user + times.children_system
        for child in self.postmaster.children():
            try:
                total += sum(child.cpu_times()[:2])
            except psutil.Error:
                pass
        return total

    def _sample(self):
        cpu = psutil.cpu_times()
        return time.monotonic(), cpu.user + cpu.nice + cpu.system + cpu.irq + cpu.softirq + cpu.steal, self._ours()

    def report(self):
        end = self._sample()
        wall, busy, ours = (b - a for a, b in zip(self.start, end))
        other = max(0.0, busy - ours)
        return {'other_cpu_s': round(other, 1), 'other_cpu_share': round(other / (wall * psutil.cpu_count()), 3)}


class Bench:
    def __init__(self, cluster, args, now, postmaster_pid):
        self.cluster, self.args, self.now, self.postmaster_pid = cluster, args, now, postmaster_pid

    def template(self, rows):
        return 'pristine_%d' % rows

    def build(self, rows):
        name = self.template(rows)
        execute(self.cluster.url(), sql.SQL('CREATE DATABASE {}').format(sql.Identifier(name)))
        started = time.monotonic()
        sample_db.build(self.cluster.url(name), rows=rows, seed=self.args.seed, now=self.now)
        execute(self.cluster.url(name), 'VACUUM (ANALYZE)')
        return round(time.monotonic() - started, 1)

    def clone(self, rows, name):
        self.drop(name)
        execute(self.cluster.url(), sql.SQL('CREATE DATABASE {} TEMPLATE {} STRATEGY FILE_COPY').format(
            sql.Identifier(name), sql.Identifier(self.template(rows))))
        url = self.cluster.url(name)
        execute(url, 'CHECKPOINT')  # every timed run starts without dirty buffers
        return url

    def drop(self, name):
        execute(self.cluster.url(), sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(name)))

    def writer(self, url):
        return Writer(url, rate=self.args.rate, tables=(TABLE,)).start() if self.args.rate else None

    # -- 1, 2, 3: the conversions ------------------------------------------------------------------
    def online(self, url, workers=None):
        session = pgpart_db.connect({'database_url': url})
        wal, meter = WalMeter(url), CpuMeter(self.postmaster_pid)
        writer = self.writer(url)
        started = time.monotonic()
        try:
            result = pgpart_convert.Conversion(session, 'public', TABLE, workers=workers).run()
        finally:
            total = time.monotonic() - started
            summary = writer.stop() if writer else None
            session.close()
        steps = dict((s['phase'], s) for s in result['steps'])
        phases = dict((s['phase'], s['seconds']) for s in result['steps'])
        backfill = steps['backfilled']
        return {'phases_s': phases, 'prepare_to_swap_s': round(sum(v for k, v in phases.items() if k != 'converted'), 2),
                'sum_of_phases_s': round(sum(phases.values()), 2), 'total_s': round(total, 2),
                'swap_lock_ms': steps['swapped']['lock_ms'], 'swap_attempts': steps['swapped']['attempts'],
                'sync_lock_ms': steps['syncing']['lock_ms'],
                'backfill': dict(copy_rate(backfill), chunks=backfill['chunks'], fk_checks=backfill.get('fk_checks')),
                'wal_mb': wal.mb(), 'writer': writer_summary(summary), 'other_load': meter.report()}

    def handwritten(self, url, plan):
        conn = connect(url)
        wal, meter = WalMeter(url), CpuMeter(self.postmaster_pid)
        writer = self.writer(url)
        steps, started = {}, time.monotonic()

        def step(name, statements):
            began = time.monotonic()
            for statement in statements:
                conn.cursor().execute(statement)
            steps[name] = round(time.monotonic() - began, 2)
        try:
            conn.autocommit = False
            step('rename', ['ALTER TABLE event_impressions RENAME TO event_impressions_old'])
            step('create table', [HAND_CREATE])
            step('partitions', [partition_of(p) for p in plan['partitions']])
            step('insert ... select', [sql.SQL('INSERT INTO event_impressions ({c}) SELECT {c} FROM event_impressions_old')
                                       .format(c=sql.SQL(HAND_COLUMNS))])
            step('indexes', HAND_INDEXES)
            step('foreign key, sequence, security, view, publication', HAND_REST)
            began = time.monotonic()
            conn.commit()
            steps['commit'] = round(time.monotonic() - began, 2)
            transaction = time.monotonic() - started
            conn.autocommit = True
            step('analyze', ['ANALYZE event_impressions'])
            step('row-count check', ['SELECT (SELECT count(*) FROM event_impressions_old), '
                                     '(SELECT count(*) FROM event_impressions)'])
        finally:
            total = time.monotonic() - started
            summary = writer.stop() if writer else None
            conn.close()
        return {'steps_s': steps, 'transaction_s': round(transaction, 2), 'total_s': round(total, 2),
                'wal_mb': wal.mb(), 'writer': writer_summary(summary), 'other_load': meter.report()}

    # -- 4: backfill throughput ----------------------------------------------------------------------
    def backfill_only(self, url, workers):
        session = pgpart_db.connect({'database_url': url})
        meter = CpuMeter(self.postmaster_pid)
        try:
            conversion = pgpart_convert.Conversion(session, 'public', TABLE, workers=workers, stop_before='verified')
            step = next(s for s in conversion.run()['steps'] if s['phase'] == 'backfilled')
        finally:
            session.close()
        return dict(copy_rate(step), workers=workers, other_load=meter.report())

    # -- 5: the decision document's query -----------------------------------------------------------
    def query(self, url, settings=None):
        with opened(url, **(settings or {})) as conn:
            cur = conn.cursor()
            cur.execute(IN_RANGE)
            in_range, total = cur.fetchone()
            times = []
            for _ in range(self.args.query_runs + 1):  # the first run warms the cache
                began = time.perf_counter()
                cur.execute(QUERY)
                cur.fetchall()
                times.append((time.perf_counter() - began) * 1000)
            cur.execute('EXPLAIN (ANALYZE, BUFFERS) ' + QUERY)
            plan = [r[0] for r in cur.fetchall()]
        return {'median_ms': round(statistics.median(times[1:]), 1), 'runs_ms': [round(t, 1) for t in times[1:]],
                'rows_in_range': in_range, 'rows_total': total, 'plan': trim(plan)}

    # -- 6: verification against plain scans --------------------------------------------------------
    def verification(self, url, plan):
        """compare_rows on the converted table and its _old copy, against one sequential scan of
        each that renders every row as text (what any row-by-row comparison must read)."""
        session = pgpart_db.connect({'database_url': url})
        conn = connect(url, max_parallel_workers_per_gather=0)
        verify, scans = [], []
        try:
            for _ in range(self.args.verify_runs):
                began = time.monotonic()
                result = pgpart_verify.compare_rows(session, 'public', plan['old_table'], TABLE, plan['key'],
                                                    plan['key_type'])
                verify.append(time.monotonic() - began)
                assert result['ok'], result['mismatches']
                began, parts = time.monotonic(), []
                for only, name in ((True, plan['old_table']), (False, TABLE)):
                    part_began = time.monotonic()
                    scalar(conn, sql.SQL('SELECT sum(length(t::text)) FROM {}{} t').format(
                        sql.SQL('ONLY ' if only else ''), sql.Identifier(name)))
                    parts.append(time.monotonic() - part_began)
                scans.append(time.monotonic() - began)
        finally:
            session.close()
            conn.close()
        return {'compare_rows_s': median(verify), 'baseline_scan_s': median(scans),
                'ratio': round(statistics.median(verify) / statistics.median(scans), 2),
                'runs': self.args.verify_runs}

    def quiet(self, url, limit=300):
        """Seconds until no autovacuum worker is busy in this database (at most `limit`)."""
        began = time.monotonic()
        with opened(url) as conn:
            while time.monotonic() - began < limit and scalar(
                    conn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'autovacuum worker' "
                          "AND datname = current_database()"):
                time.sleep(1)
        return round(time.monotonic() - began, 1)

    def vacuum(self, url):
        began = time.monotonic()
        execute(url, sql.SQL('VACUUM {}').format(sql.Identifier(TABLE)))
        return round(time.monotonic() - began, 2)


class WalMeter:
    def __init__(self, url):
        self.url = url
        with opened(url) as conn:
            self.start = scalar(conn, 'SELECT pg_current_wal_lsn()')

    def mb(self):
        with opened(self.url) as conn:
            return round(scalar(conn, 'SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)::float8', (self.start,)) / 1e6)


def copy_rate(step):
    """The backfill step's copy alone: its seconds without the secondary index builds and the
    VACUUM (ANALYZE) that follow it."""
    seconds = step['seconds'] - step.get('vacuum_seconds', 0) - step.get('index_seconds', 0)
    return {'rows': step['rows_copied'], 'seconds': round(seconds, 2), 'rows_per_s': round(step['rows_copied'] / seconds),
            'index_s': step.get('index_seconds'), 'vacuum_s': step.get('vacuum_seconds')}


def writer_summary(summary):
    if summary is None:
        return None
    return dict((k, summary[k]) for k in ('rate_per_table', 'attempted', 'committed', 'failed', 'longest_stall_ms',
                                          'p50_ms', 'p99_ms', 'errors'))


def trim(plan):
    """The plan's nodes and the lines that explain the timing; at most PLAN_LINES lines."""
    keep = ('->', 'Subplans Removed', 'Workers Launched', 'Heap Fetches', 'Rows Removed by Filter',
            'Planning Time', 'Execution Time')
    lines = [line for i, line in enumerate(plan) if i == 0 or any(k in line for k in keep)]
    if len(lines) > PLAN_LINES:
        lines = lines[:PLAN_LINES - 3] + ['   ... (%d more lines)' % (len(lines) - PLAN_LINES + 1)] + lines[-2:]
    return lines


def partition_of(partition):
    key_type = 'timestamp with time zone'
    lower = pgpart_plan.bound_literal(partition['from'], key_type)
    return sql.SQL('CREATE TABLE {} PARTITION OF event_impressions FOR VALUES FROM ({}) TO ({})').format(
        sql.Identifier(partition['name']), sql.SQL('MINVALUE') if lower is None else sql.Literal(lower),
        sql.Literal(pgpart_plan.bound_literal(partition['to'], key_type)))


def planned(url):
    session = pgpart_db.connect({'database_url': url})
    try:
        return pgpart_assess.assess_table(session, 'public', TABLE, 'created_at', pgpart_convert.DEFAULTS['premake'],
                                          pgpart_convert.DEFAULTS['max_future_months'])['plan']
    finally:
        session.close()


def machine():
    model = next((line.split(':', 1)[1].strip() for line in open('/proc/cpuinfo') if line.startswith('model name')),
                 platform.processor())
    return {'cpu': model, 'cores': psutil.cpu_count(), 'ram_gib': round(psutil.virtual_memory().total / 2 ** 30, 1),
            'kernel': platform.release(), 'python': platform.python_version()}


def git_state():
    def git(*args):
        return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    return {'commit': git('rev-parse', '--short', 'HEAD'), 'uncommitted_files': len(git('status', '--porcelain').splitlines())}


def run(bench, args):
    out = {'rows': args.rows, 'small_rows': args.small_rows, 'seed': args.seed, 'now': bench.now.isoformat()}
    out['build_s'] = {str(rows): bench.build(rows) for rows in (args.small_rows, args.rows)}
    meter = CpuMeter(bench.postmaster_pid)

    # 1-3, 5, 6 on the main size; the conversions alternate and repeat as asked
    out['online'], out['handwritten'] = [], []
    for attempt in range(args.repeat):
        url = bench.clone(args.rows, 'online')
        if attempt == 0:
            plan = planned(url)
            before = dict((label, bench.query(url, settings)) for label, settings in QUERY_PLANS.items())
        print('bench: online conversion %d/%d' % (attempt + 1, args.repeat), flush=True)
        out['online'].append(bench.online(url))
        if attempt == 0:
            after = dict((label, bench.query(url, settings)) for label, settings in QUERY_PLANS.items())
            out['verification'] = bench.verification(url, plan)
            out['autovacuum_wait_s'] = bench.quiet(url)
            out['vacuum_after_s'] = bench.vacuum(url)
            vacuumed = dict((label, bench.query(url, QUERY_PLANS[label])) for label in ('as planned', 'as planned, serial'))
            out['query'] = {'before': before, 'after': after, 'after VACUUM': vacuumed}
        bench.drop('online')
        url = bench.clone(args.rows, 'handwritten')
        print('bench: hand-written conversion %d/%d' % (attempt + 1, args.repeat), flush=True)
        out['handwritten'].append(bench.handwritten(url, plan))
        bench.drop('handwritten')

    # 3: the swap's lock on a smaller table, with the same writer
    out['online_small'] = []
    for attempt in range(args.repeat):
        print('bench: online conversion, %d rows' % args.small_rows, flush=True)
        out['online_small'].append(bench.online(bench.clone(args.small_rows, 'small')))
        bench.drop('small')

    # 4: backfill throughput by workers and size, no writer
    out['backfill_scaling'] = []
    for attempt in range(args.repeat):
        for rows in (args.small_rows, args.rows):
            for workers in args.workers:
                print('bench: backfill, %d rows, %d workers (%d/%d)' % (rows, workers, attempt + 1, args.repeat),
                      flush=True)
                result = bench.backfill_only(bench.clone(rows, 'scaling'), workers)
                out['backfill_scaling'].append(dict(result, table_rows=rows))
                bench.drop('scaling')
    out['other_load'] = meter.report()
    return out


def summarize(out):
    online = sorted(out['online'], key=lambda r: r['total_s'])[len(out['online']) // 2]
    hand = sorted(out['handwritten'], key=lambda r: r['total_s'])[len(out['handwritten']) // 2]
    q = out['query']
    ideal = q['before']['as planned']['rows_total'] / q['before']['as planned']['rows_in_range']
    q['ideal_ratio'] = round(ideal, 2)
    q['speedups'] = {}
    for when in ('after', 'after VACUUM'):
        for label, result in q[when].items():
            speedup = q['before'][label]['median_ms'] / result['median_ms']
            q['speedups']['%s, %s' % (label, when)] = {'speedup': round(speedup, 2), 'of_ideal': round(speedup / ideal, 2)}
    locks = [r['swap_lock_ms'] for r in out['online'] + out['online_small']]
    out['summary'] = {
        'online_total_s': online['total_s'], 'handwritten_total_s': hand['total_s'],
        'ratio_online_to_handwritten': round(online['total_s'] / hand['total_s'], 2),
        'ratio_prepare_to_swap_vs_transaction_and_check': round(
            online['prepare_to_swap_s'] / (hand['transaction_s'] + hand['steps_s']['row-count check']), 2),
    }
    out['goals'] = {
        'conversion no slower than hand-written': online['total_s'] <= hand['total_s'],
        'zero failed writes (online)': all(r['writer'] is None or r['writer']['failed'] == 0
                                           for r in out['online'] + out['online_small']),
        'swap lock under 100 ms at both sizes': max(locks) < 100,
        'query speedup >= 80% of ideal (as planned)': q['speedups']['as planned, after']['of_ideal'] >= 0.8,
        '... with the sequential scans the decision document assumed (serial)':
            q['speedups']['sequential scans, serial, after']['of_ideal'] >= 0.8,
        'verification under 1.5 sequential scans': out['verification']['ratio'] < 1.5,
    }
    return out


def share(load):
    """Other processes' CPU use while a measurement ran, as a share of the machine."""
    return '%.0f%%' % (100 * load['other_cpu_share'])


def markdown(out):
    L = []
    m, s = out['machine'], out['summary']
    L += ['# pgpart benchmark: %s rows, PostgreSQL %s' % (format(out['rows'], ','), out['settings']['server_version']),
          '', 'Run %s UTC with `%s` (commit %s, %d uncommitted files).' % (
              out['started'], out['command'], out['git']['commit'], out['git']['uncommitted_files']),
          '', 'Machine: %s, %d cores, %.1f GiB RAM, Linux %s.  Other load on the machine while measuring: '
          '%.0f CPU-seconds (%.0f%% of its capacity).' % (m['cpu'], m['cores'], m['ram_gib'], m['kernel'],
                                                            out['other_load']['other_cpu_s'],
                                                            100 * out['other_load']['other_cpu_share']),
          '', 'Settings: ' + ', '.join('%s=%s' % kv for kv in out['settings'].items() if kv[0] != 'server_version'),
          '', 'Sample database: seed %d, now %s; %s and %s rows per fact table; every measurement on a fresh '
          'clone (CREATE DATABASE ... TEMPLATE ... STRATEGY FILE_COPY) of one VACUUM ANALYZEd build, after a '
          'CHECKPOINT.  Writer: tools/demo_writer.py, %s inserts/s into event_impressions.' % (
              out['seed'], out['now'], format(out['small_rows'], ','), format(out['rows'], ','), out['rate']), '']

    L += ['## 1. Conversion wall time (median of %d)' % len(out['online']), '',
          '| this project (online) | s | hand-written (one transaction) | s |', '|---|---:|---|---:|']
    online = sorted(out['online'], key=lambda r: r['total_s'])[len(out['online']) // 2]
    hand = sorted(out['handwritten'], key=lambda r: r['total_s'])[len(out['handwritten']) // 2]
    left = list(online['phases_s'].items())
    extra = [('(backfilled: of which %s)' % label, online['backfill'].get(key))
             for label, key in (('the copy', 'seconds'), ('secondary index builds', 'index_s'),
                                ('VACUUM (ANALYZE) of the copy', 'vacuum_s'))]
    left[3:3] = [e for e in extra if e[1] is not None]
    left += [('prepare..swap (verify included)', online['prepare_to_swap_s']),
                                               ('sum of phases', online['sum_of_phases_s']),
                                               ('**total**', online['total_s'])]
    right = list(hand['steps_s'].items()) + [('transaction', hand['transaction_s']), ('**total**', hand['total_s'])]
    for i in range(max(len(left), len(right))):
        a = left[i] if i < len(left) else ('', '')
        b = right[i] if i < len(right) else ('', '')
        L.append('| %s | %s | %s | %s |' % (a[0], a[1], b[0], b[1]))
    L += ['', 'Online / hand-written: **%.2f** (totals, both with ANALYZE); prepare..swap / (transaction + row-count '
          'check): %.2f.  WAL written: online %d MB, hand-written %d MB.  Backfill: %s rows in %d chunks, '
          '%s rows/s, foreign-key checks: %s.' % (
              s['ratio_online_to_handwritten'], s['ratio_prepare_to_swap_vs_transaction_and_check'],
              online['wal_mb'], hand['wal_mb'], format(online['backfill']['rows'], ','), online['backfill']['chunks'],
              format(online['backfill']['rows_per_s'], ','), online['backfill']['fk_checks']),
          '', 'All runs, total s (other load): online %s; hand-written %s.' % (
              ', '.join('%s (%s)' % (r['total_s'], share(r['other_load'])) for r in out['online']),
              ', '.join('%s (%s)' % (r['total_s'], share(r['other_load'])) for r in out['handwritten'])), '']

    L += ['## 2. Writes during each conversion', '',
          '| run | committed | failed | longest stall ms | p50 ms | p99 ms | other load |',
          '|---|---:|---:|---:|---:|---:|---:|']
    for label, runs in (('online', out['online']), ('online, %s rows' % format(out['small_rows'], ','),
                                                     out['online_small']), ('hand-written', out['handwritten'])):
        for r in runs:
            w = r['writer'] or {}
            L.append('| %s | %s | %s | %s | %s | %s | %s |' % (
                label, w.get('committed'), w.get('failed'), w.get('longest_stall_ms'), w.get('p50_ms'),
                w.get('p99_ms'), share(r['other_load'])))
    L.append('')

    L += ['## 3. Exclusive-lock windows', '', '| table rows | swap lock ms | swap attempts | sync-trigger install ms |',
          '|---:|---:|---:|---:|']
    for rows, runs in ((out['rows'], out['online']), (out['small_rows'], out['online_small'])):
        for r in runs:
            L.append('| %s | %s | %s | %s |' % (format(rows, ','), r['swap_lock_ms'], r['swap_attempts'],
                                                r['sync_lock_ms']))
    L.append('')

    L += ['## 4. Backfill throughput (no writer, median of %d)' % out['repeat'], '',
          '| table rows | workers | copy s | rows/s | vs 1 worker | runs, rows/s (other load) |',
          '|---:|---:|---:|---:|---:|---|']
    scaling = out['backfill_scaling']
    groups = sorted(set((r['table_rows'], r['workers']) for r in scaling))
    rate = dict((g, statistics.median(r['rows_per_s'] for r in scaling if (r['table_rows'], r['workers']) == g))
                for g in groups)
    for rows, workers in groups:
        runs = [r for r in scaling if (r['table_rows'], r['workers']) == (rows, workers)]
        one = rate.get((rows, 1))
        L.append('| %s | %d | %s | %s | %s | %s |' % (
            format(rows, ','), workers, median([r['seconds'] for r in runs]), format(round(rate[(rows, workers)]), ','),
            '%.2fx' % (rate[(rows, workers)] / one) if one else '',
            ', '.join('%s (%s)' % (format(r['rows_per_s'], ','), share(r['other_load'])) for r in runs)))
    L.append('')

    q = out['query']
    L += ['## 5. The decision document\'s query', '', '`%s`, median of %d warm runs.  Rows in range %s of %s: ideal '
          'ratio %.2f.' % (QUERY, len(q['before']['as planned']['runs_ms']),
                           format(q['before']['as planned']['rows_in_range'], ','),
                           format(q['before']['as planned']['rows_total'], ','), q['ideal_ratio']), '',
          '| plans | before ms | after ms | speedup | % of ideal | after VACUUM ms | speedup | % of ideal |',
          '|---|---:|---:|---:|---:|---:|---:|---:|']
    for label in QUERY_PLANS:
        row = [label, q['before'][label]['median_ms']]
        for when in ('after', 'after VACUUM'):
            if label in q[when]:
                sp = q['speedups']['%s, %s' % (label, when)]
                row += [q[when][label]['median_ms'], '%.2f' % sp['speedup'], '%.0f%%' % (100 * sp['of_ideal'])]
            else:
                row += ['', '', '']
        L.append('| %s |' % ' | '.join(str(x) for x in row))
    L += ['', 'After: right after the conversion (the verification measurement of section 6 runs next).  After '
          'VACUUM: the steady state, once autovacuum is idle (waited %ss) and VACUUM has run (%ss), so index-only '
          'scans need no heap fetches.  Sequential scans: enable_indexscan, enable_indexonlyscan and '
          'enable_bitmapscan off, the plans the decision document describes.  Serial: '
          'max_parallel_workers_per_gather = 0.' % (out['autovacuum_wait_s'], out['vacuum_after_s']), '']
    for when in ('before', 'after', 'after VACUUM'):
        for label in PLANS_SHOWN:
            if label in q[when]:
                L += ['%s, %s:' % (when.capitalize(), label), '', '```'] + q[when][label]['plan'] + ['```', '']

    v = out['verification']
    L += ['## 6. Verification', '', '| compare_rows (count + hash per month, both tables, one snapshot) | one '
          'sequential scan of both tables | ratio |', '|---:|---:|---:|',
          '| %s s | %s s | **%.2f** |' % (v['compare_rows_s'], v['baseline_scan_s'], v['ratio']), '',
          'Baseline: `SELECT sum(length(t::text)) FROM ONLY event_impressions_old t`, then the same on the '
          'partitioned table, one after the other on one connection, no parallel workers: one pass over '
          'every row that renders it as text, the least any row-content comparison must do.  compare_rows '
          'runs its two scans on two connections.  Median of %d, after the conversion (warm cache).' % v['runs'], '']

    L += ['## Goals', '', '| goal | reached |', '|---|---|']
    L += ['| %s | %s |' % (goal, 'yes' if ok else '**no**') for goal, ok in out['goals'].items()]
    return '\n'.join(L) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=2000000, help='rows per fact table (default 2,000,000)')
    parser.add_argument('--small-rows', type=int, help='the smaller size for the lock and scaling (default rows/10)')
    parser.add_argument('--version', default='15', help='PostgreSQL major version (15 or 18; default 15)')
    parser.add_argument('--workers', default='1,2,4', help='backfill workers to compare (default 1,2,4)')
    parser.add_argument('--rate', type=float, default=50.0, help='writer inserts/s during conversions (default 50)')
    parser.add_argument('--repeat', type=int, default=1, help='conversions of each kind (median reported)')
    parser.add_argument('--query-runs', type=int, default=7)
    parser.add_argument('--verify-runs', type=int, default=3)
    parser.add_argument('--seed', type=int, default=42)
    parser.add_argument('--set', action='append', default=[], metavar='NAME=VALUE', help='postgresql.conf setting')
    parser.add_argument('--timeout', type=int, default=4 * 3600, help='bound on the whole run, seconds')
    args = parser.parse_args(argv)
    args.small_rows = args.small_rows or max(1000, args.rows // 10)
    args.workers = [int(w) for w in args.workers.split(',')]

    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    stamp = started.strftime('%Y%m%dT%H%M%SZ')
    settings = dict(s.split('=', 1) for s in args.set)
    with bench_cluster('bench-' + stamp, args.version, args.timeout, settings) as (cluster, postmaster_pid):
        with opened(cluster.url()) as conn:
            cur = conn.cursor()
            shown = {}
            for name in SHOWN:
                cur.execute('SELECT current_setting(%s, true)', (name,))
                value = cur.fetchone()[0]
                if value is not None:
                    shown[name] = value
        bench = Bench(cluster, args, started, postmaster_pid)
        out = {'started': started.isoformat(), 'command': ' '.join(['bench/run.py'] + (argv or sys.argv[1:])),
               'git': git_state(), 'machine': machine(), 'settings': shown, 'rate': args.rate,
               'repeat': args.repeat}
        out.update(run(bench, args))
        summarize(out)
    write_results('%s-%d' % (stamp, args.rows), out, markdown(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
