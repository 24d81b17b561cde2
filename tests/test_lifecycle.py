"""After the swap: lossless rollback, and cleanup only when every gate passes."""
import time

import psycopg2
import pytest

from ansible.module_utils import pgpart_backup, pgpart_catalog, pgpart_cleanup, pgpart_journal, pgpart_rollback
from ansible.module_utils import pgpart_verify
from ansible.module_utils.pgpart_db import PgpartError
from helpers import build_sample, catalog_fingerprint, convert, verified
from test_concurrency import activity, assert_exact  # noqa: F401  (fixture and check shared)
from workload import LedgerWriter, table_state

pytestmark = pytest.mark.timeout(300)


def rollback(session, table, **kwargs):
    return pgpart_rollback.rollback(session, 'public', table, **kwargs)


def cleanup(session, table, **kwargs):
    return pgpart_cleanup.cleanup(session, 'public', table, **kwargs)


def original_shape(session, table):
    """The structure and security that a rollback must restore exactly."""
    info = pgpart_catalog.read_table(session, 'public', table)
    return (pgpart_verify.shape(info, 'created_at', pk_with_key=False), pgpart_verify.security(info),
            sorted(i['name'] for i in info['indexes']), info['relkind'],
            sorted('%s.%s' % (v['schema'], v['name']) for v in info['views']))


def test_rollback_after_inserts_updates_and_deletes_since_the_swap_loses_nothing(activity, session_for):  # noqa: F811
    session = session_for(activity)
    shape_before = original_shape(session, 'activity')
    convert(session, 'activity')
    initial, _ = table_state(activity.url, 'public', 'activity')
    writer = LedgerWriter(activity.url, 'public', 'activity', list(initial), slow_seconds=1.0).start()
    time.sleep(1.5)  # writes land in the partitioned table and, through the reverse trigger, in activity_old
    writer.stop()
    assert writer.failures == [] and writer.committed['delete'] > 10 and writer.committed['update'] > 10
    result = rollback(session, 'activity')
    assert result['action'] == 'swap_back' and result['dropped'] == 'activity_new'
    assert activity.scalar("SELECT relkind FROM pg_class WHERE relname = 'activity'") == 'r'
    assert_exact(activity, writer, initial)
    assert original_shape(session, 'activity') == shape_before
    highest = activity.scalar("SELECT max(id) FROM activity")
    assert activity.scalar("INSERT INTO activity (payload) VALUES ('after rollback') RETURNING id") > highest
    assert rollback(session, 'activity')['changed'] is False


def test_rollback_of_the_sample_restores_security_dependents_and_identity(db, session_for):
    build_sample(db, rows=1500)
    session = session_for(db)
    shapes = dict((t, original_shape(session, t)) for t in ('event_impressions', 'ticket_analytics'))
    pubs_before = db.query("SELECT pubname, prrelid::regclass::text FROM pg_publication_rel r "
                           "JOIN pg_publication p ON p.oid = r.prpubid ORDER BY 1, 2")
    for table in shapes:
        convert(session, table)
    new_id = db.scalar("INSERT INTO ticket_analytics (event_id, ticket_type, quantity, unit_price, channel) "
                       "SELECT min(id), 'vip', 1, 5, 'POST' FROM events RETURNING id")
    for table in shapes:
        assert rollback(session, table)['action'] == 'swap_back'
        assert original_shape(session, table) == shapes[table], table
    assert db.query("SELECT pubname, prrelid::regclass::text FROM pg_publication_rel r "
                    "JOIN pg_publication p ON p.oid = r.prpubid ORDER BY 1, 2") == pubs_before
    assert db.scalar("SELECT channel FROM ticket_analytics WHERE id = %s", (new_id,)) == 'post'
    after = db.scalar("INSERT INTO ticket_analytics (event_id, ticket_type, quantity, unit_price, channel) "
                      "SELECT min(id), 'vip', 1, 5, 'X' FROM events RETURNING id")
    assert after > new_id  # the identity continued past the ids handed out while partitioned
    assert db.scalar("SELECT sum(impressions) FROM event_impressions_daily") == 1500
    assert db.scalar("SELECT count(*) FROM pg_class WHERE relname LIKE '%%_new' OR relname LIKE '%%_old'") == 0


@pytest.mark.parametrize('stop_before', ['backfilled', 'verified'])
def test_rollback_of_a_partial_conversion_removes_it_and_leaves_the_original_untouched(activity, session_for,  # noqa: F811
                                                                                       stop_before):
    session = session_for(activity)
    before = activity.query("SELECT id, created_at, payload FROM activity ORDER BY id")
    fingerprint = catalog_fingerprint(activity, exclude_schemas=['pgpart'])
    convert(session, 'activity', stop_before=stop_before)
    assert activity.scalar("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'activity'::regclass "
                           "AND tgname LIKE 'pgpart%%'") == 2
    result = rollback(session, 'activity')
    assert result['action'] == 'remove_partial'
    assert catalog_fingerprint(activity, exclude_schemas=['pgpart']) == fingerprint
    assert activity.query("SELECT id, created_at, payload FROM activity ORDER BY id") == before
    activity.query("INSERT INTO activity (payload) VALUES ('still writable')")
    assert pgpart_journal.read(session, 'public', 'activity')['phase'] == 'rolled_back'
    assert convert(session, 'activity')['phase'] == 'converted'  # and it can be converted again


def test_rollback_refuses_when_the_copies_differ_unless_forced(activity, session_for):  # noqa: F811
    session = session_for(activity)
    convert(session, 'activity')
    activity.query("ALTER TABLE activity DISABLE TRIGGER pgpart_sync")
    activity.query("INSERT INTO activity (payload) VALUES ('only in the partitioned table')")
    with pytest.raises(PgpartError, match='refusing to roll back public.activity: activity_old differs'):
        rollback(session, 'activity')
    assert activity.scalar("SELECT relkind FROM pg_class WHERE relname = 'activity'") == 'p'
    result = rollback(session, 'activity', force=True)
    assert result['kept_aside'] == 'activity_new'
    assert activity.scalar("SELECT count(*) FROM activity_new WHERE payload = 'only in the partitioned table'") == 1


@pytest.fixture
def converted_with_backup(activity, session_for, tmp_path):  # noqa: F811
    session = session_for(activity)
    manifest = pgpart_backup.take_backup(session, 'public', 'activity', str(tmp_path))
    convert(session, 'activity')
    return activity, session, manifest


def test_cleanup_is_refused_inside_the_validation_window(converted_with_backup):
    db, session, _ = converted_with_backup
    before = catalog_fingerprint(db)
    with pytest.raises(PgpartError, match='validation window is 24 hours: cleanup is allowed from'):
        cleanup(session, 'activity')
    assert catalog_fingerprint(db) == before


def test_cleanup_is_refused_when_verification_fails_now(converted_with_backup):
    db, session, _ = converted_with_backup
    db.query("ALTER TABLE activity DISABLE TRIGGER pgpart_sync")
    db.query("DELETE FROM activity WHERE id = 1")
    before = catalog_fingerprint(db)
    with pytest.raises(PgpartError, match='verification fails now: rows equal month by month'):
        cleanup(session, 'activity', min_age_hours=0)
    assert catalog_fingerprint(db) == before


def test_cleanup_is_refused_without_a_backup_or_with_a_damaged_one(converted_with_backup):
    db, session, manifest = converted_with_backup
    with open(manifest['dump_path'], 'r+b') as f:
        f.truncate(manifest['bytes'] // 2)
    with pytest.raises(PgpartError, match='does not verify'):
        cleanup(session, 'activity', min_age_hours=0)
    db.query("DELETE FROM pgpart.backups")
    with pytest.raises(PgpartError, match='no backup of public.activity is recorded'):
        cleanup(session, 'activity', min_age_hours=0)
    assert db.scalar("SELECT to_regclass('public.activity_old') IS NOT NULL")


def test_cleanup_drops_the_old_table_and_writes_continue(converted_with_backup):
    db, session, _ = converted_with_backup
    check = pgpart_cleanup.cleanup(session_check(db), 'public', 'activity', min_age_hours=0)
    assert check['would_drop'] == 'activity_old' and db.scalar("SELECT to_regclass('activity_old') IS NOT NULL")
    result = cleanup(session, 'activity', min_age_hours=0)
    assert result['dropped'] == 'activity_old' and result['bytes_reclaimed'] > 1000000
    assert db.scalar("SELECT to_regclass('activity_old')") is None
    assert db.scalar("SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'pgpart%%'") == 0
    highest = db.scalar("SELECT max(id) FROM activity")
    assert db.scalar("INSERT INTO activity (payload) VALUES ('after cleanup') RETURNING id") > highest
    assert cleanup(session, 'activity', min_age_hours=0)['changed'] is False
    report = verified(session, 'activity')
    assert report['phase'] == 'cleaned'
    with pytest.raises(PgpartError, match='cannot roll back public.activity online: cleanup dropped activity_old'):
        rollback(session, 'activity')


def session_check(db):
    from ansible.module_utils import pgpart_db
    return pgpart_db.connect(db.params(), check_mode=True)


def test_dropping_old_by_hand_never_breaks_writes_and_cleanup_records_it(converted_with_backup):
    db, session, _ = converted_with_backup
    db.query("DROP TABLE activity_old")  # what the decision document's hand-written cleanup does
    db.query("INSERT INTO activity (payload) VALUES ('still fine')")
    report = pgpart_verify.verify_converted(session, 'public', 'activity')
    assert not report['ok'] and any('dropped outside pgpart' in str(c['detail']) for c in report['checks'])
    result = cleanup(session, 'activity', min_age_hours=0)
    assert 'already been dropped outside pgpart' in result['msg']
    with pytest.raises(psycopg2.Error):
        db.query("SELECT 1 FROM activity_old")


def test_a_forced_rollback_keeps_the_differing_copy_even_when_run_again(activity, session_for):  # noqa: F811
    session = session_for(activity)
    convert(session, 'activity')
    activity.query("ALTER TABLE activity DISABLE TRIGGER pgpart_sync")
    activity.query("INSERT INTO activity (payload) VALUES ('only here')")
    assert rollback(session, 'activity', force=True)['kept_aside'] == 'activity_new'
    again = rollback(session, 'activity')
    assert again['changed'] is False and again['kept_aside'] == 'activity_new'
    assert activity.scalar("SELECT count(*) FROM activity_new WHERE payload = 'only here'") == 1


def test_cleanup_refusal_inside_a_fractional_window_says_when(converted_with_backup):
    _, session, _ = converted_with_backup
    with pytest.raises(PgpartError, match='validation window is 1.5 hours: cleanup is allowed from'):
        cleanup(session, 'activity', min_age_hours=1.5)
