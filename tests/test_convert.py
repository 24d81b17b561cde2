"""The conversion of the sample schema, and the traps of postgres-traps.md it must survive.

Every test runs on PostgreSQL 15 and 18 (see conftest.py).
"""
import psycopg2
import pytest

import sample_db

from helpers import as_role, build_sample, catalog_fingerprint, convert, relation_names, verified

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def sample(db):
    return build_sample(db, rows=3000)


@pytest.fixture
def converted(sample, session_for):
    """The sample database with both fact tables converted (and their _old tables kept)."""
    session = session_for(sample)
    for table in ('event_impressions', 'ticket_analytics'):
        result = convert(session, table)
        assert result['phase'] == 'converted', result
    return sample


def test_both_fact_tables_convert_and_verify_exactly(converted, session_for):
    session = session_for(converted)
    for table in ('event_impressions', 'ticket_analytics'):
        report = verified(session, table)
        assert report['data']['rows_old'] == report['data']['rows_partitioned'] == 3000
        assert converted.scalar("SELECT relkind FROM pg_class WHERE relname = %s", (table,)) == 'p'


def test_decision_document_sql_works_verbatim(converted):
    counts = converted.query("""
  SELECT
    (SELECT COUNT(*) FROM event_impressions_old) AS ei_old,
    (SELECT COUNT(*) FROM event_impressions) AS ei_new,
    (SELECT COUNT(*) FROM ticket_analytics_old) AS ta_old,
    (SELECT COUNT(*) FROM ticket_analytics) AS ta_new;
""")[0]
    assert counts[0] == counts[1] == 3000 and counts[2] == counts[3] == 3000
    tree = converted.query("SELECT * FROM pg_partition_tree('event_impressions');")
    leaves = [r for r in tree if r[2]]
    assert len(leaves) == len(relation_names(converted, 'event_impressions_p%'))
    sizes = converted.query("""
SELECT
  schemaname,
  tablename,
  pg_size_pretty(pg_total_relation_size(schemaname||'.'||tablename)) AS size
FROM pg_tables
WHERE tablename LIKE 'event_impressions_p%'
ORDER BY tablename;
""")
    assert len(sizes) == len(leaves) and all(r[2] for r in sizes)
    plan = converted.query("""
EXPLAIN (ANALYZE, BUFFERS)
SELECT COUNT(*)
FROM event_impressions
WHERE created_at > now() - interval '3 months';
""")
    assert any('event_impressions_p' in r[0] for r in plan)


def test_second_run_changes_nothing(converted, session_for):
    session = session_for(converted)
    before = catalog_fingerprint(converted)
    result = convert(session, 'event_impressions')
    assert result['changed'] is False and result['steps'] == [] and session.queries == []
    assert catalog_fingerprint(converted) == before


def test_check_mode_shows_the_plan_and_changes_nothing(sample, session_for):
    before = catalog_fingerprint(sample)
    session = session_for(sample, check_mode=True)
    result = convert(session, 'event_impressions')
    assert result['changed'] is True and 'swap' in result['would_run']
    statements = '\n'.join(session.queries)
    assert 'CREATE TABLE "public"."event_impressions_new"' in statements
    assert 'ATTACH PARTITION' in statements and 'CREATE TRIGGER "pgpart_sync"' in statements
    assert 'FOR SHARE ON CONFLICT DO NOTHING' in statements
    assert catalog_fingerprint(sample) == before


# -- copying the table's shape (traps 1-6) ------------------------------------------------------

def test_trap1_like_including_all_fails_but_the_catalog_build_carries_everything(converted):
    with pytest.raises(psycopg2.Error, match='multiple primary keys'):
        converted.query("CREATE TABLE naive (LIKE event_impressions_old INCLUDING ALL, PRIMARY KEY (id, created_at)) "
                        "PARTITION BY RANGE (created_at)")
    # defaults, NOT NULL and CHECKs of the original hold on the partitioned table
    row = converted.query("INSERT INTO event_impressions (event_id) SELECT min(id) FROM events "
                          "RETURNING source, metadata::text, created_at IS NOT NULL")[0]
    assert row == ('web', '{}', True)
    with pytest.raises(psycopg2.errors.CheckViolation):
        converted.query("INSERT INTO event_impressions (event_id, source) SELECT min(id), 'fax' FROM events")
    with pytest.raises(psycopg2.errors.ForeignKeyViolation):
        converted.query("INSERT INTO event_impressions (event_id) VALUES (-1)")


def test_trap2_security_and_settings_that_like_never_copies(converted):
    def table_facts(name):
        return converted.query(
            "SELECT c.relrowsecurity, c.relforcerowsecurity, c.relreplident, pg_get_userbyid(c.relowner), "
            "obj_description(c.oid, 'pg_class'), "
            "(SELECT array_agg(a::text ORDER BY a::text) FROM unnest(c.relacl) a), "
            "(SELECT array_agg(polname ORDER BY polname) FROM pg_policy WHERE polrelid = c.oid) "
            "FROM pg_class c WHERE c.relname = %s", (name,))[0]
    for table in ('event_impressions', 'ticket_analytics'):
        new, old_original = table_facts(table), table_facts(table + '_old')
        assert new[0] and new[6] == old_original[6]  # RLS on and the same policies
        assert new[2:5] == old_original[2:5]         # replica identity, owner, comment
    assert table_facts('ticket_analytics')[1] is True   # FORCE RLS kept
    assert table_facts('ticket_analytics')[2] == 'f'    # REPLICA IDENTITY FULL kept
    leaf_identity = converted.query("SELECT DISTINCT c.relreplident FROM pg_partition_tree('ticket_analytics') t "
                                    "JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf")
    assert leaf_identity == [('f',)]
    assert converted.scalar("SELECT col_description('event_impressions'::regclass, "
                            "(SELECT attnum FROM pg_attribute WHERE attrelid = 'event_impressions'::regclass "
                            "AND attname = 'session_id'))") == converted.scalar(
        "SELECT col_description('event_impressions_old'::regclass, (SELECT attnum FROM pg_attribute "
        "WHERE attrelid = 'event_impressions_old'::regclass AND attname = 'session_id'))")


def test_trap2_19_parent_keeps_the_acl_partitions_are_closed_to_the_api(sample, session_for):
    # Supabase's older projects grant everything on new tables to the API roles.
    sample.query("ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT ALL ON TABLES TO anon, authenticated")
    original_acl = sample.scalar("SELECT relacl::text FROM pg_class WHERE relname = 'event_impressions'")
    convert(session_for(sample), 'event_impressions')
    assert sample.scalar("SELECT relacl::text FROM pg_class WHERE relname = 'event_impressions'") == original_acl
    leaf_acls = sample.query("SELECT c.relname, c.relacl::text, c.relrowsecurity FROM pg_partition_tree('event_impressions') t "
                             "JOIN pg_class c ON c.oid = t.relid WHERE t.isleaf")
    for name, acl, rls in leaf_acls:
        assert rls and 'anon' not in (acl or '') and 'authenticated' not in (acl or ''), (name, acl)
    leaf = leaf_acls[-1][0]
    assert 'permission denied' in as_role(sample, 'anon', 'SELECT count(*) FROM public.%s' % leaf)
    assert as_role(sample, 'authenticated', 'SELECT count(*) FROM public.event_impressions')[0][0] == 3000
    # the retired copy is not readable through the API either
    assert 'permission denied' in as_role(sample, 'authenticated', 'SELECT count(*) FROM public.event_impressions_old')


def test_trap3_identity_continues_and_generated_columns_are_recomputed(sample, session_for):
    sample.query("GRANT USAGE, SELECT ON SEQUENCE ticket_analytics_id_seq TO authenticated")
    convert(session_for(sample), 'ticket_analytics')
    converted = sample
    assert converted.scalar("SELECT has_sequence_privilege('authenticated', "
                            "pg_get_serial_sequence('ticket_analytics', 'id'), 'USAGE')")
    max_id = converted.scalar("SELECT max(id) FROM ticket_analytics_old")
    new_id = converted.scalar("INSERT INTO ticket_analytics (event_id, ticket_type, quantity, unit_price, channel) "
                              "SELECT min(id), 'vip', 2, 10.50, 'WEB' FROM events RETURNING id")
    assert new_id > max_id
    assert converted.scalar("SELECT revenue FROM ticket_analytics WHERE id = %s", (new_id,)) == 21
    assert converted.scalar("SELECT count(*) FROM (SELECT id FROM ticket_analytics GROUP BY id HAVING count(*) > 1) d") == 0
    with pytest.raises(psycopg2.errors.GeneratedAlways):
        converted.query("INSERT INTO ticket_analytics (id, event_id, ticket_type, quantity, unit_price) "
                        "SELECT 1, min(id), 'x', 1, 1 FROM events")
    assert converted.scalar("SELECT pg_get_serial_sequence('ticket_analytics', 'id')") == 'public.ticket_analytics_id_seq'


def test_trap4_serial_sequence_moves_so_the_old_table_drops_without_cascade(converted):
    assert converted.scalar("SELECT pg_get_serial_sequence('event_impressions', 'id')") == 'public.event_impressions_id_seq'
    assert converted.scalar("SELECT pg_get_serial_sequence('event_impressions_old', 'id')") is None
    converted.query("DROP TABLE event_impressions_old")  # no CASCADE needed
    new_id = converted.scalar("INSERT INTO event_impressions (event_id) SELECT min(id) FROM events RETURNING id")
    assert new_id > 3000


def test_trap5_every_index_survives_with_predicates_and_expressions(converted):
    defs = [r[0] for r in converted.query("SELECT pg_get_indexdef(indexrelid) FROM pg_index "
                                          "WHERE indrelid = 'event_impressions'::regclass")]
    assert any('WHERE (user_id IS NOT NULL)' in d for d in defs)
    assert any("(metadata ->> 'campaign'::text)" in d for d in defs)
    assert any('PRIMARY' in d or 'pkey' in d for d in defs)
    names = set(r[0] for r in converted.query("SELECT indexrelid::regclass::text FROM pg_index "
                                              "WHERE indrelid = 'event_impressions'::regclass"))
    old_names = set(r[0] for r in converted.query("SELECT indexrelid::regclass::text FROM pg_index "
                                                  "WHERE indrelid = 'event_impressions_old'::regclass"))
    assert 'event_impressions_pkey' in names and all(n.endswith('_old') for n in old_names)
    assert converted.scalar("SELECT count(*) FROM pg_partition_tree('event_impressions') t "
                            "JOIN pg_index i ON i.indrelid = t.relid WHERE NOT i.indisvalid") == 0
    pkey = converted.scalar("SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'event_impressions_pkey'")
    assert pkey == 'PRIMARY KEY (id, created_at)'


# -- things that follow the OID (trap 7) -------------------------------------------------------

def test_trap7_views_functions_triggers_and_publications_follow_the_new_table(sample, session_for):
    if sample.major >= 14:
        sample.query("CREATE FUNCTION impressions_total() RETURNS bigint LANGUAGE sql "
                     "BEGIN ATOMIC SELECT count(*) FROM public.event_impressions; END")
    sample.query("CREATE FUNCTION impressions_dynamic() RETURNS bigint LANGUAGE plpgsql AS "
                 "$$ BEGIN RETURN (SELECT count(*) FROM public.event_impressions); END $$")
    session = session_for(sample)
    convert(session, 'event_impressions')
    convert(session, 'ticket_analytics')
    sample.query("INSERT INTO event_impressions (event_id) SELECT min(id) FROM events")
    assert sample.scalar("SELECT impressions_total()") == 3001
    assert sample.scalar("SELECT impressions_dynamic()") == 3001
    assert sample.scalar("SELECT sum(impressions) FROM event_impressions_daily") == 3001
    view_deps = sample.query("SELECT DISTINCT d.refobjid::regclass::text FROM pg_depend d JOIN pg_rewrite r "
                             "ON r.oid = d.objid WHERE r.ev_class = 'event_impressions_daily'::regclass "
                             "AND d.refobjid <> 'event_impressions_daily'::regclass")
    assert view_deps == [('event_impressions',)]
    assert sample.scalar("SELECT reloptions::text FROM pg_class WHERE relname = 'event_impressions_daily'") \
        == '{security_invoker=true}'
    # the BEFORE trigger lower-cases channel on the new table, and is disabled on the retired copy
    channel = sample.scalar("INSERT INTO ticket_analytics (event_id, ticket_type, quantity, unit_price, channel) "
                            "SELECT min(id), 'vip', 1, 1, 'MiXeD' FROM events RETURNING channel")
    assert channel == 'mixed'
    assert sample.scalar("SELECT tgenabled FROM pg_trigger WHERE tgname = 'ticket_analytics_normalize' "
                         "AND tgrelid = 'ticket_analytics_old'::regclass") == 'D'
    # legacy rows written before the trigger existed keep their case (it never fired during the copy)
    assert sample.scalar("SELECT count(*) FROM ticket_analytics WHERE channel <> lower(channel)") == \
        sample.scalar("SELECT count(*) FROM ticket_analytics_old WHERE channel <> lower(channel)") > 0
    pubs = sample.query("SELECT tablename FROM pg_publication_tables WHERE pubname = 'analytics_pub'")
    members = sample.query("SELECT prrelid::regclass::text FROM pg_publication_rel")
    assert ('event_impressions',) in members and ('event_impressions_old',) not in members
    assert pubs  # publication still publishes the table's changes (through the partitions)


# -- coverage and placement (traps 14-17) -----------------------------------------------------

def test_trap14_bounds_are_utc_whatever_the_session_time_zone(converted):
    conn = converted.connect()
    with conn.cursor() as cur:
        cur.execute("SET TimeZone = 'Pacific/Auckland'")
        cur.execute("INSERT INTO event_impressions (event_id, created_at) SELECT (SELECT min(id) FROM events), t FROM "
                    "unnest(ARRAY['2025-03-01 00:00:00+00', '2025-02-28 23:59:59+00']::timestamptz[]) t")
        cur.execute("SELECT tableoid::regclass::text, created_at AT TIME ZONE 'UTC' FROM event_impressions "
                    "WHERE created_at IN ('2025-03-01 00:00:00+00', '2025-02-28 23:59:59+00') ORDER BY 2")
        placed = cur.fetchall()
    conn.close()
    assert [p[0] for p in placed[-2:]] == ['event_impressions_p202502', 'event_impressions_p202503']


def test_trap15_no_default_partition_and_history_shares_one_partition(converted):
    assert converted.scalar("SELECT partdefid FROM pg_partitioned_table WHERE partrelid = 'event_impressions'::regclass") == 0
    bound = converted.scalar("SELECT pg_get_expr(relpartbound, oid) FROM pg_class WHERE relname = "
                             "'event_impressions_phistory'")
    assert bound.startswith('FOR VALUES FROM (MINVALUE)')
    first_month = bound.split("TO ('")[1].split("'")[0]
    history = converted.scalar("SELECT count(*) FROM event_impressions_phistory")
    assert history == converted.scalar("SELECT count(*) FROM event_impressions_old WHERE created_at < %s",
                                       (first_month,))
    ancient = converted.scalar("SELECT count(*) FROM event_impressions_old WHERE created_at < now() - interval '3 years'")
    assert ancient == sample_db.N_ANCIENT and history >= ancient
    # one partition for years of sparse history instead of one per month
    assert converted.scalar("SELECT count(*) FROM pg_partition_tree('event_impressions') WHERE isleaf") < 40


def test_trap16_17_parent_is_analyzed_and_now_based_ranges_prune(converted):
    assert converted.scalar("SELECT count(*) FROM pg_statistic WHERE starelid = 'event_impressions'::regclass "
                            "AND stainherit") > 0
    plan = '\n'.join(r[0] for r in converted.query(
        "EXPLAIN SELECT count(*) FROM event_impressions WHERE created_at > now() - interval '6 months'"))
    assert 'Subplans Removed' in plan
