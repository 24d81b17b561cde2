"""The sample database (tools/sample_db.py) and the demo writer (tools/demo_writer.py).

Runs against a throwaway cluster started with tools/pgcluster.py; the major version
comes from PGPART_TEST_PG (default 15), e.g. PGPART_TEST_PG=18 pytest tests/test_sample_db.py
"""
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg2
import pytest

TOOLS = Path(__file__).resolve().parent.parent / "tools"
sys.path.insert(0, str(TOOLS))

import demo_writer  # noqa: E402
import pgcluster  # noqa: E402
import sample_db  # noqa: E402

PG_VERSION = os.environ.get("PGPART_TEST_PG", "15")
ROWS = 5000
SEED = 42
NOW = dt.datetime(2025, 10, 21, 12, 0, tzinfo=dt.timezone.utc)
FK_CHILDREN = {"order_items", "refunds", "tickets", "inventory_operations"}


# ---------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def cluster():
    # not under pytest's basetemp: that is private to root (0700) and the server runs as
    # an unprivileged user when we are root
    directory = tempfile.mkdtemp(prefix="pgpart-test-sample-")
    c = pgcluster.Cluster(directory, PG_VERSION)
    try:
        c.start()
        yield c
    finally:
        c.stop()
        shutil.rmtree(directory, ignore_errors=True)


def new_database(cluster, name):
    conn = psycopg2.connect(cluster.url())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return cluster.url(dbname=name)


@pytest.fixture(scope="module")
def sample(cluster):
    dsn = new_database(cluster, "sample")
    result = sample_db.build(dsn, rows=ROWS, seed=SEED, now=NOW)
    return dsn, result


@pytest.fixture
def db(sample):
    conn = psycopg2.connect(sample[0])
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


def one(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchone()


def rows_of(conn, query, params=None):
    with conn.cursor() as cur:
        cur.execute(query, params)
        return cur.fetchall()


def table_hashes(dsn):
    conn = psycopg2.connect(dsn)
    try:
        return {t: one(conn, f"SELECT count(*), sum(hashtextextended(x::text, 0)) FROM {t} x")
                for t in sample_db.TABLES}
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# data

@pytest.mark.timeout(120)
def test_cluster_version(db):
    assert one(db, "SHOW server_version_num")[0].startswith(PG_VERSION)


@pytest.mark.timeout(120)
def test_row_counts(sample, db):
    _, result = sample
    for table in sample_db.FACT_TABLES:
        assert one(db, f"SELECT count(*) FROM {table}")[0] == ROWS
        assert result["tables"][table]["rows"] == ROWS
    assert 200 <= one(db, "SELECT count(*) FROM events")[0] <= 999
    assert one(db, "SELECT count(*) FROM orders")[0] == max(100, ROWS // 20)
    for table in FK_CHILDREN:
        assert one(db, f"SELECT count(*) FROM {table}")[0] > 0, table
    assert result["now"] == NOW


@pytest.mark.timeout(120)
@pytest.mark.parametrize("table", sample_db.FACT_TABLES)
def test_created_at_distribution(db, table):
    assert one(db, f"SELECT count(*) FROM {table} WHERE created_at IS NULL")[0] == 0
    assert one(db, "SELECT attnotnull FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'created_at'",
               (table,))[0]
    now = NOW
    start = one(db, "SELECT %s::timestamptz - interval '30 months'", (now,))[0]
    # the bulk: the 30 months ending at now, every month populated, denser recently
    bulk, lo, hi = one(db, f"SELECT count(*), min(created_at), max(created_at) FROM {table}"
                           " WHERE created_at >= %s AND created_at <= %s", (start, now))
    assert bulk == ROWS - sample_db.N_ANCIENT - sample_db.N_FUTURE
    assert lo - start < dt.timedelta(days=15)
    assert now - hi < dt.timedelta(days=2)
    months = rows_of(db, f"SELECT date_trunc('month', created_at), count(*) FROM {table}"
                         " WHERE created_at >= %s AND created_at <= %s GROUP BY 1 ORDER BY 1", (start, now))
    assert 30 <= len(months) <= 31
    assert all(count > 0 for _, count in months)
    assert months[-2][1] > 2 * months[1][1]            # denser in recent months
    # a few rows 3-5 years back, in 2-3 months
    old = rows_of(db, f"SELECT created_at FROM {table} WHERE created_at < %s ORDER BY 1", (start,))
    assert 5 <= len(old) <= 20
    assert all(now - dt.timedelta(days=5 * 365) <= ts <= now - dt.timedelta(days=3 * 365) for (ts,) in old)
    assert 2 <= len({(ts.year, ts.month) for (ts,) in old}) <= 3
    # a few rows in the next 1-2 months
    future = rows_of(db, f"SELECT created_at FROM {table} WHERE created_at > %s", (now,))
    assert 1 <= len(future) <= 10
    assert all(ts < now + dt.timedelta(days=62) for (ts,) in future)
    # ids grow with created_at, as in a table filled over time
    assert one(db, f"SELECT corr(id, extract(epoch FROM created_at)) FROM {table}")[0] > 0.95


@pytest.mark.timeout(120)
def test_values_are_realistic(db):
    assert one(db, "SELECT count(*) FROM event_impressions e LEFT JOIN events v ON v.id = e.event_id"
                   " WHERE v.id IS NULL")[0] == 0
    nulls, distinct_users = one(db, "SELECT count(*) FILTER (WHERE user_id IS NULL), count(DISTINCT user_id)"
                                    " FROM event_impressions")
    assert 0 < nulls < ROWS and distinct_users > 100
    sources = {r[0] for r in rows_of(db, "SELECT DISTINCT source FROM event_impressions")}
    assert sources == {"web", "ios", "android", "email"}
    campaigns = one(db, "SELECT count(*) FROM event_impressions WHERE metadata ? 'campaign'")[0]
    assert 0.1 * ROWS < campaigns < 0.6 * ROWS
    qmin, qmax = one(db, "SELECT min(quantity), max(quantity) FROM ticket_analytics")
    assert (qmin, qmax) == (1, 10)
    assert one(db, "SELECT count(*) FROM ticket_analytics WHERE revenue <> quantity * unit_price")[0] == 0
    assert one(db, "SELECT count(DISTINCT ticket_type) FROM ticket_analytics")[0] <= 6


@pytest.mark.timeout(120)
def test_legacy_channels_are_mixed_case_and_recent_ones_normalized(db):
    cutoff = one(db, "SELECT %s::timestamptz - interval '12 months'", (NOW,))[0]
    legacy_mixed = one(db, "SELECT count(*) FROM ticket_analytics WHERE created_at < %s"
                           " AND channel <> lower(channel)", (cutoff,))[0]
    recent_mixed = one(db, "SELECT count(*) FROM ticket_analytics WHERE created_at >= %s"
                           " AND channel <> lower(channel)", (cutoff,))[0]
    assert legacy_mixed > 0
    assert recent_mixed == 0


@pytest.mark.timeout(120)
def test_sequences_are_past_max_id(db):
    for table in ("events", "orders", "event_impressions"):
        max_id = one(db, f"SELECT max(id) FROM {table}")[0]
        seq = one(db, "SELECT pg_get_serial_sequence(%s, 'id')", (table,))[0]
        assert seq is not None
        last, called = one(db, f"SELECT last_value, is_called FROM {seq}")
        assert (last if called else last - 1) >= max_id, table
    # the identity hands out an id past the loaded ones
    max_id = one(db, "SELECT max(id) FROM ticket_analytics")[0]
    new_id = one(db, "INSERT INTO ticket_analytics (event_id, ticket_type, quantity, unit_price)"
                     " VALUES (1, 'general', 1, 10) RETURNING id")[0]
    assert new_id > max_id


@pytest.mark.timeout(120)
def test_build_is_deterministic(cluster, sample):
    again = new_database(cluster, "sample_again")
    sample_db.build(again, rows=ROWS, seed=SEED, now=NOW)
    assert table_hashes(again) == table_hashes(sample[0])
    other = new_database(cluster, "sample_other_seed")
    sample_db.build(other, rows=ROWS, seed=SEED + 1, now=NOW)
    assert table_hashes(other)["event_impressions"] != table_hashes(sample[0])["event_impressions"]


@pytest.mark.timeout(120)
def test_create_schema_then_load_data_equals_build(cluster, sample):
    dsn = new_database(cluster, "sample_two_steps")
    conn = psycopg2.connect(dsn)
    try:
        sample_db.create_schema(conn)
        sample_db.load_data(conn, rows=ROWS, seed=SEED, now=NOW)
        assert one(conn, "SELECT tgenabled FROM pg_trigger WHERE tgname = 'ticket_analytics_normalize'")[0] == "O"
    finally:
        conn.close()
    assert table_hashes(dsn) == table_hashes(sample[0])


# ---------------------------------------------------------------------------
# schema

@pytest.mark.timeout(120)
def test_foreign_keys_to_orders(db):
    children = rows_of(db, """
        SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint
         WHERE contype = 'f' AND confrelid = 'orders'::regclass""")
    assert {c for c, _ in children} == FK_CHILDREN
    assert all("REFERENCES orders(id)" in d for _, d in children)
    # the fact tables reference events, and nothing references the fact tables
    for table in sample_db.FACT_TABLES:
        assert one(db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = %s::regclass"
                       " AND confrelid = 'events'::regclass", (table,))[0] == 1
        assert one(db, "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND confrelid = %s::regclass",
                   (table,))[0] == 0


@pytest.mark.timeout(120)
def test_rls_policies_and_replica_identity(db):
    flags = dict((r[0], r[1:]) for r in rows_of(db, """
        SELECT relname, relrowsecurity, relforcerowsecurity, relreplident FROM pg_class
         WHERE relname IN ('event_impressions', 'ticket_analytics')"""))
    assert flags["event_impressions"] == (True, False, "d")
    assert flags["ticket_analytics"] == (True, True, "f")
    policies = {r[0]: r[1:] for r in rows_of(db, """
        SELECT policyname, tablename, cmd, roles::text[], qual, with_check FROM pg_policies""")}
    assert policies["impressions_read"][:3] == ("event_impressions", "SELECT", ["authenticated"])
    assert policies["impressions_insert"][:3] == ("event_impressions", "INSERT", ["anon", "authenticated"])
    assert "email" in policies["impressions_insert"][4]
    assert policies["analytics_service"][:3] == ("ticket_analytics", "ALL", ["service_role"])
    assert policies["analytics_read"][:3] == ("ticket_analytics", "SELECT", ["authenticated"])
    assert "1000" in policies["analytics_read"][3]


@pytest.mark.timeout(120)
def test_roles_and_grants(db):
    for role in sample_db.API_ROLES:
        assert one(db, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)) == (False,)

    def can(role, table, privilege):
        return one(db, "SELECT has_table_privilege(%s, %s, %s)", (role, table, privilege))[0]

    for role in ("anon", "authenticated"):
        assert can(role, "event_impressions", "SELECT") and can(role, "event_impressions", "INSERT")
        assert not can(role, "event_impressions", "DELETE")
    assert all(can("service_role", t, p) for t in sample_db.FACT_TABLES
               for p in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"))
    assert can("authenticated", "ticket_analytics", "SELECT")
    assert not can("authenticated", "ticket_analytics", "INSERT")
    assert not can("anon", "ticket_analytics", "SELECT")
    assert can("authenticated", "event_impressions_daily", "SELECT")


@pytest.mark.timeout(120)
def test_identity_generated_and_serial_columns(db):
    columns = {r[0]: r[1:] for r in rows_of(db, """
        SELECT attname, attidentity, attgenerated FROM pg_attribute
         WHERE attrelid = 'ticket_analytics'::regclass AND attnum > 0 AND NOT attisdropped""")}
    assert columns["id"] == ("a", "")
    assert columns["revenue"] == ("", "s")
    default = one(db, "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef d JOIN pg_attribute a"
                      " ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
                      " WHERE d.adrelid = 'event_impressions'::regclass AND a.attname = 'id'")[0]
    assert default.startswith("nextval(")
    with pytest.raises(psycopg2.errors.GeneratedAlways):
        one(db, "INSERT INTO ticket_analytics (id, event_id, ticket_type, quantity, unit_price)"
                " VALUES (1, 1, 'general', 1, 10) RETURNING id")


@pytest.mark.timeout(120)
def test_indexes_constraints_and_comments(db):
    indexes = dict(rows_of(db, "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'event_impressions'"))
    assert len(indexes) == 5
    defs = list(indexes.values())
    assert any("(event_id, created_at)" in d for d in defs)
    assert any(d.endswith("(created_at)") for d in defs)
    assert any("(user_id) WHERE (user_id IS NOT NULL)" in d for d in defs)
    assert any("(metadata ->> 'campaign'::text)" in d for d in defs)
    ta_defs = [r[0] for r in rows_of(db, "SELECT indexdef FROM pg_indexes WHERE tablename = 'ticket_analytics'")]
    assert any("(event_id, ticket_type)" in d for d in ta_defs) and any(d.endswith("(created_at)") for d in ta_defs)
    assert one(db, "SELECT bool_and(indisvalid) FROM pg_index WHERE indrelid IN"
                   " ('event_impressions'::regclass, 'ticket_analytics'::regclass)")[0]
    checks = [r[0] for r in rows_of(db, "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                                        " WHERE contype = 'c' AND conrelid = 'event_impressions'::regclass")]
    assert len(checks) == 1 and "email" in checks[0]
    with pytest.raises(psycopg2.errors.CheckViolation):
        one(db, "INSERT INTO event_impressions (event_id, source) VALUES (1, 'fax') RETURNING id")
    db.rollback()
    assert one(db, "SELECT obj_description('event_impressions'::regclass, 'pg_class')")[0]
    assert one(db, "SELECT col_description('event_impressions'::regclass,"
                   " (SELECT attnum FROM pg_attribute WHERE attrelid = 'event_impressions'::regclass"
                   "   AND attname = 'source'))")[0]
    assert one(db, "SELECT pg_get_expr(adbin, adrelid) FROM pg_attrdef WHERE adrelid = 'event_impressions'::regclass"
                   " AND adnum = (SELECT attnum FROM pg_attribute WHERE attrelid = 'event_impressions'::regclass"
                   "   AND attname = 'metadata')")[0] == "'{}'::jsonb"


@pytest.mark.timeout(120)
def test_view_exists_and_works(db):
    options = one(db, "SELECT reloptions FROM pg_class WHERE relname = 'event_impressions_daily' AND relkind = 'v'")
    assert options is not None
    if int(PG_VERSION) >= 15:
        assert "security_invoker=true" in (options[0] or [])
    assert one(db, "SELECT sum(impressions) FROM event_impressions_daily")[0] == ROWS
    # through the API role: the grant on the view, the invoker's grant and policy on the table
    with db.cursor() as cur:
        cur.execute("SET ROLE authenticated")
        cur.execute("SELECT sum(impressions) FROM event_impressions_daily")
        assert cur.fetchone()[0] == ROWS
        cur.execute("RESET ROLE")


@pytest.mark.timeout(120)
def test_publication(db):
    assert rows_of(db, "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = 'analytics_pub'") \
        == [("public", "event_impressions")]


@pytest.mark.timeout(120)
def test_trigger_lowercases_channel(db):
    trigger = one(db, "SELECT tgenabled, pg_get_triggerdef(oid) FROM pg_trigger"
                      " WHERE tgrelid = 'ticket_analytics'::regclass AND NOT tgisinternal")
    assert trigger[0] == "O"
    assert "BEFORE INSERT OR UPDATE" in trigger[1] and "normalize_channel()" in trigger[1]
    new_id, channel = one(db, "INSERT INTO ticket_analytics (event_id, ticket_type, quantity, unit_price, channel)"
                              " VALUES (1, 'vip', 2, 50, 'MiXeD_Case') RETURNING id, channel")
    assert channel == "mixed_case"
    assert one(db, "UPDATE ticket_analytics SET channel = 'UPPER' WHERE id = %s RETURNING channel",
               (new_id,))[0] == "upper"
    db.rollback()


@pytest.mark.timeout(120)
def test_second_create_schema_fails_clearly_and_changes_nothing(db):
    before = one(db, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")[0]
    db.rollback()
    with pytest.raises(sample_db.SampleDBError, match="already holds sample objects.*fresh database"):
        sample_db.create_schema(db)
    assert one(db, "SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace")[0] == before
    assert one(db, "SELECT count(*) FROM event_impressions")[0] == ROWS


@pytest.mark.timeout(120)
def test_other_schema(cluster):
    dsn = new_database(cluster, "sample_schema")
    result = sample_db.build(dsn, rows=300, seed=1, schema="analytics")
    assert result["tables"]["event_impressions"]["rows"] == 300
    conn = psycopg2.connect(dsn)
    try:
        assert one(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'analytics'")[0] == len(sample_db.TABLES)
        assert one(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")[0] == 0
        assert one(conn, "SELECT count(*) FROM analytics.ticket_analytics")[0] == 300
    finally:
        conn.close()


@pytest.mark.timeout(120)
def test_cli(cluster):
    dsn = new_database(cluster, "sample_cli")
    cmd = [sys.executable, str(TOOLS / "sample_db.py"), "--dsn", dsn, "--rows", "400", "--seed", "7"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    assert "event_impressions" in out.stdout and "400 rows" in out.stdout and "timings:" in out.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=100)
    assert again.returncode == 1 and "already holds sample objects" in again.stderr
    dsn2 = new_database(cluster, "sample_cli_schema_only")
    out = subprocess.run([sys.executable, str(TOOLS / "sample_db.py"), "--dsn", dsn2, "--rows", "400",
                          "--schema-only"], capture_output=True, text=True, timeout=100)
    assert out.returncode == 0, out.stderr
    conn = psycopg2.connect(dsn2)
    try:
        assert one(conn, "SELECT count(*) FROM event_impressions")[0] == 0
        assert one(conn, "SELECT count(*) FROM pg_indexes WHERE tablename = 'event_impressions'")[0] == 5
        assert one(conn, "SELECT count(*) FROM pg_trigger WHERE tgname = 'ticket_analytics_normalize'")[0] == 1
    finally:
        conn.close()


# ---------------------------------------------------------------------------
# demo writer

@pytest.fixture(scope="module")
def writer_db(cluster):
    """Its own sample database, so the writer's rows do not disturb the counts above."""
    dsn = new_database(cluster, "writer")
    sample_db.build(dsn, rows=500, seed=SEED)
    return dsn


@pytest.mark.timeout(120)
@pytest.mark.parametrize("roles", [None, demo_writer.API_ROLES], ids=["owner", "api-roles"])
def test_writer_class(writer_db, roles):
    writer = demo_writer.Writer(writer_db, rate=20, roles=roles).start()
    time.sleep(2)
    running = writer.summary()
    summary = writer.stop()
    assert running["attempted"] > 0
    assert summary["failed"] == 0, summary["errors"]
    assert summary["committed"] == summary["attempted"] > 0
    per_table = summary["per_table"]
    assert set(per_table) == set(demo_writer.TABLES)
    for stats in per_table.values():
        assert 10 <= stats["committed"] <= 60          # about 20 rows/s for 2 s (slack for a loaded host)
    assert 0 < summary["longest_stall_ms"] < 2000
    assert not any(t.thread.is_alive() for t in writer.writers)
    counts = demo_writer.count_rows(writer_db, summary["run_id"])
    assert counts["event_impressions"] == per_table["event_impressions"]["committed"]
    assert counts["ticket_analytics"] == per_table["ticket_analytics"]["committed"]
    assert counts["ticket_analytics_not_normalized"] == 0       # the trigger lower-cased them


@pytest.mark.timeout(120)
def test_writer_measures_a_stall(writer_db):
    locker = psycopg2.connect(writer_db)
    writer = demo_writer.Writer(writer_db, rate=20, tables=("ticket_analytics",)).start()
    try:
        time.sleep(0.5)
        with locker.cursor() as cur:
            cur.execute("LOCK TABLE ticket_analytics IN ACCESS EXCLUSIVE MODE")
            time.sleep(1.5)
        locker.commit()
        time.sleep(0.5)
    finally:
        locker.close()
        summary = writer.stop()
    assert summary["failed"] == 0
    assert summary["longest_stall_ms"] >= 1000


@pytest.mark.timeout(120)
def test_writer_cli(writer_db, tmp_path):
    summary_path = tmp_path / "summary.json"
    stop_file = tmp_path / "stop"
    proc = subprocess.Popen([sys.executable, str(TOOLS / "demo_writer.py"), "--dsn", writer_db, "--rate", "20",
                             "--stop-file", str(stop_file), "--summary", str(summary_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        stop_file.touch()
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1
    printed = json.loads(lines[0])
    assert json.loads(summary_path.read_text()) == printed
    assert printed["committed"] > 0 and printed["failed"] == 0
    assert {"attempted", "committed", "failed", "longest_stall_ms"} <= set(printed)
