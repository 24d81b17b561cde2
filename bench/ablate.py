#!/usr/bin/env python3
"""Where the backfill's time goes: the copy phase with one cost at a time put back or taken out.

    .venv/bin/python bench/ablate.py [--rows 2000000] [--version 15] [--workers 2] [--repeat 3]

Each variant runs prepare + sync, then the timed backfill (no writer), on a fresh clone of the
same sample database (see bench/run.py).  Measurement only: some variants drop what the engine
must keep (FOR SHARE).  Writes bench/results/<UTC timestamp>-<rows>-ablation.{md,json}.
"""
import argparse
import datetime as dt
import statistics
import sys
from contextlib import contextmanager
from pathlib import Path

from psycopg2 import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as harness  # noqa: E402  (bench/run.py: cluster, sample database, clones, meters)
from ansible.module_utils import pgpart_backfill, pgpart_convert, pgpart_db, pgpart_ddl  # noqa: E402

VARIANTS = [
    ('engine (this tree: secondary indexes built after the copy)', ()),
    ('+ foreign keys checked per row', ('fk',)),
    ('+ ON CONFLICT on every chunk', ('conflict',)),
    ('+ secondary indexes maintained during the copy', ('indexes',)),
    ('+ all three: the engine before bench/', ('fk', 'conflict', 'indexes')),
    ('- FOR SHARE (unsafe)', ('noshare',)),
]


@contextmanager
def patched(changes):
    """The engine with the variant's changes, for the duration of one backfill."""
    Backfill, saved = pgpart_backfill.Backfill, {}

    def swap(owner, name, value):
        saved[(owner, name)] = getattr(owner, name)
        setattr(owner, name, value)
    if 'fk' in changes:
        swap(Backfill, '_may_skip_fk_checks', lambda self: False)
    if 'conflict' in changes:
        init = Backfill.__init__

        def always_on_conflict(self, *args, **kwargs):
            init(self, *args, **kwargs)
            self.on_conflict = True
        swap(Backfill, '__init__', always_on_conflict)
    if 'indexes' in changes:
        build = pgpart_ddl.build
        swap(pgpart_ddl, 'build', lambda session, info, plan, secondary_indexes=True: build(session, info, plan))
    if 'noshare' in changes:
        build = pgpart_backfill.chunk_statement

        def without_for_share(*args, **kwargs):
            return sql.Composed([sql.SQL(part.string.replace(' FOR SHARE', '')) if isinstance(part, sql.SQL) else part
                                 for part in build(*args, **kwargs).seq])
        swap(pgpart_backfill, 'chunk_statement', without_for_share)
    try:
        yield
    finally:
        for (owner, name), value in saved.items():
            setattr(owner, name, value)


def measure(bench, args, changes):
    url = bench.clone(args.rows, 'ablate')
    try:
        session = pgpart_db.connect({'database_url': url})
        try:
            with patched(changes):  # prepare too: it decides which indexes exist during the copy
                pgpart_convert.Conversion(session, 'public', harness.TABLE, stop_before='backfilled').run()
                with harness.opened(url) as conn:
                    conn.cursor().execute('CHECKPOINT')
                wal, meter = harness.WalMeter(url), harness.CpuMeter(bench.postmaster_pid)
                result = pgpart_convert.Conversion(session, 'public', harness.TABLE, workers=args.workers,
                                                   stop_before='verified').run()
        finally:
            session.close()
        step = next(s for s in result['steps'] if s['phase'] == 'backfilled')
        return dict(harness.copy_rate(step), wal_mb=wal.mb(), other_load=meter.report())
    finally:
        bench.drop('ablate')


def markdown(out):
    L = ['# Backfill ablation: %s rows, PostgreSQL %s, %d workers' % (
        format(out['rows'], ','), out['settings']['server_version'], out['workers']), '',
        'Run %s UTC with `%s` (commit %s).  Machine: %s, %d cores, %.1f GiB RAM.  Settings as in bench/run.py '
        '(PostgreSQL defaults, fsync on).  Median of %d runs per variant; no writer.' % (
            out['started'], out['command'], out['git']['commit'], out['machine']['cpu'], out['machine']['cores'],
            out['machine']['ram_gib'], out['repeat']), '',
        '| variant | copy s | rows/s | secondary index builds s | copy + builds s | WAL MB | runs, copy s (other load) |',
        '|---|---:|---:|---:|---:|---:|---|']
    for label, runs in out['variants'].items():
        copy = statistics.median(r['seconds'] for r in runs)
        builds = statistics.median(r['index_s'] or 0 for r in runs)
        both = statistics.median(r['seconds'] + (r['index_s'] or 0) for r in runs)
        L.append('| %s | %.2f | %s | %.2f | %.2f | %d | %s |' % (
            label, copy, format(round(out['rows'] / copy), ','), builds, both,
            statistics.median(r['wal_mb'] for r in runs),
            ', '.join('%s (%s)' % (r['seconds'], harness.share(r['other_load'])) for r in runs)))
    return '\n'.join(L) + '\n'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--rows', type=int, default=2000000)
    parser.add_argument('--version', default='15')
    parser.add_argument('--workers', type=int, default=2)
    parser.add_argument('--repeat', type=int, default=3)
    parser.add_argument('--seed', type=int, default=42)
    parser.add_argument('--timeout', type=int, default=4 * 3600)
    args = parser.parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    stamp = started.strftime('%Y%m%dT%H%M%SZ')
    with harness.bench_cluster('ablate-' + stamp, args.version, args.timeout) as (cluster, pid):
        bench = harness.Bench(cluster, args, started, pid)
        with harness.opened(cluster.url()) as conn:
            version = harness.scalar(conn, 'SHOW server_version')
        out = {'started': started.isoformat(), 'command': ' '.join(['bench/ablate.py'] + (argv or sys.argv[1:])),
               'git': harness.git_state(), 'machine': harness.machine(), 'settings': {'server_version': version},
               'rows': args.rows, 'workers': args.workers, 'repeat': args.repeat, 'variants': {}}
        bench.build(args.rows)
        for attempt in range(args.repeat):  # variants interleaved, so a burst of other load hits all alike
            for label, changes in VARIANTS:
                print('ablate: %s (%d/%d)' % (label, attempt + 1, args.repeat), flush=True)
                out['variants'].setdefault(label, []).append(measure(bench, args, changes))
    harness.write_results('%s-%d-ablation' % (stamp, args.rows), out, markdown(out))
    return 0


if __name__ == '__main__':
    sys.exit(main())
