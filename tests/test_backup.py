"""pgpart_backup: pg_dump in the snapshot of an exact count, verified by reading the archive whole.

Real PostgreSQL 15 and 18 (conftest's `server`), real pg_dump / pg_restore.
"""
import hashlib
import importlib.util
import json
import os
import re
import stat
import subprocess
import threading
import time
from pathlib import Path

import psycopg2
import pytest
from psycopg2 import sql

import sample_db
from ansible.module_utils import pgpart_backup as backup
from ansible.module_utils import pgpart_db
from ansible.module_utils import pgpart_journal as journal
from ansible.module_utils.pgpart_db import PgpartError

ROOT = Path(__file__).resolve().parent.parent
PG15_BIN = Path('/usr/lib/postgresql/15/bin')
STAMP = re.compile(r'^\d{8}T\d{6}Z(-\d+)?$')


# -- helpers ---------------------------------------------------------------------------------------
def make_table(db, table='items', rows=1000, schema='public', payload=40):
    """A plain table with a bigserial id and `rows` rows of text that compresses poorly."""
    conn = db.connect()
    with conn.cursor() as cur:
        if schema != 'public':
            cur.execute(sql.SQL('CREATE SCHEMA IF NOT EXISTS {}').format(sql.Identifier(schema)))
        name = sql.Identifier(schema, table)
        cur.execute(sql.SQL('CREATE TABLE {} (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now(), '
                            'note text)').format(name))
        cur.execute(sql.SQL("INSERT INTO {} (created_at, note) SELECT now() - g * interval '1 minute', "
                            "md5(g::text) || repeat(md5((g * 7)::text), %s) "
                            "FROM generate_series(1, %s) g").format(name),
                    (payload // 32 + 1, rows))
        cur.execute(sql.SQL('ANALYZE {}').format(name))
    conn.close()


def count(db, schema, table):
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(sql.SQL('SELECT count(*) FROM {}').format(sql.Identifier(schema, table)))
            return cur.fetchone()[0]
    finally:
        conn.close()


def password_of(db):
    return psycopg2.extensions.parse_dsn(db.url)['password']


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def files_under(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob('*')) if Path(path).exists() else []


def load_module():
    spec = importlib.util.spec_from_file_location('library_pgpart_backup', str(ROOT / 'library' / 'pgpart_backup.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_module(args, capsys):
    """Call the module's main() as Ansible would; (exit code, result dict)."""
    from ansible.module_utils.testing import patch_module_args
    module = load_module()
    capsys.readouterr()
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exit_info:
            module.main()
    out = capsys.readouterr().out
    return exit_info.value.code, json.loads(out.strip().splitlines()[-1])


def slow_pg_dump(tmp_path, real, delay):
    """A pg_dump wrapper that records its arguments and whether PGPASSWORD is set, then waits `delay` s."""
    log = tmp_path / 'wrapper'
    log.mkdir()
    script = tmp_path / 'pg_dump'
    script.write_text(
        '#!/bin/sh\n'
        'case "$1" in --version) exec "%(real)s" "$@";; esac\n'
        'printf "%%s\\n" "$@" > "%(log)s/args"\n'
        'if [ -n "$PGPASSWORD" ]; then echo set > "%(log)s/pgpassword"; fi\n'
        'touch "%(log)s/started"\n'
        'sleep %(delay)s\n'
        'touch "%(log)s/dumping"\n'
        'exec "%(real)s" "$@"\n' % dict(real=real, log=log, delay=delay))
    script.chmod(0o755)
    return str(script), log


# -- tools -----------------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_find_tool_picks_a_new_enough_client_and_explains_when_none_is(server):
    path, major = backup.find_tool('pg_dump', server.major)
    assert major >= server.major and os.access(path, os.X_OK)
    assert backup.tool_version(path)[0] == major
    # Nothing is new enough for a (fictitious) PostgreSQL 99: the message lists what was found.
    too_new = r"pg_dump must be at least the server's major version \(PostgreSQL 99\)"
    with pytest.raises(PgpartError, match=too_new) as err:
        backup.find_tool('pg_dump', 99)
    assert re.search(r'pg_dump 1[5-9]\.\d+ \(/', str(err.value)), str(err.value)
    assert err.value.details['found']
    with pytest.raises(PgpartError, match='not an executable PostgreSQL pg_restore'):
        backup.find_tool('pg_restore', 15, explicit='/nonexistent/pg_restore')


@pytest.mark.timeout(120)
def test_pg15_pg_dump_is_refused_against_pg18(db, session_for, tmp_path):
    if db.major < 18:
        pytest.skip('the PostgreSQL 15 client is only too old for the PostgreSQL 18 server')
    old = str(PG15_BIN / 'pg_dump')
    assert backup.tool_version(old)[0] == 15
    make_table(db, rows=10)
    session = session_for(db)
    message = (r"pg_dump .*/15/bin/pg_dump is version 15\.\d+\. "
               r"pg_dump must be at least the server's major version \(PostgreSQL 18\)")
    with pytest.raises(PgpartError, match=message):
        backup.find_tool('pg_dump', session.major, explicit=old)
    with pytest.raises(PgpartError, match=message):
        backup.take_backup(session, 'public', 'items', str(tmp_path / 'bk'), pg_dump=old)
    with pytest.raises(PgpartError, match=r"pg_restore .* is version 15\..*at least the server's major version"):
        backup.find_tool('pg_restore', session.major, explicit=str(PG15_BIN / 'pg_restore'))
    assert files_under(tmp_path / 'bk') == []
    # Without an explicit path the newest client is chosen, never the old one.
    assert backup.find_tool('pg_dump', session.major)[1] >= 18


# -- taking a backup -------------------------------------------------------------------------------
@pytest.mark.timeout(300)
def test_backup_of_event_impressions_manifest_permissions_rows_and_journal(db, session_for, tmp_path):
    sample_db.build(db.url, rows=3000)
    session = session_for(db)
    backup_dir = tmp_path / 'backups'
    before = time.time()
    taken = backup.take_backup(session, 'public', 'event_impressions', str(backup_dir))
    exact = count(db, 'public', 'event_impressions')

    # Layout: <backup_dir>/<database>/<schema>.<table>/<stamp>/<table>.dump + manifest.json
    manifest_path = Path(taken['manifest_path'])
    dump_path = Path(taken['dump_path'])
    assert manifest_path.parent == dump_path.parent
    assert dump_path.name == 'event_impressions.dump' and manifest_path.name == 'manifest.json'
    assert manifest_path.parent.parent == backup_dir / db.name / 'public.event_impressions'
    assert STAMP.match(manifest_path.parent.name), manifest_path.parent.name
    assert sorted(os.listdir(manifest_path.parent)) == ['event_impressions.dump', 'manifest.json']
    for directory in (backup_dir, backup_dir / db.name, manifest_path.parent.parent, manifest_path.parent):
        assert mode(directory) == 0o700, directory
    for path in (manifest_path, dump_path):
        assert mode(path) == 0o600, path

    manifest = json.loads(manifest_path.read_text())
    data = dump_path.read_bytes()
    assert manifest['format'] == 'pgpart-backup' and manifest['format_version'] == 1
    assert (manifest['database'], manifest['schema'], manifest['table']) == (db.name, 'public', 'event_impressions')
    assert manifest['dump_file'] == 'event_impressions.dump'
    assert manifest['sha256'] == hashlib.sha256(data).hexdigest()
    assert manifest['bytes'] == len(data) > 0
    assert manifest['rows'] == exact > 2900
    assert manifest['server_version'] == db.scalar('SHOW server_version')
    assert manifest['server_version_num'] == int(db.scalar('SHOW server_version_num'))
    dump_major = int(re.search(r'\(PostgreSQL\) (\d+)', manifest['pg_dump_version']).group(1))
    assert dump_major >= db.major
    assert manifest['pg_dump_path'] == taken['pg_dump_path'] and os.access(manifest['pg_dump_path'], os.X_OK)
    assert re.match(r'^[0-9A-F]+-[0-9A-F]+-\d+$', manifest['snapshot']), manifest['snapshot']
    assert re.match(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$', manifest['taken_at'])
    taken_at = time.mktime(time.strptime(manifest['taken_at'][:19], '%Y-%m-%dT%H:%M:%S')) - time.timezone
    assert before - 5 <= taken_at <= time.time() + 5
    assert password_of(db) not in manifest_path.read_text()

    # The archive was read whole: its rows are the manifest's rows, which are count(*).
    assert taken['verified'] is True and taken['rows_in_dump'] == exact
    checked = backup.verify_backup(str(manifest_path), server_major=db.major)
    assert checked['ok'] and checked['problems'] == [] and checked['rows_in_dump'] == exact
    assert checked['manifest'] == manifest

    # The dump is a usable backup: it holds the table's structure, policies and grants.
    listing = subprocess.run([checked['pg_restore_path'], '--list', str(dump_path)], capture_output=True, text=True,
                             check=True).stdout
    for entry in ('TABLE public event_impressions', 'TABLE DATA public event_impressions',
                  'POLICY public event_impressions', 'ACL public TABLE event_impressions', 'INDEX public'):
        assert entry in listing, entry

    # Recorded in the journal, with the snapshot's time.
    latest = journal.latest_backup(session, 'public', 'event_impressions')
    assert latest['manifest_path'] == str(manifest_path)
    assert (latest['dump_sha256'], latest['dump_bytes'], latest['row_count']) == (
        manifest['sha256'], manifest['bytes'], exact)
    assert db.scalar("SELECT taken_at = %s::timestamptz FROM pgpart.backups", (manifest['taken_at'],)) is True
    assert db.scalar("SELECT detail->>'manifest' FROM pgpart.events WHERE action = 'backup'") == str(manifest_path)
    # Journal rows are bookkeeping, not reported in `queries`.
    assert not any('INTO pgpart.backups' in q or 'UPDATE pgpart.backups' in q for q in session.queries)


@pytest.mark.timeout(300)
def test_rows_in_dump_equal_the_snapshot_count_while_a_writer_inserts(db, session_for, tmp_path):
    make_table(db, rows=20000)
    session = session_for(db)
    real = backup.find_tool('pg_dump', db.major)[0]
    wrapper, log = slow_pg_dump(tmp_path, real, delay=2)
    stop = threading.Event()
    inserted = {'total': 0, 'after_snapshot': 0}
    errors, blockers = [], []
    watcher = session_for(db)

    def writer():
        conn = db.connect()
        try:
            with conn.cursor() as cur:
                while not stop.is_set():
                    cur.execute("INSERT INTO public.items (note) VALUES ('concurrent')")
                    inserted['total'] += 1
                    # pg_dump starts after the snapshot was exported: rows committed from here on are not in it.
                    if (log / 'started').exists():
                        inserted['after_snapshot'] += 1
                        if not blockers and time.time() - (log / 'started').stat().st_mtime > 1.3:
                            # What a swap giving up would report: the session holding the snapshot and its lock.
                            blockers.extend(pgpart_db.lock_blockers(watcher, [('public', 'items')]))
                    time.sleep(0.002)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            conn.close()
    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.3)
        taken = backup.take_backup(session, 'public', 'items', str(tmp_path / 'bk'), pg_dump=wrapper)
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    assert (log / 'dumping').exists()
    # The writer really overlapped the dump: hundreds of rows committed while pg_dump was running.
    assert inserted['after_snapshot'] > 50, inserted
    final = count(db, 'public', 'items')
    assert final == 20000 + inserted['total']
    assert final >= taken['rows'] + inserted['after_snapshot']
    # ...and the dump holds exactly the snapshot's rows: not one of the concurrent inserts after it.
    assert taken['rows_in_dump'] == taken['rows']
    checked = backup.verify_backup(taken['manifest_path'])
    assert checked['ok'] and checked['rows_in_dump'] == taken['rows']

    # The real pg_dump command line carried no password; the password came through PGPASSWORD.
    args = (log / 'args').read_text()
    assert password_of(db) not in args
    assert '--snapshot=%s' % taken['snapshot'] in args.splitlines()
    assert '--table="public"."items"' in args.splitlines()
    assert any(a.startswith('--dbname=') and 'password' not in a for a in args.splitlines())
    assert (log / 'pgpassword').read_text().strip() == 'set'
    # pg_dump connects as application 'pg_dump' (what the swap looks for); the snapshot holder names itself.
    assert any(a.startswith('--dbname=') and 'application_name=pg_dump' in a for a in args.splitlines())
    assert [b['application_name'] for b in blockers] == ['pgpart_backup'], blockers
    assert blockers[0]['state'] == 'idle in transaction'
    assert 'PGPASSWORD' not in os.environ or os.environ['PGPASSWORD'] != password_of(db)


@pytest.mark.timeout(120)
def test_the_dump_command_and_conninfo_hold_no_password(db, session_for):
    session = session_for(db)
    conninfo, env, password = backup.dump_connection(session)
    argv = backup.dump_command('/usr/bin/pg_dump', conninfo, '00000003-00000002-1', 'public', 'items', '/x/items.dump')
    assert password == password_of(db) and env['PGPASSWORD'] == password
    assert password not in ' '.join(argv) and 'password' not in conninfo
    parsed = psycopg2.extensions.parse_dsn(conninfo)
    assert parsed['dbname'] == db.name and parsed['application_name'] == backup.APPLICATION_NAME


@pytest.mark.timeout(120)
def test_mixed_case_and_quoted_names(db, session_for, tmp_path):
    schema, table = 'Odd.Schema', 'Mixed "Case" table'
    make_table(db, table=table, rows=123, schema=schema)
    # Decoys a careless -t pattern would match instead (case folded, quotes dropped, '.' as a wildcard).
    make_table(db, table='mixed "case" table', rows=7, schema=schema)
    make_table(db, table='Mixed Case table', rows=5, schema=schema)
    make_table(db, table='Mixed "Case" table', rows=3, schema='OddXSchema')
    session = session_for(db)
    taken = backup.take_backup(session, schema, table, str(tmp_path / 'bk'))
    assert taken['rows'] == 123 and taken['rows_in_dump'] == 123
    assert Path(taken['dump_path']).parent.parent.name == 'Odd.Schema.Mixed "Case" table'
    assert Path(taken['dump_path']).name == 'Mixed "Case" table.dump'
    listing = subprocess.run([taken['pg_restore_path'], '--list', taken['dump_path']], capture_output=True, text=True,
                             check=True).stdout
    data_entries = [line for line in listing.splitlines() if 'TABLE DATA' in line]
    assert len(data_entries) == 1 and 'Mixed "Case" table' in data_entries[0], data_entries
    assert backup.dump_pattern(schema, table) == '"Odd.Schema"."Mixed ""Case"" table"'
    assert backup.copy_target(b'COPY "Odd.Schema"."Mixed ""Case"" table" (id, note) FROM stdin;\n') == (schema, table)
    assert backup.copy_target(b'COPY public.items (id) FROM stdin;\n') == ('public', 'items')

    # A name with a slash stays one path component.
    make_table(db, table='a/b', rows=4)
    slashed = backup.take_backup(session, 'public', 'a/b', str(tmp_path / 'bk'))
    assert Path(slashed['dump_path']).name == 'a%2Fb.dump' and slashed['rows_in_dump'] == 4


@pytest.mark.timeout(120)
def test_partitioned_and_missing_tables_are_refused(db, session_for, tmp_path):
    db.query("CREATE TABLE public.parted (id bigint, created_at timestamptz NOT NULL) PARTITION BY RANGE (created_at)")
    db.query("CREATE TABLE public.parted_p1 PARTITION OF public.parted "
             "FOR VALUES FROM ('2024-01-01') TO ('2025-01-01')")
    db.query("INSERT INTO public.parted VALUES (1, '2024-06-01')")
    session = session_for(db)
    with pytest.raises(PgpartError, match=r'public\.parted is a partitioned table: its rows live in its partitions'):
        backup.take_backup(session, 'public', 'parted', str(tmp_path / 'bk'))
    with pytest.raises(PgpartError, match='does not exist'):
        backup.take_backup(session, 'public', 'nope', str(tmp_path / 'bk'))
    assert files_under(tmp_path / 'bk') == []
    assert db.scalar("SELECT to_regclass('pgpart.backups')") is None
    # A partition (a plain table) can be backed up, e.g. once detached.
    taken = backup.take_backup(session, 'public', 'parted_p1', str(tmp_path / 'bk'))
    assert taken['rows_in_dump'] == 1


# -- verification ----------------------------------------------------------------------------------
@pytest.fixture
def small_backup(db, session_for, tmp_path):
    make_table(db, rows=30000, payload=100)
    session = session_for(db)
    return backup.take_backup(session, 'public', 'items', str(tmp_path / 'bk'))


def rewrite_manifest(path, **changes):
    manifest = json.loads(Path(path).read_text())
    manifest.update(changes)
    Path(path).write_text(json.dumps(manifest))


@pytest.mark.timeout(180)
def test_a_truncated_dump_fails_verification_though_pg_restore_list_succeeds(small_backup, db):
    dump = Path(small_backup['dump_path'])
    data = dump.read_bytes()
    dump.write_bytes(data[:len(data) // 2])

    # The trap: the table of contents is intact, so --list succeeds and shows the data entry.
    listing = subprocess.run([small_backup['pg_restore_path'], '--list', str(dump)], capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    assert 'TABLE DATA public items' in listing.stdout

    checked = backup.verify_backup(small_backup['manifest_path'], server_major=db.major)
    assert not checked['ok']
    text = '; '.join(checked['problems'])
    assert 'the dump is %d bytes, the manifest says %d' % (len(data) // 2, len(data)) in text
    assert "sha256" in text
    assert 'pg_restore could not read the whole archive' in text, text
    assert checked['rows_in_dump'] is None or checked['rows_in_dump'] < small_backup['rows']

    # Even a manifest written for the truncated file (pg_dump cut short, then checksummed) does not verify:
    # only reading the archive whole finds it.
    rewrite_manifest(small_backup['manifest_path'], bytes=len(data) // 2,
                     sha256=hashlib.sha256(data[:len(data) // 2]).hexdigest())
    checked = backup.verify_backup(small_backup['manifest_path'], server_major=db.major)
    assert not checked['ok']
    assert not any('sha256' in p or 'bytes' in p for p in checked['problems']), checked['problems']
    assert any('pg_restore could not read the whole archive' in p for p in checked['problems']), checked['problems']


@pytest.mark.timeout(180)
def test_a_flipped_byte_fails_the_sha256_check(small_backup, db):
    dump = Path(small_backup['dump_path'])
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0x01
    dump.write_bytes(bytes(data))
    checked = backup.verify_backup(small_backup['manifest_path'], server_major=db.major)
    assert not checked['ok']
    expected = "the dump's sha256 is %s, the manifest says %s" % (hashlib.sha256(bytes(data)).hexdigest(),
                                                                   small_backup['sha256'])
    assert any(p.startswith(expected) for p in checked['problems']), checked['problems']
    assert not any('bytes' in p for p in checked['problems'])


@pytest.mark.timeout(180)
def test_rows_that_differ_from_the_manifest_or_a_missing_dump_fail(small_backup, db):
    rewrite_manifest(small_backup['manifest_path'], rows=small_backup['rows'] + 1)
    checked = backup.verify_backup(small_backup['manifest_path'], server_major=db.major)
    assert checked['problems'] == ['the archive holds %d rows of public.items, the manifest says %d' % (
        small_backup['rows'], small_backup['rows'] + 1)]
    os.unlink(small_backup['dump_path'])
    checked = backup.verify_backup(small_backup['manifest_path'])
    assert not checked['ok'] and checked['problems'] == ['the dump %s is missing' % small_backup['dump_path']]
    assert not backup.verify_backup(str(Path(small_backup['manifest_path']).parent / 'nope.json'))['ok']


@pytest.mark.timeout(120)
def test_a_dump_that_does_not_verify_is_removed_and_not_recorded(db, session_for, tmp_path, monkeypatch):
    make_table(db, rows=50)
    session = session_for(db)
    real_read = backup.read_archive

    def short_read(*args, **kwargs):
        result = real_read(*args, **kwargs)
        result['rows'] -= 1
        return result
    monkeypatch.setattr(backup, 'read_archive', short_read)
    with pytest.raises(PgpartError, match=r'just taken does not verify, so it was removed: the archive holds 49 rows'):
        backup.take_backup(session, 'public', 'items', str(tmp_path / 'bk'))
    assert files_under(tmp_path / 'bk') == []
    assert journal.latest_backup(session, 'public', 'items') is None


# -- the Ansible module ----------------------------------------------------------------------------
@pytest.mark.timeout(180)
def test_module_takes_a_backup_and_returns_no_secret(db, tmp_path, capsys):
    make_table(db, rows=500)
    code, result = run_module(db.params(table='items', backup_dir=str(tmp_path / 'bk')), capsys)
    assert code == 0, result
    assert result['changed'] is True and result['verified'] is True and result['skipped'] is False
    assert result['rows'] == result['rows_in_dump'] == 500
    assert Path(result['dump_path']).is_file() and Path(result['manifest_path']).is_file()
    assert result['sha256'] == hashlib.sha256(Path(result['dump_path']).read_bytes()).hexdigest()
    assert result['pg_dump_version'].startswith('pg_dump (PostgreSQL) ')
    assert result['manifest']['rows'] == 500
    assert password_of(db) not in json.dumps(result)
    assert password_of(db) not in Path(result['manifest_path']).read_text()

    # verify-only mode: nothing written, the backup verifies...
    code, checked = run_module(db.params(table='items', backup_dir=str(tmp_path / 'bk'),
                                         manifest=result['manifest_path']), capsys)
    assert code == 0, checked
    assert checked['changed'] is False and checked['verified'] is True and checked['rows_in_dump'] == 500
    # ...and fails the task once damaged.
    dump = Path(result['dump_path'])
    dump.write_bytes(dump.read_bytes()[:-100])
    code, failed = run_module(db.params(table='items', backup_dir=str(tmp_path / 'bk'),
                                        manifest=result['manifest_path']), capsys)
    assert code == 1 and failed['failed'] is True
    assert 'does not verify' in failed['msg'] and failed['verified'] is False
    assert any('truncated' in p for p in failed['problems'])


@pytest.mark.timeout(120)
def test_module_refuses_a_partitioned_table(db, tmp_path, capsys):
    db.query("CREATE TABLE public.parted (id bigint, created_at timestamptz NOT NULL) PARTITION BY RANGE (created_at)")
    code, result = run_module(db.params(table='parted', backup_dir=str(tmp_path / 'bk'), skip_if_converted=False),
                              capsys)
    assert code == 1 and result['failed'] is True
    assert 'public.parted is a partitioned table' in result['msg']
    assert password_of(db) not in json.dumps(result)
    assert not (tmp_path / 'bk').exists()


@pytest.mark.timeout(120)
def test_module_refuses_an_old_pg_dump(db, tmp_path, capsys):
    if db.major < 18:
        pytest.skip('only the PostgreSQL 18 server is too new for the PostgreSQL 15 client')
    make_table(db, rows=10)
    code, result = run_module(db.params(table='items', backup_dir=str(tmp_path / 'bk'),
                                        pg_dump_path=str(PG15_BIN / 'pg_dump')), capsys)
    assert code == 1
    assert "pg_dump must be at least the server's major version (PostgreSQL 18)" in result['msg']
    assert not (tmp_path / 'bk').exists()


@pytest.mark.timeout(120)
def test_module_check_mode_writes_nothing(db, tmp_path, capsys):
    make_table(db, rows=700)
    backup_dir = tmp_path / 'bk'
    code, result = run_module(db.params(table='items', backup_dir=str(backup_dir), _ansible_check_mode=True), capsys)
    assert code == 0, result
    assert result['changed'] is True and result['verified'] is False and result['skipped'] is False
    assert result['rows_estimate'] == 700
    assert result['directory'].startswith(str(backup_dir / db.name / 'public.items') + '/')
    assert STAMP.match(Path(result['directory']).name)
    assert result['pg_dump_version'].startswith('pg_dump (PostgreSQL) ') and os.access(result['pg_dump_path'], os.X_OK)
    assert any(a.startswith('--table=') for a in result['command'])
    assert password_of(db) not in json.dumps(result)
    assert result['queries'] == []
    assert not backup_dir.exists()
    assert db.scalar("SELECT to_regnamespace('pgpart')") is None


@pytest.mark.timeout(300)
def test_module_skips_a_converted_table_and_returns_the_recorded_backup(db, session_for, tmp_path, capsys):
    make_table(db, rows=300)
    backup_dir = tmp_path / 'bk'
    code, first = run_module(db.params(table='items', backup_dir=str(backup_dir)), capsys)
    assert code == 0 and first['changed'] is True
    files = files_under(backup_dir)

    # The journal says the conversion finished.
    session = session_for(db)
    with session.transaction():
        journal.start(session, 'public', 'items', {'partitions': []}, {})
        journal.set_phase(session, 'public', 'items', 'converted', swapped_at=True, finished_at=True)

    code, second = run_module(db.params(table='items', backup_dir=str(backup_dir)), capsys)
    assert code == 0, second
    assert second['changed'] is False and second['skipped'] is True and second['phase'] == 'converted'
    assert 'already converted' in second['reason']
    assert second['manifest_path'] == first['manifest_path'] and second['sha256'] == first['sha256']
    assert second['rows'] == 300 and second['dump_path'] == first['dump_path']
    assert second['queries'] == []
    assert files_under(backup_dir) == files
    assert db.scalar('SELECT count(*) FROM pgpart.backups') == 1

    # skip_if_converted=false on the plain table takes a new backup (the journal is only advice here).
    code, third = run_module(db.params(table='items', backup_dir=str(backup_dir), skip_if_converted=False), capsys)
    assert code == 0 and third['changed'] is True and third['manifest_path'] != first['manifest_path']


@pytest.mark.timeout(600)
def test_skip_after_a_real_conversion(db, session_for, tmp_path, capsys):
    sample_db.build(db.url, rows=2000)
    backup_dir = tmp_path / 'bk'
    code, first = run_module(db.params(table='event_impressions', backup_dir=str(backup_dir)), capsys)
    assert code == 0 and first['changed'] is True
    from ansible.module_utils import pgpart_convert
    pgpart_convert.Conversion(session_for(db), 'public', 'event_impressions').run()
    code, second = run_module(db.params(table='event_impressions', backup_dir=str(backup_dir)), capsys)
    assert code == 0 and second['changed'] is False and second['skipped'] is True
    assert second['manifest_path'] == first['manifest_path']
    # The old table's rows are the dump's rows.
    assert db.scalar('SELECT count(*) FROM public.event_impressions_old') == first['rows_in_dump']


@pytest.mark.timeout(120)
def test_a_running_pgpart_step_or_an_exclusive_lock_stops_the_backup_cleanly(db, session_for, tmp_path):
    make_table(db, rows=20)
    # A safety net: a statement that waits for the lock without its own timeout fails instead of hanging the
    # suite (pytest-timeout's signal cannot interrupt a blocking libpq call).
    db.query(sql.SQL("ALTER DATABASE {} SET lock_timeout = '20s'").format(sql.Identifier(db.name)))
    session = session_for(db)
    other = session_for(db)
    # Another pgpart run (a conversion) holds the table's advisory lock.
    assert other.try_table_lock('public', 'items')
    with pytest.raises(PgpartError, match=r'another pgpart run is working on public\.items'):
        backup.take_backup(session, 'public', 'items', str(tmp_path / 'bk'))
    other.release_table_lock('public', 'items')
    # A swap (ACCESS EXCLUSIVE) in progress: the backup gives up after lock_timeout, leaving nothing behind.
    locker = db.connect(autocommit=False)
    try:
        with locker.cursor() as cur:
            cur.execute('LOCK TABLE public.items IN ACCESS EXCLUSIVE MODE')
        with pytest.raises(PgpartError, match=r'could not lock public\.items for reading within 200 ms'):
            backup.take_backup(session, 'public', 'items', str(tmp_path / 'bk'), lock_timeout_ms=200)
    finally:
        locker.rollback()
        locker.close()
    assert files_under(tmp_path / 'bk') == []
    assert session.scalar('SELECT pg_current_xact_id_if_assigned() IS NULL AND now() = statement_timestamp()') is True
    # The session is usable again (the failed transaction was rolled back) and the backup then succeeds.
    assert backup.take_backup(session, 'public', 'items', str(tmp_path / 'bk'))['rows_in_dump'] == 20


@pytest.mark.timeout(120)
def test_a_pg_dump_or_pg_restore_past_the_timeout_is_stopped(db, session_for, tmp_path):
    make_table(db, rows=20)
    session = session_for(db)
    real = backup.find_tool('pg_dump', db.major)[0]
    wrapper, log = slow_pg_dump(tmp_path, real, delay=4)
    started = time.time()
    with pytest.raises(PgpartError, match=r'pg_dump did not finish within 1 seconds \(timeout_seconds\)'):
        backup.take_backup(session, 'public', 'items', str(tmp_path / 'bk'), pg_dump=wrapper, timeout_seconds=1)
    assert time.time() - started < 30
    assert files_under(tmp_path / 'bk') == [] and journal.latest_backup(session, 'public', 'items') is None
    # The transaction holding the snapshot was rolled back: no lock is left on the table.
    assert db.scalar("SELECT count(*) FROM pg_locks WHERE relation = 'public.items'::regclass") == 0

    taken = backup.take_backup(session, 'public', 'items', str(tmp_path / 'bk'))
    slow_restore = tmp_path / 'pg_restore'
    slow_restore.write_text('#!/bin/sh\ncase "$1" in --version) exec "%s" "$@";; esac\nsleep 20\nexec "%s" "$@"\n' % (
        taken['pg_restore_path'], taken['pg_restore_path']))
    slow_restore.chmod(0o755)
    started = time.time()
    checked = backup.verify_backup(taken['manifest_path'], pg_restore=str(slow_restore), timeout_seconds=1)
    assert time.time() - started < 10  # the wrapper and its sleeping child were both stopped
    assert not checked['ok']
    assert any('did not read the archive within 1 seconds' in p for p in checked['problems']), checked['problems']


@pytest.mark.timeout(120)
def test_an_empty_table_and_a_call_inside_a_transaction(db, session_for, tmp_path):
    make_table(db, rows=0)
    session = session_for(db)
    taken = backup.take_backup(session, 'public', 'items', str(tmp_path / 'bk'))
    assert taken['rows'] == 0 and taken['rows_in_dump'] == 0  # an empty COPY block, not a missing one
    with session.transaction():
        with pytest.raises(PgpartError, match='outside a transaction'):
            backup.take_backup(session, 'public', 'items', str(tmp_path / 'bk2'))
    assert not (tmp_path / 'bk2').exists()
