"""Monthly maintenance of a converted table (module_utils/pgpart_maintain.py, library/pgpart_maintain.py).

Premake through CREATE TABLE + CHECK + ATTACH, ANALYZE of the parent, the coverage alert, and
retention (detach, dump, verify, drop) with its crash recovery, on PostgreSQL 15 and 18.
"""
import json
import os
import stat
import subprocess

import psycopg2
import pytest

import sample_db
from ansible.module_utils import pgpart_backup, pgpart_convert, pgpart_ddl, pgpart_journal, pgpart_maintain
from ansible.module_utils import pgpart_plan as planning
from ansible.module_utils import pgpart_sync, pgpart_verify
from ansible.module_utils.pgpart_db import PgpartError, ident, sql

TABLE = 'event_impressions'
API_ROLES = ('anon', 'authenticated')


# -- helpers ----------------------------------------------------------------------------------------

def converted_db(db, session_for, premake=0):
    """The sample database with event_impressions converted (premake 0: maintenance has work to do)."""
    sample_db.build(db.url, rows=2000)
    session = session_for(db)
    result = pgpart_convert.Conversion(session, 'public', TABLE, premake=premake).run()
    assert result['phase'] == 'converted', result
    # Supabase-style default privileges: every new table would be readable by the API roles
    # unless maintenance locks the new partitions down.
    db.query('ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated')
    return session


def maintain(session, **options):
    options.setdefault('lock_timeout_ms', 500)
    options.setdefault('lock_attempts', 5)
    options.setdefault('max_backoff_ms', 1000)
    return pgpart_maintain.Maintenance(session, 'public', TABLE, **options).run()


def plan_of(db):
    return db.scalar("SELECT plan FROM pgpart.conversions WHERE table_name = %s", (TABLE,))


def leaves(db):
    """{partition name: bound} of the live tree (detach-pending partitions included)."""
    return dict(db.query(
        "SELECT c.relname::text, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = %s::regclass", ('public.%s' % TABLE,)))


def current_month(db):
    return db.scalar("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM')")


def table_exists(db, name):
    return db.scalar("SELECT to_regclass(%s) IS NOT NULL", ('public.%s' % name,))


def run_sql(db, composed):
    """Run a psycopg2.sql statement on its own connection; its rows, if any."""
    conn = db.connect()
    try:
        with conn.cursor() as cur:
            cur.execute(composed)
            return cur.fetchall() if cur.description else None
    finally:
        conn.close()


def digest(db, name):
    """(rows, order-independent hash) of a table's rows."""
    return tuple(run_sql(db, sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text "
                                     "FROM ONLY {} t").format(ident('public', name)))[0])


def events(db, action):
    return [r[0] for r in db.query("SELECT detail FROM pgpart.events WHERE table_name = %s AND action = %s "
                                   "ORDER BY id", (TABLE, action))]


def catalog_fingerprint(db):
    return db.query(
        "SELECT c.relname::text, c.relkind::text, c.relacl::text, c.relrowsecurity, "
        "pg_get_expr(c.relpartbound, c.oid), (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname IN ('public', 'pgpart') ORDER BY 1") + db.query(
        "SELECT table_name, phase, plan::text FROM pgpart.conversions ORDER BY 1") + db.query(
        "SELECT count(*) FROM pgpart.events")


def mark_cleaned(session, table=TABLE):
    """What cleanup does after the validation window: reverse trigger gone, <t>_old dropped, phase cleaned."""
    entry = pgpart_journal.read(session, 'public', table)
    with session.transaction():
        pgpart_sync.remove(session, ('public', table), entry['original']['oid'], 'reverse')
        session.run(sql.SQL('DROP TABLE {}').format(ident('public', entry['plan']['old_table'])))
        pgpart_journal.set_phase(session, 'public', table, 'cleaned', finished_at=True)


def month_diff(later, earlier):
    return (int(later[:4]) * 12 + int(later[5:7])) - (int(earlier[:4]) * 12 + int(earlier[5:7]))


def retention_setup(db, session, keep_after=2):
    """Retention months that retire <t>_phistory and the first `keep_after` dense months; their digests."""
    plan = plan_of(db)
    cutoff = planning.month_add(plan['dense_start'], keep_after)
    retired = [p['name'] for p in plan['partitions'] if p['to'] <= cutoff]
    assert retired[0] == TABLE + '_phistory' and len(retired) == keep_after + 1
    digests = dict((name, digest(db, name)) for name in retired)
    assert all(d[0] > 0 for d in digests.values()), digests
    return month_diff(current_month(db), cutoff), retired, digests


def restore_and_digest(db, manifest_path, name):
    """Restore a dump into the database it came from (its table was dropped) and digest the rows."""
    with open(manifest_path) as f:
        manifest = json.load(f)
    restore, _ = pgpart_backup.find_tool('pg_restore', db.major)
    dump = os.path.join(os.path.dirname(manifest_path), manifest['dump_file'])
    done = subprocess.run([restore, '--no-owner', '--dbname=%s' % db.url, dump],
                          capture_output=True, text=True, timeout=120)
    # pg_dump 18 writes `SET transaction_timeout`, which a PostgreSQL 15 server does not know: harmless
    errors = [line for line in done.stderr.splitlines() if 'error:' in line and 'transaction_timeout' not in line
              and 'errors ignored on restore: 1' not in line]
    assert not errors and (done.returncode == 0 or 'transaction_timeout' in done.stderr), done.stderr
    return digest(db, name)


def truncating_pg_dump(tmp_path, major):
    """A pg_dump that answers --version truthfully but leaves a truncated archive behind."""
    real, _ = pgpart_backup.find_tool('pg_dump', major)
    script = tmp_path / 'pg_dump_truncating'
    script.write_text(
        '#!/bin/sh\n'
        'if [ "$1" = "--version" ]; then exec "%s" --version; fi\n'
        '"%s" "$@" || exit $?\n'
        'for arg in "$@"; do case "$arg" in --file=*) f="${arg#--file=}";; esac; done\n'
        'size=$(wc -c < "$f")\n'
        'truncate -s $((size / 2)) "$f"\n' % (real, real))
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return str(script)


# -- premake -----------------------------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_premake_creates_exactly_the_missing_months_locked_down_and_verified(db, session_for):
    session = converted_db(db, session_for, premake=0)
    before = plan_of(db)
    now_month = current_month(db)
    last_before = before['partitions'][-1]['from']
    wanted = planning.months_to_add(last_before, now_month, 3)
    assert wanted, 'premake=0 must leave maintenance something to create'

    result = maintain(session, premake=3)

    names = [planning.partition_name(TABLE, m) for m in wanted]
    assert result['created'] == names and result['changed'] is True
    assert result['coverage_until'] == planning.month_add(now_month, 4)
    assert result['alert'] is None and result['analyzed'] is True
    live = leaves(db)
    for month, name in zip(wanted, names):
        assert live[name] == "FOR VALUES FROM ('%s-01 00:00:00+00') TO ('%s-01 00:00:00+00')" % (
            month, planning.month_add(month, 1))
    # every index of the parent exists on each new partition, all valid
    parent_indexes = db.scalar("SELECT count(*) FROM pg_index WHERE indrelid = 'public.event_impressions'::regclass")
    for name in names:
        assert db.scalar("SELECT count(*) FROM pg_index WHERE indrelid = %s::regclass AND indisvalid",
                         ('public.' + name,)) == parent_indexes
        assert db.scalar("SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", ('public.' + name,))
        grantees = db.scalar("SELECT array_agg(DISTINCT pg_get_userbyid(a.grantee)::text) FROM pg_class c, "
                             "aclexplode(c.relacl) a WHERE c.oid = %s::regclass AND a.grantee <> c.relowner",
                             ('public.' + name,))
        assert not set(grantees or []) & set(API_ROLES), (name, grantees)
        assert db.scalar("SELECT pg_get_userbyid(relowner)::text FROM pg_class WHERE oid = %s::regclass",
                         ('public.' + name,)) == before['partition_template']['owner']
    # the journal plan lists them, so pgpart_verify's exact tree check still passes
    after = plan_of(db)
    assert [p['name'] for p in after['partitions']] == [p['name'] for p in before['partitions']] + names
    assert after['covers_until'] == result['coverage_until']
    assert [e['partition'] for e in events(db, 'premake')] == names
    report = pgpart_verify.verify_converted(session, 'public', TABLE)
    assert report['ok'], [c for c in report['checks'] if not c['ok']]
    assert any(c['check'].startswith('partition tree exactly as planned') and c['ok'] for c in report['checks'])
    # never CREATE TABLE ... PARTITION OF on the live parent (trap #13)
    assert not [q for q in result['queries'] if 'PARTITION OF' in q.upper()]
    assert sum('ATTACH PARTITION' in q for q in result['queries']) == len(names)


@pytest.mark.timeout(240)
def test_second_run_changes_nothing(db, session_for):
    session = converted_db(db, session_for)
    first = maintain(session, premake=3)
    assert first['created']
    before = catalog_fingerprint(db)
    second_session = session_for(db)
    second = maintain(second_session, premake=3)
    assert second['changed'] is False and second['created'] == [] and second['dropped'] == []
    assert second['coverage_until'] == first['coverage_until']
    assert second_session.queries == ['ANALYZE "public"."event_impressions"']
    assert catalog_fingerprint(db) == before  # no relation, plan or journal event changed


@pytest.mark.timeout(240)
def test_rows_for_a_premade_month_land_in_it(db, session_for):
    session = converted_db(db, session_for)
    maintain(session, premake=3)
    target = planning.month_add(current_month(db), 3)
    where = db.query(
        "INSERT INTO public.event_impressions (event_id, source, created_at) "
        "SELECT min(id), 'web', %s::timestamptz FROM public.events RETURNING tableoid::regclass::text",
        ('%s-15 12:00:00+00' % target,))
    assert where == [(planning.partition_name(TABLE, target),)]
    # and a row past the coverage is refused, as the alert promises
    with pytest.raises(psycopg2.Error, match='no partition of relation'):
        db.query("INSERT INTO public.event_impressions (event_id, source, created_at) "
                 "SELECT min(id), 'web', %s::timestamptz FROM public.events",
                 ('%s-02 00:00:00+00' % planning.month_add(target, 1),))


@pytest.mark.timeout(240)
def test_an_open_writer_transaction_does_not_block_maintenance(db, session_for, monkeypatch):
    session = converted_db(db, session_for)
    writer = db.connect(autocommit=False)
    with writer.cursor() as cur:
        cur.execute("INSERT INTO public.event_impressions (event_id, source, created_at) "
                    "SELECT min(id), 'web', now() FROM public.events")
    seen = []
    original = pgpart_ddl.attach_partition

    def watching(s, *args, **kwargs):
        original(s, *args, **kwargs)
        # in the attaching transaction, before COMMIT: every lock it holds on the parent
        seen.append(sorted(r['mode'] for r in s.fetch(
            "SELECT mode FROM pg_locks WHERE pid = pg_backend_pid() AND locktype = 'relation' "
            "AND relation = 'public.event_impressions'::regclass")))
    monkeypatch.setattr(pgpart_ddl, 'attach_partition', watching)
    try:
        # one attempt, 300 ms: any lock conflicting with the writer's ROW EXCLUSIVE would fail the run
        result = maintain(session, premake=3, lock_timeout_ms=300, lock_attempts=1)
        assert result['created'] and result['analyzed']
        assert seen and all('ShareUpdateExclusiveLock' in modes for modes in seen), seen
        assert not [m for modes in seen for m in modes
                    if m not in ('AccessShareLock', 'ShareUpdateExclusiveLock')], seen
        with writer.cursor() as cur:  # the writer carries on and commits without an error
            cur.execute("INSERT INTO public.event_impressions (event_id, source, created_at) "
                        "SELECT min(id), 'web', now() FROM public.events")
        writer.commit()
    finally:
        writer.close()
    assert db.scalar("SELECT count(*) FROM public.event_impressions") == 2002


@pytest.mark.timeout(240)
def test_the_parent_is_analyzed_every_run(db, session_for):
    session = converted_db(db, session_for)
    maintain(session, premake=3)
    assert db.scalar("SELECT reltuples FROM pg_class WHERE oid = 'public.event_impressions'::regclass") == 2000
    db.query("INSERT INTO public.event_impressions (event_id, source, created_at) "
             "SELECT (SELECT min(id) FROM public.events), 'web', now() - make_interval(secs => g) "
             "FROM generate_series(1, 700) g")
    result = maintain(session_for(db), premake=3)
    assert result['analyzed'] is True and result['changed'] is False
    # autovacuum never analyzes a partitioned parent: only this run's ANALYZE can have counted the new rows
    assert db.scalar("SELECT reltuples FROM pg_class WHERE oid = 'public.event_impressions'::regclass") == 2700


# -- alert ---------------------------------------------------------------------------------------------

@pytest.mark.timeout(240)
def test_alert_fires_when_coverage_ends_within_alert_days(db, session_for):
    session = converted_db(db, session_for)
    until = plan_of(db)['covers_until']
    days_left = db.scalar("SELECT extract(epoch FROM %s::timestamptz - now()) / 86400",
                          ('%s-01 00:00:00+00' % until,))
    # premake=0 creates nothing (the coverage already reaches the current month); alert_days beyond it fires
    with pytest.raises(PgpartError, match='coverage of public.event_impressions ends at %s-01' % until) as failure:
        maintain(session, premake=0, alert_days=int(days_left) + 1)
    details = failure.value.details
    assert details['coverage_until'] == until and details['created'] == [] and details['analyzed'] is True
    assert 'premake' in str(failure.value)
    # the same coverage with a smaller window is fine
    assert maintain(session_for(db), premake=0, alert_days=max(int(days_left) - 1, 0))['alert'] is None
    # the run does what it can, and still fails when even that is not enough
    with pytest.raises(PgpartError, match='within alert_days=400') as failure:
        maintain(session_for(db), premake=3, alert_days=400)
    assert failure.value.details['created'] and failure.value.details['coverage_until'] == \
        planning.month_add(current_month(db), 4)
    assert table_exists(db, failure.value.details['created'][-1])


@pytest.mark.timeout(240)
def test_alert_fires_when_partitions_cannot_be_created(db, session_for):
    session = converted_db(db, session_for)
    blocked = plan_of(db)['covers_until']  # the first month maintenance must create
    run_sql(db, sql.SQL('CREATE TABLE {} (x int)').format(ident('public', planning.partition_name(TABLE, blocked))))
    with pytest.raises(PgpartError, match='a relation of that name exists') as failure:
        maintain(session, premake=3, alert_days=14)
    assert failure.value.details['created'] == [] and failure.value.details['analyzed'] is True


@pytest.mark.timeout(240)
def test_refuses_a_table_pgpart_has_not_converted(db, session_for):
    sample_db.build(db.url, rows=500)
    session = session_for(db)
    with pytest.raises(PgpartError, match='pgpart has not converted it'):
        maintain(session)
    with pytest.raises(PgpartError, match='pgpart has not converted it'):
        pgpart_maintain.Maintenance(session, 'public', 'orders').run()
    assert session.queries == []
    with pytest.raises(PgpartError, match='backup_dir is required'):
        maintain(session, retention_months=12)


# -- retention -----------------------------------------------------------------------------------------

@pytest.mark.timeout(300)
def test_retention_detaches_dumps_verifies_and_drops_old_partitions(db, session_for, tmp_path):
    session = converted_db(db, session_for)
    maintain(session, premake=3)
    # before cleanup <t>_old still holds every row: retention waits, and says so
    months, retired, digests = retention_setup(db, session)
    waiting = maintain(session_for(db), retention_months=months, backup_dir=str(tmp_path))
    assert waiting['dropped'] == [] and 'waits until cleanup' in waiting['retention']['skipped']
    assert all(table_exists(db, name) for name in retired)
    mark_cleaned(session)

    result = maintain(session_for(db), premake=3, retention_months=months, backup_dir=str(tmp_path))

    assert result['changed'] is True
    assert result['detached'] == retired
    assert [d['name'] for d in result['dropped']] == retired
    assert result['retention']['cutoff'] == planning.month_add(current_month(db), -months)
    for dropped in result['dropped']:
        name = dropped['name']
        assert not table_exists(db, name)
        assert dropped['rows'] == digests[name][0]
        checked = pgpart_backup.verify_backup(dropped['manifest_path'], server_major=db.major)
        assert checked['ok'] and checked['rows_in_dump'] == digests[name][0], checked
    assert any('DETACH PARTITION' in q and q.endswith('CONCURRENTLY') for q in result['queries'])
    # the rows are in the dump: restored, they are exactly the rows that were dropped
    for dropped in result['dropped']:
        assert restore_and_digest(db, dropped['manifest_path'], dropped['name']) == digests[dropped['name']]
        run_sql(db, sql.SQL('DROP TABLE {}').format(ident('public', dropped['name'])))
    # the journal: plan without them, nothing left retiring, every step an event, backups recorded
    plan = plan_of(db)
    assert not set(retired) & set(p['name'] for p in plan['partitions']) and not plan.get('retiring')
    assert [e['partition'] for e in events(db, 'retention_drop')] == retired
    assert [e['partition'] for e in events(db, 'retention_detach')] == retired
    assert db.scalar("SELECT count(*) FROM pgpart.backups WHERE table_name = ANY (%s)", (retired,)) == len(retired)
    report = pgpart_verify.verify_converted(session_for(db), 'public', TABLE)
    assert report['ok'], [c for c in report['checks'] if not c['ok']]
    # a second run: nothing to do
    again = maintain(session_for(db), premake=3, retention_months=months, backup_dir=str(tmp_path))
    assert again['changed'] is False and again['dropped'] == [] and again['retention']['candidates'] == []


@pytest.mark.timeout(300)
def test_retention_never_drops_a_partition_whose_dump_does_not_verify(db, session_for, tmp_path, monkeypatch):
    session = converted_db(db, session_for)
    mark_cleaned(session)
    months, retired, digests = retention_setup(db, session)
    oldest = retired[0]

    # 1. pg_dump leaves a truncated archive behind: take_backup's check refuses it, nothing is dropped
    with pytest.raises(PgpartError, match='retention kept public.%s .* dropped nothing' % oldest):
        maintain(session_for(db), retention_months=months, backup_dir=str(tmp_path / 'a'),
                 pg_dump=truncating_pg_dump(tmp_path, db.major))
    assert digest(db, oldest) == digests[oldest]
    assert all(table_exists(db, name) for name in retired)
    assert [p['name'] for p in plan_of(db)['retiring']] == [oldest]
    assert events(db, 'retention_drop') == []

    # 2. verification says no (whatever the reason): still nothing dropped
    def never_ok(manifest_path, **kwargs):
        return {'ok': False, 'problems': ['simulated: archive unreadable'], 'rows_in_dump': None}
    monkeypatch.setattr(pgpart_backup, 'verify_backup', never_ok)
    with pytest.raises(PgpartError, match='simulated: archive unreadable'):
        maintain(session_for(db), retention_months=months, backup_dir=str(tmp_path / 'b'))
    assert digest(db, oldest) == digests[oldest] and events(db, 'retention_drop') == []
    monkeypatch.undo()

    real_take = pgpart_backup.take_backup

    # 3. the dump verified when it was taken, then the file was damaged before the drop: the check
    #    right before DROP reads it whole again and refuses
    def take_then_damage(*args, **kwargs):
        manifest = real_take(*args, **kwargs)
        with open(manifest['dump_path'], 'r+b') as f:
            f.truncate(manifest['bytes'] // 2)
        return manifest
    monkeypatch.setattr(pgpart_backup, 'take_backup', take_then_damage)
    with pytest.raises(PgpartError, match='its dump .* does not verify: .*truncated'):
        maintain(session_for(db), retention_months=months, backup_dir=str(tmp_path / 'b2'))
    assert digest(db, oldest) == digests[oldest] and events(db, 'retention_drop') == []
    monkeypatch.undo()

    # 4. the dump verifies but a row reached the detached table after it: the counts differ, no drop

    def take_then_write(session, schema, table, *args, **kwargs):
        manifest = real_take(session, schema, table, *args, **kwargs)
        run_sql(db, sql.SQL("INSERT INTO {t} (id, event_id, source, metadata, created_at) "
                            "SELECT id + 1000000000, event_id, source, metadata, created_at FROM {t} LIMIT 1").format(
            t=ident('public', table)))
        return manifest
    monkeypatch.setattr(pgpart_backup, 'take_backup', take_then_write)
    with pytest.raises(PgpartError, match='it holds %d rows, its dump .* holds %d' % (
            digests[oldest][0] + 1, digests[oldest][0])):
        maintain(session_for(db), retention_months=months, backup_dir=str(tmp_path / 'c'))
    assert digest(db, oldest)[0] == digests[oldest][0] + 1 and events(db, 'retention_drop') == []
    monkeypatch.undo()

    # 5. with a working backup the next run finishes the job (the kept partition first)
    result = maintain(session_for(db), retention_months=months, backup_dir=str(tmp_path / 'd'))
    assert [d['name'] for d in result['dropped']] == retired
    assert result['dropped'][0]['rows'] == digests[oldest][0] + 1
    assert not any(table_exists(db, name) for name in retired)


@pytest.mark.timeout(300)
def test_rerun_after_a_crash_between_detach_and_drop_finishes_without_losing_rows(db, session_for, tmp_path,
                                                                                  monkeypatch):
    session = converted_db(db, session_for)
    mark_cleaned(session)
    months, retired, digests = retention_setup(db, session)
    first, second, third = retired
    history_to = plan_of(db)['partitions'][0]['to']
    options = dict(retention_months=months, backup_dir=str(tmp_path))

    def killed(*args, **kwargs):
        raise KeyboardInterrupt('killed')  # the process dies: not an error the run could handle

    # 1. an open transaction read the table: DETACH CONCURRENTLY times out and leaves `first` detach
    #    pending, FINALIZE times out too; the run fails, nothing is dropped
    reader = db.connect(autocommit=False)
    try:
        with reader.cursor() as cur:
            cur.execute('SELECT count(*) FROM public.event_impressions')
        with pytest.raises(PgpartError, match='could not detach public.%s .* detach pending' % first):
            maintain(session_for(db), lock_timeout_ms=300, lock_attempts=2, **options)
    finally:
        reader.rollback()
        reader.close()
    assert db.scalar("SELECT inhdetachpending FROM pg_inherits WHERE inhrelid = %s::regclass",
                     ('public.' + first,)) is True
    assert digest(db, first) == digests[first]

    # 2. killed after the detach (FINALIZE this time), before the dump
    monkeypatch.setattr(pgpart_maintain.Maintenance, 'dump', killed)
    with pytest.raises(KeyboardInterrupt):
        maintain(session_for(db), **options)
    monkeypatch.undo()
    assert first not in leaves(db) and digest(db, first) == digests[first]
    assert plan_of(db)['retiring'] == [{'name': first, 'from': None, 'to': history_to}]

    # 3. killed after the dump, before the drop: the dump is recorded
    monkeypatch.setattr(pgpart_maintain.Maintenance, 'drop', killed)
    with pytest.raises(KeyboardInterrupt):
        maintain(session_for(db), **options)
    monkeypatch.undo()
    recorded = plan_of(db)['retiring'][0]
    assert recorded['name'] == first and recorded['rows'] == digests[first][0]
    assert digest(db, first) == digests[first]

    # 4. killed between DETACH and its journal record: `second` detached, the plan still lists it
    run_sql(db, sql.SQL('ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY').format(
        ident('public', TABLE), ident('public', second)))
    assert second in [p['name'] for p in plan_of(db)['partitions']]

    # 5. killed during DETACH CONCURRENTLY: `third` left detach pending
    reader = db.connect(autocommit=False)
    detacher = db.connect()
    try:
        with reader.cursor() as cur:
            cur.execute('SELECT count(*) FROM public.event_impressions')
        with detacher.cursor() as cur:
            cur.execute("SET lock_timeout = '300ms'")
            with pytest.raises(psycopg2.errors.LockNotAvailable):
                cur.execute(sql.SQL('ALTER TABLE {} DETACH PARTITION {} CONCURRENTLY').format(
                    ident('public', TABLE), ident('public', third)))
    finally:
        reader.rollback()
        reader.close()
        detacher.close()
    assert leaves(db).get(third) is not None

    # the re-run finishes all three: reuses the recorded dump of `first`, records, dumps and drops
    # `second`, finalizes `third`; every row is in a verified dump
    result = maintain(session_for(db), **options)
    assert [d['name'] for d in result['dropped']] == retired
    assert result['detached'] == [third]
    assert result['dropped'][0]['manifest_path'] == recorded['manifest_path']
    assert any(q.endswith('FINALIZE') for q in result['queries']), result['queries']
    for dropped in result['dropped']:
        assert dropped['rows'] == digests[dropped['name']][0]
        assert not table_exists(db, dropped['name'])
        assert restore_and_digest(db, dropped['manifest_path'], dropped['name']) == digests[dropped['name']]
    plan = plan_of(db)
    assert not plan.get('retiring') and not set(retired) & set(p['name'] for p in plan['partitions'])
    assert [e['partition'] for e in events(db, 'retention_drop')] == retired


# -- check mode and the Ansible interface --------------------------------------------------------------

@pytest.mark.timeout(240)
def test_check_mode_reports_everything_and_changes_nothing(db, session_for, tmp_path):
    session = converted_db(db, session_for)
    mark_cleaned(session)
    months, retired, _ = retention_setup(db, session)
    before = catalog_fingerprint(db)
    preview_session = session_for(db, check_mode=True)
    result = maintain(preview_session, premake=3, retention_months=months, backup_dir=str(tmp_path / 'backups'))
    assert result['changed'] is True and result['created'] and result['analyzed'] is False
    assert result['detached'] == retired and [d['name'] for d in result['dropped']] == retired
    assert all(d['manifest_path'].startswith(str(tmp_path / 'backups')) for d in result['dropped'])
    assert result['coverage_until'] == planning.month_add(current_month(db), 4)
    queries = preview_session.queries
    assert sum('ATTACH PARTITION' in q for q in queries) == len(result['created'])
    assert sum(q.endswith('CONCURRENTLY') for q in queries) == len(retired)
    assert sum(q.startswith('DROP TABLE') for q in queries) == len(retired)
    assert queries[-1] == 'ANALYZE "public"."event_impressions"'
    assert catalog_fingerprint(db) == before
    assert not (tmp_path / 'backups').exists()


@pytest.mark.timeout(240)
def test_module_main_reports_through_ansible(db, session_for, capsys):
    from ansible.module_utils.testing import patch_module_args
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        'pgpart_maintain_module', os.path.join(os.path.dirname(__file__), '..', 'library', 'pgpart_maintain.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    converted_db(db, session_for)

    with patch_module_args(db.params(table=TABLE, premake=3)):
        with pytest.raises(SystemExit) as exited:
            module.main()
    out = json.loads(capsys.readouterr().out)
    assert exited.value.code == 0, out
    assert out['changed'] is True and out['created'] and out['analyzed'] is True
    assert out['coverage_until'] == planning.month_add(current_month(db), 4)
    assert any('ATTACH PARTITION' in q for q in out['queries'])
    assert db.url.split('@')[0].split(':')[-1] not in json.dumps(out)  # no password anywhere

    with patch_module_args(db.params(table=TABLE, premake=3, alert_days=400)):
        with pytest.raises(SystemExit) as exited:
            module.main()
    out = json.loads(capsys.readouterr().out)
    assert exited.value.code == 1 and out['failed'] is True
    assert 'within alert_days=400' in out['msg'] and out['changed'] is False and out['created'] == []

    with patch_module_args(db.params(table=TABLE, retention_months=12)):
        with pytest.raises(SystemExit) as exited:
            module.main()
    out = json.loads(capsys.readouterr().out)
    assert exited.value.code == 1 and 'backup_dir' in out['msg']
