"""pgpart_queries (read-only timings and pruning, on a real PostgreSQL) and pgpart_window (the
low-traffic window across time zones and midnight, no database)."""
import importlib.util
import json
from pathlib import Path

import pytest

from ansible.module_utils import pgpart_queries as queries
from ansible.module_utils import pgpart_window as window
from ansible.module_utils.pgpart_db import PgpartError
from helpers import build_sample, convert

ROOT = Path(__file__).resolve().parent.parent
DOC_QUERY = "SELECT COUNT(*) FROM event_impressions WHERE created_at > now() - interval '6 months'"


def load_module(name):
    spec = importlib.util.spec_from_file_location(name, str(ROOT / 'library' / ('%s.py' % name)))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_module(name, args, capsys, check_mode=False):
    """Call a module's main() as Ansible would; (exit code, result dict)."""
    from ansible.module_utils.testing import patch_module_args
    module = load_module(name)
    if check_mode:
        args = dict(args, _ansible_check_mode=True)
    capsys.readouterr()
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exit_info:
            module.main()
    out = capsys.readouterr().out
    return exit_info.value.code, json.loads(out.strip().splitlines()[-1])


# == pgpart_queries: the lexer (no database) ======================================================
@pytest.mark.parametrize('text, count', [
    ('SELECT 1', 1),
    ('SELECT 1;', 1),
    ('  SELECT 1 ;  -- done\n', 1),
    ("SELECT ';' AS semicolon", 1),
    ("SELECT 'it''s; fine'", 1),
    ('SELECT 1 AS "a;b"', 1),
    ('SELECT $$;$$, $tag$ ; $$ ; $tag$', 1),
    ('SELECT 1 /* ; /* nested ; */ still ; */', 1),
    ('SELECT 1 -- ; comment\n', 1),
    (r"SELECT E'\';' ", 1),
    ('SELECT a$1 FROM t', 1),
    ('SELECT 1; SELECT 2', 2),
    ('SELECT 1; COMMIT; DELETE FROM t', 3),
    ("SELECT 'x'; DELETE FROM t WHERE a = ';'", 2),
    ('SELECT $$;$$; DROP TABLE t', 2),
    (';;', 0),
    ('-- only a comment', 0),
])
def test_split_statements_knows_quotes_dollar_quotes_and_comments(text, count):
    assert len(queries.split_statements(text)) == count


def test_split_statements_without_standard_conforming_strings_treats_backslash_as_escape():
    text = r"SELECT 'a\'; DELETE FROM t; --'"
    assert len(queries.split_statements(text, standard_conforming_strings=False)) == 1
    assert len(queries.split_statements(text, standard_conforming_strings=True)) == 2


@pytest.mark.parametrize('text', ["SELECT 'open", 'SELECT "open', 'SELECT $x$ open', 'SELECT /* open'])
def test_unterminated_quotes_and_comments_are_refused(text):
    with pytest.raises(PgpartError, match='cannot be read'):
        queries.read_statement(text)


@pytest.mark.parametrize('text', ['SELECT 1', 'WITH x AS (SELECT 1) SELECT * FROM x', 'VALUES (1)', 'TABLE t',
                                  '(SELECT 1)', '/* why */ -- because\n select 1;', 'select\n1'])
def test_reads_are_accepted(text):
    assert queries.read_statement(text)


@pytest.mark.parametrize('text, word', [
    ('INSERT INTO t VALUES (1)', 'INSERT'), ('update t set a = 1', 'UPDATE'), ('DELETE FROM t', 'DELETE'),
    ('COMMIT', 'COMMIT'), ('SET ROLE postgres', 'SET'), ('CALL p()', 'CALL'), ('DO $$ BEGIN END $$', 'DO'),
    ('EXPLAIN ANALYZE DELETE FROM t', 'EXPLAIN'), ('COPY t TO STDOUT', 'COPY'), ('TRUNCATE t', 'TRUNCATE'),
])
def test_statements_that_are_not_reads_are_refused_before_anything_is_sent(text, word):
    with pytest.raises(PgpartError, match='only reads are accepted.*not %s' % word):
        queries.read_statement(text)


def test_a_second_statement_is_refused():
    with pytest.raises(PgpartError, match='holds 3 statements; exactly one is allowed'):
        queries.read_statement('SELECT 1; COMMIT; DELETE FROM events')


# == pgpart_queries on a real database =============================================================
@pytest.fixture
def sample(db):
    return build_sample(db, rows=1500)


def events_fingerprint(db):
    return (db.scalar('SELECT count(*) FROM events'), db.scalar('SELECT count(*) FROM event_impressions'),
            db.scalar("SELECT last_value FROM event_impressions_id_seq"),
            db.scalar("SELECT count(*) FROM pg_class WHERE relname = 'pgpart_written'"))


@pytest.mark.timeout(120)
def test_queries_that_write_fail_and_nothing_is_written(sample, capsys):
    db = sample
    before = events_fingerprint(db)
    db.query("CREATE FUNCTION public.pgpart_writer() RETURNS int LANGUAGE sql AS "
             "'INSERT INTO events (name) SELECT name FROM events LIMIT 1 RETURNING 1'")
    writes = [
        {'name': 'multi', 'sql': 'SELECT 1; COMMIT; DELETE FROM events'},
        {'name': 'commit then create', 'sql': 'SELECT 1; COMMIT; CREATE TABLE pgpart_written (a int)'},
        {'name': 'insert', 'sql': 'INSERT INTO events (name) VALUES (1)'},
        {'name': 'cte', 'sql': 'WITH d AS (DELETE FROM events RETURNING 1) SELECT count(*) FROM d'},
        {'name': 'function', 'sql': 'SELECT public.pgpart_writer()'},
        {'name': 'nextval', 'sql': "SELECT nextval('event_impressions_id_seq')"},
        {'name': 'select into', 'sql': 'SELECT 1 AS a INTO pgpart_written'},
        {'name': 'for update', 'sql': 'SELECT id FROM events FOR UPDATE'},
    ]
    code, result = run_module('pgpart_queries', db.params(critical_queries=writes), capsys)
    assert code == 1 and result['failed'] is True
    assert result['failed_queries'] == [w['name'] for w in writes]
    errors = dict((t['name'], t['error']) for t in result['timings'])
    assert 'exactly one is allowed' in errors['multi'] and 'exactly one is allowed' in errors['commit then create']
    assert 'only reads are accepted' in errors['insert']
    for name in ('cte', 'function', 'nextval', 'select into', 'for update'):
        assert 'read-only transaction' in errors[name], (name, errors[name])
    assert not result.get('changed') and result['queries'] == []
    assert events_fingerprint(db) == before


@pytest.mark.timeout(120)
def test_a_failing_query_is_reported_and_the_others_still_run(sample, capsys):
    qs = [{'name': 'broken', 'sql': 'SELECT * FROM no_such_table'}, {'name': 'count', 'sql': DOC_QUERY}]
    code, result = run_module('pgpart_queries', sample.params(critical_queries=qs), capsys)
    assert code == 1 and 'no_such_table' in result['msg'] and result['failed_queries'] == ['broken']
    assert result['by_name']['count'] > 0
    code, result = run_module('pgpart_queries', sample.params(critical_queries=qs, fail_on_error=False), capsys)
    assert code == 0 and result['failed_queries'] == ['broken']


@pytest.mark.timeout(120)
def test_statement_timeout_is_per_query_and_the_session_goes_on(sample, capsys):
    qs = [{'name': 'slow', 'sql': 'SELECT pg_sleep(2)', 'statement_timeout_ms': 200},
          {'name': 'fast', 'sql': 'SELECT 1'}]
    code, result = run_module('pgpart_queries', sample.params(critical_queries=qs, fail_on_error=False, warmup=0,
                                                              runs=1), capsys)
    assert code == 0
    slow, fast = result['timings']
    assert 'statement timeout' in slow['error'] and slow['statement_timeout_ms'] == 200
    assert fast['error'] is None and fast['result'] == []


@pytest.mark.timeout(180)
def test_timings_results_and_pruning_before_and_after_a_conversion(sample, session_for, capsys):
    db = sample
    qs = [{'name': '6 months', 'sql': DOC_QUERY}, {'name': 'all rows', 'sql': 'SELECT count(*) FROM event_impressions'}]
    code, before = run_module('pgpart_queries', db.params(critical_queries=qs, runs=5, max_rows=1), capsys)
    assert code == 0, before
    six, full = before['timings']
    assert six['runs'] == 5 and len(six['samples_ms']) == 5 and six['min_ms'] <= six['median_ms'] <= six['max_ms']
    assert six['result'] == [[db.scalar(DOC_QUERY)]] and six['rows'] == 1
    assert six['prunes'] is False and six['partitioned_tables'] == []  # a plain table: nothing to prune
    assert before['by_name'] == {'6 months': six['median_ms'], 'all rows': full['median_ms']}

    convert(session_for(db), 'event_impressions')
    code, after = run_module('pgpart_queries', db.params(critical_queries=qs, max_rows=1), capsys)
    assert code == 0, after
    six, full = after['timings']
    total = db.scalar("SELECT count(*) FROM pg_partition_tree('event_impressions') WHERE isleaf")
    assert six['prunes'] is True and six['subplans_removed'] > 0  # pruned at executor start-up (now() is STABLE)
    assert six['partitioned_tables'] == [{'table': 'public.event_impressions', 'partitions_scanned':
                                          six['partitions_scanned'], 'partitions_total': total}]
    assert 0 < six['partitions_scanned'] < total
    assert six['result'] == before['timings'][0]['result']  # same answer from the partitioned table
    assert full['prunes'] is False and full['partitions_scanned'] == full['partitions_total'] == total
    assert 'prunes (' in after['msg'] and 'does NOT prune' in after['msg']


@pytest.mark.timeout(120)
def test_the_queries_see_the_roles_search_path_and_settings(sample, capsys):
    db = sample
    db.query('CREATE SCHEMA analytics')
    db.query('CREATE TABLE analytics.only_here (x int)')
    db.query('INSERT INTO analytics.only_here VALUES (7)')
    db.query('ALTER DATABASE "%s" SET search_path = analytics, public' % db.name)
    qs = [{'name': 'unqualified', 'sql': 'SELECT x FROM only_here'},
          {'name': 'timeout', 'sql': "SELECT current_setting('statement_timeout')"}]
    code, result = run_module('pgpart_queries', db.params(critical_queries=qs, max_rows=1, statement_timeout_ms=4321),
                              capsys)
    assert code == 0, result
    assert result['timings'][0]['result'] == [[7]]
    assert result['timings'][1]['result'] == [['4321ms']]


@pytest.mark.timeout(60)
def test_queries_module_refuses_duplicate_names_and_needs_no_secret_in_results(sample, capsys):
    code, result = run_module('pgpart_queries', sample.params(critical_queries=[{'name': 'a', 'sql': 'SELECT 1'},
                                                                                {'name': 'a', 'sql': 'SELECT 2'}]),
                              capsys)
    assert code == 1 and 'must be unique: a' in result['msg']
    password = __import__('psycopg2').extensions.parse_dsn(sample.url)['password']
    code, result = run_module('pgpart_queries', sample.params(critical_queries=[{'name': 'a', 'sql': 'SELECT 1'}]),
                              capsys, check_mode=True)
    assert code == 0 and result['timings'][0]['result'] == []
    assert password not in json.dumps(result)


# == pgpart_window (no database) ==================================================================
WEEKEND = {'days': ['sat', 'sun'], 'start': '02:00', 'end': '05:00', 'timezone': 'UTC'}


def judge(win, now, **kwargs):
    return window.evaluate(win, now=now, **kwargs)


def test_inside_and_outside_a_simple_window():
    inside = judge(WEEKEND, '2026-11-28T03:00:00Z')  # Saturday
    assert inside['inside'] and inside['allowed'] and inside['minutes_left'] == 120
    assert inside['closes_at'] == '2026-11-28T05:00:00+00:00'
    assert judge(WEEKEND, '2026-11-29T02:00:00Z')['inside']  # Sunday, first minute
    assert not judge(WEEKEND, '2026-11-29T05:00:00Z')['inside']  # the end is exclusive
    outside = judge(WEEKEND, '2026-11-25T19:00:00Z')  # Wednesday
    assert not outside['inside'] and not outside['allowed']
    assert outside['opens_at'] == '2026-11-28T02:00:00+00:00' and outside['minutes_until_open'] == 3 * 1440 - 17 * 60
    assert 'outside the low-traffic window (sat, sun 02:00-05:00 UTC)' in outside['msg']


def test_window_in_another_time_zone_with_daylight_saving_time():
    berlin = dict(WEEKEND, timezone='Europe/Berlin')
    assert judge(berlin, '2026-11-28T01:30:00Z')['inside']  # 02:30 CET (UTC+1)
    assert not judge(berlin, '2026-11-28T04:30:00Z')['inside']  # 05:30 CET
    assert not judge(berlin, '2026-07-04T03:30:00Z')['inside']  # 05:30 CEST (UTC+2)
    summer = judge(berlin, '2026-07-04T00:30:00Z')  # 02:30 CEST
    assert summer['inside'] and summer['closes_at'] == '2026-07-04T05:00:00+02:00'
    assert summer['now'].startswith('2026-07-04T02:30:00+02:00')


def test_window_starting_on_a_day_that_is_still_the_previous_day_in_utc():
    tokyo = {'days': ['sun'], 'start': '01:00', 'end': '03:00', 'timezone': 'Asia/Tokyo'}
    result = judge(tokyo, '2026-11-28T16:30:00Z')  # Saturday in UTC, Sunday 01:30 in Tokyo
    assert result['inside'] and result['closes_at'] == '2026-11-29T03:00:00+09:00'
    assert not judge(tokyo, '2026-11-29T16:30:00Z')['inside']  # Monday 01:30 in Tokyo


def test_a_window_that_crosses_midnight():
    friday_night = {'days': ['fri'], 'start': '22:00', 'end': '06:00', 'timezone': 'America/New_York'}
    evening = judge(friday_night, '2026-01-03T04:30:00Z')  # Friday 23:30 EST
    assert evening['inside'] and evening['closes_at'] == '2026-01-03T06:00:00-05:00'
    assert judge(friday_night, '2026-01-03T10:30:00Z')['inside']  # Saturday 05:30: still Friday's window
    later = judge(friday_night, '2026-01-03T11:30:00Z')  # Saturday 06:30
    assert not later['inside'] and later['opens_at'] == '2026-01-09T22:00:00-05:00'
    assert not judge(friday_night, '2026-01-04T04:30:00Z')['inside']  # Saturday 23:30: not a window day
    assert not judge(friday_night, '2026-01-02T04:30:00Z')['inside']  # Thursday 23:30
    assert 'ends the next day' in evening['description']


def test_full_day_windows_and_every_day_windows():
    all_saturday = {'days': ['saturday'], 'start': '00:00', 'end': '24:00'}
    assert judge(all_saturday, '2026-11-28T23:59:00Z')['inside']
    assert not judge(all_saturday, '2026-11-29T00:00:00Z')['inside']
    day_long = {'days': ['sat'], 'start': '12:00', 'end': '12:00'}  # 24 hours from Saturday noon
    assert judge(day_long, '2026-11-29T11:59:00Z')['inside'] and not judge(day_long, '2026-11-29T12:00:00Z')['inside']
    nightly = {'start': '01:00', 'end': '04:00'}  # no days: every day
    assert all(judge(nightly, '2026-11-%02dT02:00:00Z' % d)['inside'] for d in range(23, 30))


def test_no_window_allows_any_time():
    for win in (None, {}):
        result = judge(win, '2026-11-25T12:00:00Z')
        assert result['inside'] and result['allowed'] and result['window'] is None


def test_override_and_time_left():
    ignored = judge(WEEKEND, '2026-11-25T19:00:00Z', ignore=True)
    assert ignored['allowed'] and ignored['ignored'] and not ignored['inside']
    assert 'overridden' in ignored['msg']
    short = judge(WEEKEND, '2026-11-28T04:50:00Z', min_minutes_left=30)
    assert short['inside'] and not short['allowed'] and 'closes at' in short['msg']
    assert judge(WEEKEND, '2026-11-28T04:00:00Z', min_minutes_left=30)['allowed']


@pytest.mark.parametrize('win, message', [
    ({'days': ['caturday'], 'start': '01:00', 'end': '02:00'}, 'unknown day'),
    ({'start': '25:00', 'end': '02:00'}, 'start must be a time'),
    ({'start': '01:00', 'end': '2am'}, 'end must be a time'),
    ({'start': '24:00', 'end': '02:00'}, 'between 00:00 and 23:59'),
    ({'start': '01:00'}, 'needs end'),
    ({'start': '01:00', 'end': '02:00', 'timezone': 'Mars/Olympus'}, 'unknown time zone'),
    ({'start': '01:00', 'end': '02:00', 'tz': 'UTC'}, 'unknown key'),
])
def test_invalid_windows_are_explained(win, message):
    with pytest.raises(window.WindowError, match=message):
        window.evaluate(win, now='2026-11-25T12:00:00Z')


def test_now_needs_an_offset():
    with pytest.raises(window.WindowError, match='needs a UTC offset'):
        window.evaluate(WEEKEND, now='2026-11-25T12:00:00')


def test_window_module_fails_outside_reports_inside_and_honours_the_override(capsys):
    code, result = run_module('pgpart_window', {'window': WEEKEND, 'now': '2026-11-25T19:00:00Z'}, capsys)
    assert code == 1 and result['failed'] and result['inside'] is False
    assert 'pgpart_ignore_window=true' in result['msg'] and result['opens_at'] == '2026-11-28T02:00:00+00:00'
    code, result = run_module('pgpart_window', {'window': WEEKEND, 'now': '2026-11-28T03:00:00Z'}, capsys)
    assert code == 0 and result['inside'] and result['changed'] is False and result['queries'] == []
    code, result = run_module('pgpart_window', {'window': WEEKEND, 'now': '2026-11-25T19:00:00Z', 'ignore': True},
                              capsys)
    assert code == 0 and result['ignored'] is True
    assert 'overridden' in json.dumps(result.get('warnings'))  # a warning (structured in ansible-core 2.19)
    code, result = run_module('pgpart_window', {'window': WEEKEND, 'now': '2026-11-25T19:00:00Z',
                                                'fail_outside': False}, capsys, check_mode=True)
    assert code == 0 and result['allowed'] is False
    code, result = run_module('pgpart_window', {'window': {'start': 'noon', 'end': '01:00'}}, capsys)
    assert code == 1 and 'invalid low-traffic window' in result['msg']
