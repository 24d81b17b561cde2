"""The playbooks end to end: ansible-playbook against a throwaway PostgreSQL holding the sample database.

Each test runs `ansible-playbook` from the repository root (as pipelines do) with DATABASE_URL pointing at a
database of its own, and checks what happened in the database, in the output and in the report files.
Reports, markers and backups go to the test's temporary directory.

The playbook runs take a while, so they run on the newest server version of the suite only
(PGPART_TEST_VERSIONS; the modules' own tests cover every version).
"""
import datetime as dt
import json
import os
import re
import shutil
import subprocess
import uuid
from pathlib import Path

import psycopg2
import pytest

from conftest import VERSIONS
from helpers import build_sample, catalog_fingerprint

ROOT = Path(__file__).resolve().parent.parent
HOST = 'analytics-local'
TABLES = ('event_impressions', 'ticket_analytics')
ORDERS_FKS = ('order_items_order_id_fkey', 'refunds_order_id_fkey', 'tickets_order_id_fkey',
              'inventory_operations_order_id_fkey')
PLAYBOOK_TIMEOUT = 600
NEWEST = max(int(v) for v in VERSIONS)

pytestmark = pytest.mark.timeout(1800)


def ansible_playbook():
    local = ROOT / '.venv' / 'bin' / 'ansible-playbook'
    return str(local) if local.exists() else shutil.which('ansible-playbook')


class Run:
    def __init__(self, proc):
        self.rc = proc.returncode
        self.out = proc.stdout

    def recap(self, host=HOST):
        match = re.search(r'^%s\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)' % re.escape(host),
                          self.out, re.M)
        assert match, 'no PLAY RECAP for %s:\n%s' % (host, self.out[-3000:])
        return dict(zip(('ok', 'changed', 'unreachable', 'failed'), map(int, match.groups())))

    def __repr__(self):  # shown by pytest when an assertion about a run fails
        return 'Run(rc=%s, output tail=\n%s)' % (self.rc, self.out[-6000:])


class Target:
    """A database and the directories of one test, and a way to run a playbook against them."""

    def __init__(self, db, work):
        self.db = db
        self.work = Path(work)
        self.reports = self.work / 'reports'
        self.markers = self.work / 'markers'
        self.backups = self.work / 'backups'

    def play(self, playbook, *args, limit='local', env=None, check=False, dirs=True):
        cmd = [ansible_playbook(), playbook]
        if limit:
            cmd += ['-l', limit]
        if dirs:
            cmd += ['-e', 'pgpart_report_dir=%s' % self.reports, '-e', 'pgpart_marker_dir=%s' % self.markers,
                    '-e', 'backup_dir=%s' % self.backups]
        cmd += list(args)
        if check:
            cmd.append('--check')
        environment = dict(os.environ, DATABASE_URL=self.db.url, ANSIBLE_NOCOLOR='1', ANSIBLE_FORCE_COLOR='0',
                           ANSIBLE_ASYNC_DIR=str(self.work / 'async'), PYTHONUNBUFFERED='1', **(env or {}))
        environment.pop('ANSIBLE_CONFIG', None)
        proc = subprocess.run(cmd, cwd=str(ROOT), env=environment, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=PLAYBOOK_TIMEOUT)
        return Run(proc)

    def report(self, name='deploy'):
        return json.loads((self.reports / ('%s.json' % name)).read_text())


def relkind(db, table):
    return db.scalar("SELECT relkind FROM pg_class WHERE oid = to_regclass(%s)", ('public.' + table,))


def phase(db, table):
    if not db.scalar("SELECT to_regclass('pgpart.conversions') IS NOT NULL"):
        return None
    return db.scalar("SELECT phase FROM pgpart.conversions WHERE table_schema = 'public' AND table_name = %s", (table,))


def partitions(db, table):
    return db.scalar("SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass(%s)", ('public.' + table,))


def exists(db, name):
    return db.scalar("SELECT to_regclass(%s) IS NOT NULL", ('public.' + name,))


def state(db):
    """Everything a refused or check-mode run must leave as it was."""
    counts = [db.scalar('SELECT count(*) FROM public.%s' % t) for t in TABLES + ('orders',)]  # constants, not input
    return catalog_fingerprint(db), counts


def new_database(server):
    name = 't_' + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(server.url('postgres'))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute('CREATE DATABASE "%s"' % name)
    admin.close()
    from conftest import Database
    return Database(server, name)


def drop_database(server, db):
    admin = psycopg2.connect(server.url('postgres'))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % db.name)
    admin.close()


@pytest.fixture
def target(db, tmp_path):
    if db.major != NEWEST:
        pytest.skip('playbook runs use PostgreSQL %d only' % NEWEST)
    build_sample(db, rows=3000)
    return Target(db, tmp_path)


# == the lifecycle of one database, in order: deploy, re-run, maintain, rollback, deploy, cleanup ==
@pytest.fixture(scope='module')
def lifecycle(server, tmp_path_factory):
    if server.major != NEWEST:
        pytest.skip('playbook runs use PostgreSQL %d only' % NEWEST)
    db = new_database(server)
    build_sample(db, rows=3000)
    life = Target(db, tmp_path_factory.mktemp('lifecycle'))
    # Small chunks with a pause, so the copy lasts a few seconds and progress is polled several times.
    life.first = life.play('deploy.yml', '-e', 'pgpart_batch_rows=300', '-e', 'pgpart_batch_pause_ms=150',
                           '-e', 'pgpart_workers=1', '-e', 'pgpart_convert_progress_wait_seconds=2')
    life.runs = {}
    yield life
    drop_database(server, db)


class TestLifecycle:
    def test_deploy_converts_both_tables(self, lifecycle):
        db, run = lifecycle.db, lifecycle.first
        assert run.rc == 0, run
        assert run.recap()['failed'] == 0 and run.recap()['changed'] > 0
        for table in TABLES:
            assert relkind(db, table) == 'p', table
            assert partitions(db, table) > 12, table
            assert phase(db, table) == 'converted', table
            assert db.scalar('SELECT count(*) FROM public.%s' % table) == 3000
            assert exists(db, table + '_old')  # kept, exactly current, until cleanup
        # the order of the checklist, visible in the output
        steps = ['Preflight | Assess', 'Pre-deployment | Backup database | Dump and verify each table',
                 '"stage before:"', 'Deployment | Run the partitioning | Start converting',
                 'Deployment | Verify row counts match | Verify each converted table',
                 '"stage after:"', 'ms -> ', 'Post-deployment | Record completion']
        positions = [run.out.index(step) for step in steps]
        assert positions == sorted(positions)

    def test_progress_is_printed_while_converting(self, lifecycle):
        lines = [line for line in lifecycle.first.out.splitlines() if 'pgpart progress' in line]
        copying = [line for line in lines if 'copying' in line]
        assert copying, lifecycle.first
        assert any(re.search(r'\d+% \(\d+/\d+ chunks\), \d+ of ~\d+ rows', line) for line in copying)
        assert any('rows/s' in line and 'ETA' in line for line in copying)
        assert any('event_impressions: done' in line for line in lines)

    def test_report_files_say_what_happened(self, lifecycle):
        report = lifecycle.report()
        assert report['status'] == 'completed' and report['complete'] is True and report['environment'] == 'local'
        by_table = dict((t['table'], t) for t in report['tables'])
        assert sorted(by_table) == ['public.' + t for t in TABLES]
        for table in by_table.values():
            assert table['action'] == 'converted' and table['phase'] == 'converted'
            assert table['rows'] == 3000 and table['partitions'] > 12
            assert table['verification']['ok'] is True and table['verification']['rows_old'] == 3000
            assert table['backup']['bytes'] > 0 and table['backup']['verified_now'] is True
            assert Path(table['backup']['manifest_path']).is_file()
            assert str(lifecycle.backups) in table['backup']['manifest_path']
            assert table['swapped_at'] and table['cleanup_allowed_at'] > table['swapped_at']
        queries = dict((q['name'], q) for q in report['queries'])
        document = queries['event_impressions 6-month count (decision document)']
        assert "SELECT COUNT(*) FROM event_impressions WHERE created_at > now() - interval '6 months'" in \
            ' '.join(document['sql'].split())
        assert document['before_ms'] > 0 and document['after_ms'] > 0 and document['speedup'] > 0
        assert document['prunes_before'] is False and document['prunes_after'] is True
        assert document['result_before'] == document['result_after']
        assert 'ticket revenue by type, last 6 months' in queries  # the environment's own critical query
        assert report['cleanup_command'] == 'ansible-playbook cleanup.yml -l local'
        markdown = (lifecycle.reports / 'deploy.md').read_text()
        for text in ('**COMPLETED**', 'public.event_impressions', 'public.ticket_analytics', 'verified',
                     'Cleanup allowed from', '`ansible-playbook cleanup.yml -l local`', 'Speedup',
                     'rollback.yml -l local'):
            assert text in markdown, text
        out = lifecycle.first.out
        assert 'is allowed from' in out and 'ansible-playbook cleanup.yml -l local' in out
        marker = json.loads((lifecycle.markers / 'local-complete.json').read_text())
        assert marker['environment'] == 'local' and marker['verification']['ok'] is True
        assert marker['tables'] == ['public.' + t for t in TABLES] and marker['completed_at']

    def test_the_password_is_never_printed_or_recorded(self, lifecycle):
        password = psycopg2.extensions.parse_dsn(lifecycle.db.url)['password']
        assert password not in lifecycle.first.out
        for path in list(lifecycle.reports.iterdir()) + list(lifecycle.markers.iterdir()):
            assert password not in path.read_text(), path

    def test_a_second_deploy_changes_nothing(self, lifecycle):
        marker = (lifecycle.markers / 'local-complete.json').read_text()
        run = lifecycle.play('deploy.yml')
        assert run.rc == 0, run
        assert run.recap()['changed'] == 0, run
        report = lifecycle.report()
        assert all(t['action'] == 'skipped' and 'already converted' in t['summary'] for t in report['tables'])
        assert all(t['backup']['skipped'] for t in report['tables'])
        assert (lifecycle.markers / 'local-complete.json').read_text() == marker

    def test_check_mode_on_the_converted_database_changes_nothing(self, lifecycle):
        before = state(lifecycle.db)
        run = lifecycle.play('deploy.yml', check=True)
        assert run.rc == 0, run
        assert run.recap()['changed'] == 0, run
        assert state(lifecycle.db) == before

    def test_maintain_creates_partitions_then_is_idempotent(self, lifecycle):
        db = lifecycle.db
        counts = [partitions(db, t) for t in TABLES]
        run = lifecycle.play('maintain.yml', '-e', 'partition_premake=5', check=True)
        assert run.rc == 0 and 'would create' in run.out, run
        assert [partitions(db, t) for t in TABLES] == counts
        run = lifecycle.play('maintain.yml', '-e', 'partition_premake=5')
        assert run.rc == 0, run
        assert run.recap()['changed'] == 1 and 'created event_impressions_p' in run.out
        assert [partitions(db, t) for t in TABLES] == [c + 2 for c in counts]
        run = lifecycle.play('maintain.yml', '-e', 'partition_premake=5')
        assert run.rc == 0 and run.recap()['changed'] == 0, run
        assert 'no partition to create' in run.out

    def test_maintain_alert_is_a_failed_run(self, lifecycle):
        run = lifecycle.play('maintain.yml', '-e', 'pgpart_maintain_alert_days=400')
        assert run.rc != 0, run
        assert 'alert' in run.out.lower() or 'coverage' in run.out.lower()

    def test_rollback_restores_plain_tables(self, lifecycle):
        db = lifecycle.db
        before = state(db)
        run = lifecycle.play('rollback.yml', check=True)
        assert run.rc == 0 and 'would: original table restored' in run.out, run
        assert state(db) == before
        run = lifecycle.play('rollback.yml')
        assert run.rc == 0, run
        for table in TABLES:
            assert relkind(db, table) == 'r', table
            assert phase(db, table) == 'rolled_back'
            assert not exists(db, table + '_old') and not exists(db, table + '_new')
            assert db.scalar('SELECT count(*) FROM public.%s' % table) == 3000
        assert 'original table restored (swapped back), 3000 rows' in run.out
        assert 'stage rollback:' in run.out  # the critical queries ran on the restored tables
        run = lifecycle.play('rollback.yml')
        assert run.rc == 0 and run.recap()['changed'] == 0, run

    def test_deploy_again_after_the_rollback(self, lifecycle):
        run = lifecycle.play('deploy.yml')
        assert run.rc == 0, run
        for table in TABLES:
            assert relkind(lifecycle.db, table) == 'p' and phase(lifecycle.db, table) == 'converted'

    def test_cleanup_inside_the_validation_window_refuses(self, lifecycle):
        run = lifecycle.play('cleanup.yml')
        lifecycle.runs['cleanup_refused'] = run
        assert run.rc != 0, run
        assert 'CLEANUP REFUSED' in run.out
        for table in TABLES:
            assert exists(lifecycle.db, table + '_old') and phase(lifecycle.db, table) == 'converted'

    def test_the_cleanup_refusal_says_when_cleanup_is_allowed(self, lifecycle):
        run = lifecycle.runs.get('cleanup_refused')
        if run is None:
            pytest.skip('the refusal did not run')
        assert 'cleanup is allowed from' in run.out

    def test_cleanup_with_zero_validation_hours_drops_the_originals(self, lifecycle):
        db = lifecycle.db
        before = state(db)
        run = lifecycle.play('cleanup.yml', '-e', 'cleanup_min_age_hours=0', check=True)
        assert run.rc == 0 and 'would drop event_impressions_old' in run.out, run
        assert state(db) == before
        run = lifecycle.play('cleanup.yml', '-e', 'cleanup_min_age_hours=0')
        assert run.rc == 0, run
        for table in TABLES:
            assert not exists(db, table + '_old') and phase(db, table) == 'cleaned'
            assert relkind(db, table) == 'p'
        assert re.search(r'dropped event_impressions_old, [\d.]+ [KM]B reclaimed', run.out), run
        assert 'total reclaimed' in run.out
        run = lifecycle.play('cleanup.yml', '-e', 'cleanup_min_age_hours=0')
        assert run.rc == 0 and run.recap()['changed'] == 0, run

    def test_rollback_after_cleanup_refuses_and_points_at_the_backup(self, lifecycle):
        run = lifecycle.play('rollback.yml')
        assert run.rc != 0 and 'cannot roll back' in run.out and 'manifest.json' in run.out, run
        assert all(relkind(lifecycle.db, t) == 'p' for t in TABLES)


# == refusals on a fresh database: nothing may change ===============================================
def test_a_run_without_limit_or_inventory_refuses_and_changes_nothing(target):
    before = state(target.db)
    for playbook in ('deploy.yml', 'cleanup.yml', 'rollback.yml', 'maintain.yml', 'assess.yml'):
        run = target.play(playbook, limit=None)
        assert run.rc != 0, run
        assert 'Refusing to run on every inventory at once' in run.out, run
    run = target.play('deploy.yml', limit='all')
    assert run.rc != 0 and 'at once' in run.out and 'one environment at a time' in run.out, run
    assert state(target.db) == before
    assert not target.backups.exists() and not target.reports.exists()


def test_check_mode_shows_the_plan_and_changes_nothing(target):
    before = state(target.db)
    run = target.play('deploy.yml', check=True)
    assert run.rc == 0, run
    assert state(target.db) == before
    assert phase(target.db, 'event_impressions') is None and not target.backups.exists()
    assert 'would convert (prepare, sync, backfill' in run.out
    plan = target.report('deploy-plan')
    assert plan['status'] == 'check' and all(t['action'] == 'would_convert' for t in plan['tables'])
    assert all(t['sql_preview'] and t['partitions'] > 12 for t in plan['tables'])
    assert not (target.reports / 'deploy.json').exists()


def test_orders_in_partition_tables_refuses_before_any_change_naming_the_foreign_keys(target):
    before = state(target.db)
    tables = json.dumps({'partition_tables': [{'name': 'event_impressions'}, {'name': 'orders'},
                                              {'name': 'ticket_analytics'}]})
    run = target.play('deploy.yml', '-e', tables)
    assert run.rc != 0, run
    assert 'public.orders cannot be converted' in run.out
    for fk in ORDERS_FKS:
        assert fk in run.out, fk
    assert state(target.db) == before
    assert not target.backups.exists()  # refused before the backup: the WHOLE run
    assert 'Backup database | Dump' not in run.out
    report = target.report()
    assert report['status'] == 'failed' and 'Refuse the whole run' in report['failure']['task']

    run = target.play('assess.yml', '-e', tables)
    assert run.rc != 0 and all(fk in run.out for fk in ORDERS_FKS), run
    assessment = target.report('assess')
    verdicts = dict((t['table'], t['eligible']) for t in assessment['tables'])
    assert verdicts == {'public.event_impressions': True, 'public.orders': False, 'public.ticket_analytics': True}
    assert 'REFUSED' in (target.reports / 'assess.md').read_text()
    run = target.play('assess.yml')
    assert run.rc == 0, run
    assert state(target.db) == before


def test_deploy_outside_the_low_traffic_window_refuses(target):
    before = state(target.db)
    now = dt.datetime.now(dt.timezone.utc)
    closed = {'start': (now + dt.timedelta(hours=2)).strftime('%H:%M'),
              'end': (now + dt.timedelta(hours=3)).strftime('%H:%M'), 'timezone': 'UTC'}
    run = target.play('deploy.yml', '-e', json.dumps({'low_traffic_window': closed}))
    assert run.rc != 0, run
    assert 'outside the low-traffic window' in run.out and 'pgpart_ignore_window=true' in run.out
    assert state(target.db) == before and not target.backups.exists()
    run = target.play('deploy.yml', '-e', json.dumps({'low_traffic_window': closed}), check=True)
    assert run.rc == 0 and 'a real run would be refused now' in run.out, run


def test_a_failure_during_the_deployment_stops_with_what_to_do(target):
    bad = json.dumps({'critical_queries': [{'name': 'typo', 'sql': 'SELECT count(*) FROM event_impresions'}]})
    run = target.play('deploy.yml', '-e', bad)
    assert run.rc != 0, run
    for text in ('DEPLOY FAILED on analytics-local', 'Deployment | Test critical queries', 'event_impresions',
                 'The database is consistent', 'ansible-playbook deploy.yml -l local', 'rollback.yml -l local'):
        assert text in run.out, text
    assert all(relkind(target.db, t) == 'r' for t in TABLES)
    report = target.report()
    assert report['status'] == 'failed' and 'event_impresions' in report['failure']['message']
    assert '**FAILED**' in (target.reports / 'deploy.md').read_text()


def test_production_needs_the_staging_marker_and_a_confirmation(target):
    db = target.db
    before = state(db)
    production = ['-i', 'inventories/production', '-e', 'database_url=%s' % db.url, '-e', 'pgpart_ignore_window=true']

    run = target.play('deploy.yml', *production, limit=None)
    assert run.rc != 0, run
    assert 'production is deployed only after staging completed the same tables' in run.out
    assert 'there is no marker at %s/staging-complete.json' % target.markers in run.out

    marker = target.work / 'artifact' / 'staging-complete.json'
    marker.parent.mkdir()
    marker.write_text(json.dumps({'environment': 'staging', 'tables': ['public.event_impressions'],
                                  'completed_at': '2026-01-01T00:00:00Z', 'verification': {'ok': True}}))
    with_marker = production + ['-e', 'pgpart_staging_marker=%s' % marker]
    run = target.play('deploy.yml', *with_marker, limit=None)
    assert run.rc != 0 and 'does not list public.ticket_analytics' in run.out, run

    marker.write_text(json.dumps({'environment': 'staging', 'tables': ['public.event_impressions',
                                                                      'public.ticket_analytics'],
                                  'completed_at': '2026-01-01T00:00:00Z', 'verification': {'ok': True}}))
    run = target.play('deploy.yml', *with_marker, limit=None)  # no TTY, no pgpart_confirm
    assert run.rc != 0, run
    assert 'production needs an explicit confirmation' in run.out and 'pgpart_confirm=production' in run.out
    run = target.play('deploy.yml', *(with_marker + ['-e', 'pgpart_confirm=staging']), limit=None)
    assert run.rc != 0 and '(got "staging")' in run.out, run
    assert state(db) == before and not target.backups.exists()

    run = target.play('rollback.yml', *production, limit=None)
    assert run.rc != 0 and 'production needs an explicit confirmation to roll the tables back' in run.out, run

    run = target.play('deploy.yml', *(with_marker + ['-e', 'pgpart_confirm=production']), limit=None)
    assert run.rc == 0, run
    assert all(relkind(db, t) == 'p' for t in TABLES)
    assert json.loads((target.markers / 'production-complete.json').read_text())['environment'] == 'production'


def test_query_patterns_from_pg_stat_statements_are_reported_and_can_refuse(target):
    db = target.db
    db.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements')
    db.query("INSERT INTO event_impressions (id, event_id, created_at) SELECT 1, min(id), now() FROM events "
             "ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source")
    db.query('SELECT count(*) FROM ticket_analytics WHERE event_id = 1')
    run = target.play('assess.yml')
    assert run.rc == 0, run
    assert '[pk_upsert] public.event_impressions: upsert ON CONFLICT (id)' in run.out
    assert '[no_pruning] public.ticket_analytics' in run.out
    kinds = set(w['kind'] for t in target.report('assess')['tables'] for w in t['workload'])
    assert {'pk_upsert', 'no_pruning'} <= kinds
    before = state(db)
    run = target.play('deploy.yml', '-e', json.dumps({'pgpart_preflight_workload_refuse': ['pk_upsert']}))
    assert run.rc != 0, run
    assert 'would break after the conversion (pk_upsert are refused)' in run.out
    assert state(db) == before and not target.backups.exists()
