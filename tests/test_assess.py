"""Refusals and bad input: a clear error that says what and why, and nothing changed."""
import os
import socket

import pytest

from ansible.module_utils import pgpart_assess, pgpart_db
from ansible.module_utils.pgpart_db import PgpartError
from helpers import build_sample, catalog_fingerprint, convert
from pooler import PgBouncer, pgbouncer_binary

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def sample(db):
    return build_sample(db, rows=1000)


def assess(session, table, **kwargs):
    return pgpart_assess.assess_table(session, 'public', table, **kwargs)


def refused_without_change(db, session, table, *fragments):
    """Convert must refuse naming every fragment, and leave the catalog exactly as it was."""
    before = catalog_fingerprint(db)
    with pytest.raises(PgpartError) as refusal:
        convert(session, table)
    message = str(refusal.value)
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert catalog_fingerprint(db) == before
    return message


def test_orders_is_refused_naming_every_referencing_foreign_key(sample, session_for):
    session = session_for(sample)
    report = assess(session, 'orders')
    assert report['eligible'] is False
    assert sorted(f.split(' (')[1][:-1] for f in report['facts']['incoming_foreign_keys']) == [
        'public.inventory_operations', 'public.order_items', 'public.refunds', 'public.tickets']
    refused_without_change(sample, session, 'orders', 'order_items_order_id_fkey', 'refunds_order_id_fkey',
                           'tickets_order_id_fkey', 'inventory_operations_order_id_fkey')
    assert sample.scalar("SELECT to_regnamespace('pgpart')") is None  # not even the journal was created


def test_fact_tables_are_eligible_with_a_plan_covering_every_row(sample, session_for):
    session = session_for(sample)
    for table in ('event_impressions', 'ticket_analytics'):
        report = assess(session, table)
        assert report['eligible'], report['reasons']
        covered = sum(p['rows'] for p in report['plan']['partitions'])
        assert covered == report['key_stats']['rows'] == 1000
        assert report['plan']['partitions'][0]['from'] is None
    assert assess(session, 'ticket_analytics')['facts']['id_generation'] == 'identity'
    assert assess(session, 'event_impressions')['facts']['id_generation'] == 'owned'


def test_missing_table(sample, session_for):
    session = session_for(sample)
    report = assess(session, 'no_such_table')
    assert report['state'] == 'missing' and 'does not exist' in report['reasons'][0]
    refused_without_change(sample, session, 'no_such_table', 'public.no_such_table does not exist')


def test_null_keys_and_nullable_key_column(db, session_for):
    db.query("CREATE TABLE loose (id bigserial PRIMARY KEY, created_at timestamptz)")
    db.query("INSERT INTO loose (created_at) VALUES (now()), (NULL), (NULL)")
    session = session_for(db)
    message = refused_without_change(db, session, 'loose', '2 rows have created_at IS NULL', 'nullable')
    assert 'VALIDATE CONSTRAINT' in message  # the online fix is spelled out


def test_unique_constraint_without_the_key_no_primary_key_and_far_future_rows(db, session_for):
    db.query("CREATE TABLE coded (id bigserial PRIMARY KEY, code text UNIQUE, created_at timestamptz NOT NULL)")
    db.query("CREATE TABLE keyless (v int, created_at timestamptz NOT NULL)")
    db.query("CREATE TABLE futuristic (id bigserial PRIMARY KEY, created_at timestamptz NOT NULL)")
    db.query("INSERT INTO futuristic (created_at) VALUES (now()), ('2099-01-01')")
    session = session_for(db)
    refused_without_change(db, session, 'coded', 'unique constraint coded_code_key on (code) does not include created_at')
    refused_without_change(db, session, 'keyless', 'no primary key')
    refused_without_change(db, session, 'futuristic', '1 rows have created_at in or after', 'max_future_months')


def test_dependents_that_cannot_follow_are_refused(sample, session_for):
    sample.query("CREATE MATERIALIZED VIEW impressions_mv AS SELECT count(*) FROM event_impressions")
    sample.query("CREATE STATISTICS ei_stats ON event_id, source FROM event_impressions")
    session = session_for(sample)
    refused_without_change(sample, session, 'event_impressions', 'materialized view public.impressions_mv',
                           'extended statistics ei_stats')


def test_names_already_taken(sample, session_for):
    sample.query("CREATE TABLE event_impressions_old (x int)")
    refused_without_change(sample, session_for(sample), 'event_impressions', 'event_impressions_old')


def test_realtime_publication_and_workload_review_warn(sample, session_for):
    sample.query("CREATE PUBLICATION supabase_realtime FOR TABLE ticket_analytics")
    sample.query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    sample.query("INSERT INTO event_impressions (id, event_id, created_at) SELECT 1, min(id), now() FROM events "
                 "ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source")
    sample.query("SELECT count(*) FROM event_impressions WHERE event_id = 1")
    session = session_for(sample)
    concerns = assess(session, 'ticket_analytics')['concerns']
    assert any(c.startswith('LOUD WARNING') and 'Supabase Realtime' in c for c in concerns)
    workload = assess(session, 'event_impressions')['workload']
    kinds = set(w['kind'] for w in workload)
    assert {'pk_upsert', 'no_pruning'} <= kinds, workload


def test_unreachable_database_and_wrong_password_leak_no_secret(db):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        closed_port = s.getsockname()[1]
    secret = 'Sup3r-S3cret-Passw0rd'
    for params in ({'database_url': 'postgresql://postgres:%s@127.0.0.1:%d/x' % (secret, closed_port)},
                   {'database_url': db.cluster.url(db.name, password=secret)},
                   {'login_host': '127.0.0.1', 'login_port': db.cluster.port, 'login_user': 'postgres',
                    'login_password': secret, 'login_db': db.name}):
        with pytest.raises(PgpartError) as failure:
            pgpart_db.connect(dict(params, connect_params={}, connect_timeout=3))
        message = str(failure.value)
        assert 'cannot connect to postgres@127.0.0.1' in message and secret not in message


def test_transaction_pooler_port_is_refused_before_connecting():
    params = {'database_url': 'postgresql://postgres:pw@127.0.0.1:6543/postgres', 'connect_params': {},
              'connect_timeout': 1}
    with pytest.raises(PgpartError, match='transaction pooler'):
        pgpart_db.connect(params)


@pytest.mark.skipif(not pgbouncer_binary() and not os.environ.get('CI'), reason='pgbouncer not installed')
@pytest.mark.parametrize('mode,refused', [('transaction', True), ('session', False)])
def test_pgbouncer_transaction_mode_is_detected_session_mode_accepted(db, mode, refused):
    assert pgbouncer_binary(), 'CI installs pgbouncer (.ci/run); it must be present'
    bouncer = PgBouncer(db.cluster, db.name, mode).start()
    try:
        params = {'database_url': bouncer.url(), 'connect_params': {}, 'connect_timeout': 5}
        if refused:
            with pytest.raises(PgpartError, match='transaction pooler'):
                pgpart_db.connect(params)
        else:
            session = pgpart_db.connect(params)
            assert session.scalar('SELECT 1') == 1
            session.close()
    finally:
        bouncer.stop()


def test_a_second_concurrent_run_is_refused(sample, session_for):
    first, second = session_for(sample), session_for(sample)
    assert first.try_table_lock('public', 'event_impressions')
    with pytest.raises(PgpartError, match='another pgpart run is working on public.event_impressions'):
        convert(second, 'event_impressions')
