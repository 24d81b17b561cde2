# -*- coding: utf-8 -*-
"""Critical queries: median timings and partition pruning, strictly read-only.

The statements are the user's (the deployment's "test critical queries" step).  They are
never allowed to change anything, by three independent layers:

  * one statement per query, and it must be a read (SELECT, WITH, VALUES, TABLE): a lexer
    that knows quotes, dollar quotes and comments refuses `SELECT 1; COMMIT; DELETE ...`
    before anything is sent (psycopg2 uses the simple query protocol, which would run
    every statement of such a text, the ones after COMMIT outside our transaction);
  * every run happens in its own `BEGIN ... READ ONLY` transaction with its own
    `statement_timeout` (SET LOCAL), so a writing function, a data-modifying CTE or
    nextval() fails;
  * every transaction ends in ROLLBACK, never COMMIT.

The session's settings are reset (RESET ALL) before the first query, so the queries see the
role's and database's search_path, TimeZone and so on, as the application does.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import decimal
import json
import statistics
import time

from ansible.module_utils.pgpart_db import PgpartError, psycopg2

READ_KEYWORDS = ('select', 'with', 'values', 'table')


# -- the lexer ---------------------------------------------------------------------------------
def split_statements(text, standard_conforming_strings=True):
    """The statements of an SQL text, split on top-level semicolons.

    Knows 'strings' (with '' and, for E'' or without standard_conforming_strings, backslash
    escapes), "identifiers", $tag$ dollar quotes $tag$, -- line comments and nested /* */
    comments.  Statements that hold only whitespace and comments are dropped.
    Raises ValueError on an unterminated quote or comment.
    """
    statements, start, i, n = [], 0, 0, len(text)
    meaningful = False  # the current statement holds something besides whitespace and comments
    while i < n:
        c = text[i]
        if c == '-' and text.startswith('--', i):
            end = text.find('\n', i)
            i = n if end < 0 else end + 1
            continue
        if c == '/' and text.startswith('/*', i):
            i = _skip_block_comment(text, i)
            continue
        if c.isspace():
            i += 1
            continue
        if c == ';':
            if meaningful:
                statements.append(text[start:i].strip())
            start, meaningful, i = i + 1, False, i + 1
            continue
        meaningful = True
        if c == "'":
            prefix_e = i > 0 and text[i - 1] in 'eE' and not _ident_char(text, i - 2)
            escape = (not standard_conforming_strings) or prefix_e
            i = _skip_string(text, i, "'", backslash=escape)
        elif c == '"':
            i = _skip_string(text, i, '"', backslash=False)
        elif c == '$' and not (i > 0 and _ident_char(text, i - 1)):
            tag = _dollar_tag(text, i)
            if tag:
                end = text.find(tag, i + len(tag))
                if end < 0:
                    raise ValueError('unterminated dollar-quoted string %s' % tag)
                i = end + len(tag)
            else:
                i += 1
        else:
            i += 1
    if meaningful:
        statements.append(text[start:].strip())
    return statements


def _ident_char(text, i):
    return 0 <= i < len(text) and (text[i].isalnum() or text[i] in '_$')


def _skip_block_comment(text, i):
    depth, i = 1, i + 2
    while depth:
        if i >= len(text):
            raise ValueError('unterminated /* comment')
        if text.startswith('/*', i):
            depth, i = depth + 1, i + 2
        elif text.startswith('*/', i):
            depth, i = depth - 1, i + 2
        else:
            i += 1
    return i


def _skip_string(text, i, quote, backslash):
    i += 1
    while i < len(text):
        c = text[i]
        if backslash and c == '\\':
            i += 2
            continue
        if c == quote:
            if i + 1 < len(text) and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    raise ValueError('unterminated %s quote' % quote)


def _dollar_tag(text, i):
    """'$tag$' or '$$' starting at i, or None ($1 and a lone $ are not dollar quotes)."""
    j = i + 1
    if j < len(text) and (text[j].isdigit()):
        return None
    while j < len(text) and (text[j].isalnum() or text[j] == '_'):
        j += 1
    if j < len(text) and text[j] == '$':
        return text[i:j + 1]
    return None


def _strip_leading_comments(statement):
    s = statement
    while True:
        s = s.lstrip()
        if s.startswith('--'):
            end = s.find('\n')
            s = '' if end < 0 else s[end + 1:]
        elif s.startswith('/*'):
            s = s[_skip_block_comment(s, 0):]
        else:
            return s


def read_statement(text, standard_conforming_strings=True):
    """The one read statement of `text` (trailing semicolon removed), or PgpartError saying why not."""
    try:
        statements = split_statements(text, standard_conforming_strings)
    except ValueError as exc:
        raise PgpartError('the query cannot be read: %s' % exc)
    if not statements:
        raise PgpartError('the query is empty')
    if len(statements) > 1:
        raise PgpartError('the query holds %d statements; exactly one is allowed (a second statement could '
                          'end the read-only transaction and write)' % len(statements))
    body = _strip_leading_comments(statements[0])
    first = body.lstrip('(').split(None, 1)[0].lower() if body.lstrip('(') else ''
    first = ''.join(ch for ch in first if ch.isalpha())
    if first not in READ_KEYWORDS:
        raise PgpartError('only reads are accepted as critical queries (SELECT, WITH, VALUES or TABLE), not %s'
                          % (first.upper() or 'this statement'))
    return statements[0]


# -- running -----------------------------------------------------------------------------------
def plain(value, limit=200):
    """A JSON-friendly copy of one result value."""
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return '\\x' + bytes(value).hex()[:limit]
    if isinstance(value, (list, tuple)):
        return [plain(v, limit) for v in value]
    if isinstance(value, dict):
        return dict((str(k), plain(v, limit)) for k, v in value.items())
    text = str(value)
    return text if len(text) <= limit else text[:limit] + '...'


class ReadOnly:
    """One `BEGIN READ ONLY` transaction with its own statement_timeout, always rolled back."""

    def __init__(self, conn, statement_timeout_ms):
        self.conn, self.timeout = conn, statement_timeout_ms

    def __enter__(self):
        cur = self.conn.cursor()
        cur.execute('BEGIN TRANSACTION ISOLATION LEVEL READ COMMITTED READ ONLY')
        cur.execute("SELECT set_config('statement_timeout', %s, true)", ('%dms' % self.timeout,))
        return cur

    def __exit__(self, *exc):
        if not self.conn.closed:
            try:
                with self.conn.cursor() as cur:
                    cur.execute('ROLLBACK')
            except psycopg2.Error:
                pass  # the connection broke: the server rolls back on its own
        return False


def error_text(exc):
    if isinstance(exc, psycopg2.Error):
        code = getattr(exc, 'pgcode', None)
        first = (getattr(exc, 'pgerror', None) or str(exc)).strip().splitlines()
        text = first[0] if first else str(exc)
        return '%s%s' % (text, ' (SQLSTATE %s)' % code if code else '')
    return str(exc)


def time_query(conn, statement, runs, warmup, statement_timeout_ms, max_rows):
    """Run a statement warmup + runs times; (samples_ms, row_count, first rows)."""
    samples, rows, sample = [], None, []
    for attempt in range(warmup + runs):
        with ReadOnly(conn, statement_timeout_ms) as cur:
            started = time.perf_counter()
            cur.execute(statement)
            fetched = cur.fetchall() if cur.description else []
            elapsed = (time.perf_counter() - started) * 1000.0
        if attempt >= warmup:
            samples.append(round(elapsed, 3))
        rows = len(fetched)
        sample = [plain(list(r)) for r in fetched[:max_rows]] if max_rows else []
    return samples, rows, sample


def plan_relations(node, found, removed):
    """Walk an EXPLAIN (FORMAT JSON) plan: scanned relations and 'Subplans Removed'."""
    if 'Relation Name' in node:
        found.append((node.get('Schema'), node['Relation Name']))
    removed[0] += int(node.get('Subplans Removed') or 0)
    for child in node.get('Plans') or []:
        plan_relations(child, found, removed)


def pruning(conn, statement, statement_timeout_ms):
    """EXPLAIN the statement (executor start-up pruning included) and compare, for every
    partitioned table it reads, the partitions scanned with all its leaf partitions."""
    with ReadOnly(conn, statement_timeout_ms) as cur:
        cur.execute('EXPLAIN (VERBOSE, FORMAT JSON) ' + statement)
        document = cur.fetchone()[0]
        if isinstance(document, str):
            document = json.loads(document)
        found, removed = [], [0]
        for entry in document:
            plan_relations(entry['Plan'], found, removed)
        roots = {}
        for schema, name in sorted(set(found), key=lambda r: (r[0] or '', r[1])):
            cur.execute(
                "SELECT c.oid::int8, r.oid::int8, "
                "CASE WHEN r.oid IS NOT NULL THEN format('%%I.%%I', rn.nspname, r.relname) END "
                "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "LEFT JOIN pg_class r ON r.oid = pg_partition_root(c.oid) "
                "LEFT JOIN pg_namespace rn ON rn.oid = r.relnamespace "
                "WHERE c.relname = %s AND (%s::text IS NULL OR n.nspname = %s) "
                "AND c.relkind IN ('r', 'p', 'f', 'm')", (name, schema, schema))
            for _oid, root_oid, root_name in cur.fetchall():
                if root_oid is not None:
                    roots.setdefault(root_oid, {'table': root_name, 'scanned': set()})['scanned'].add((schema, name))
        tables = []
        for root_oid, info in sorted(roots.items(), key=lambda kv: kv[1]['table']):
            cur.execute('SELECT count(*) FROM pg_partition_tree(%s::oid::regclass) WHERE isleaf', (root_oid,))
            total = cur.fetchone()[0]
            tables.append({'table': info['table'], 'partitions_scanned': len(info['scanned']),
                           'partitions_total': total})
    prunes = removed[0] > 0 or any(t['partitions_scanned'] < t['partitions_total'] for t in tables)
    return {'prunes': prunes, 'subplans_removed': removed[0], 'partitioned_tables': tables,
            'partitions_scanned': sum(t['partitions_scanned'] for t in tables),
            'partitions_total': sum(t['partitions_total'] for t in tables)}


def run_queries(session, queries, runs=3, warmup=1, statement_timeout_ms=60000, explain=True, max_rows=0):
    """Time every query and look at its plan; never raises for a query's own error (see `error`)."""
    conn = session.conn
    with conn.cursor() as cur:
        cur.execute('RESET ALL')  # the application's settings (search_path, TimeZone), not pgpart's
        cur.execute('SHOW standard_conforming_strings')
        scs = cur.fetchone()[0] == 'on'
    names = [q['name'] for q in queries]
    duplicates = sorted(set(n for n in names if names.count(n) > 1))
    if duplicates:
        raise PgpartError('critical query names must be unique: %s' % ', '.join(duplicates))
    results = []
    for query in queries:
        q_runs = query.get('runs') or runs
        q_timeout = query.get('statement_timeout_ms') or statement_timeout_ms
        entry = {'name': query['name'], 'sql': query['sql'], 'runs': q_runs, 'statement_timeout_ms': q_timeout,
                 'samples_ms': [], 'median_ms': None, 'min_ms': None, 'max_ms': None, 'rows': None, 'result': [],
                 'prunes': None, 'partitions_scanned': None, 'partitions_total': None, 'partitioned_tables': [],
                 'subplans_removed': None, 'error': None, 'plan_error': None}
        results.append(entry)
        try:
            statement = read_statement(query['sql'], scs)
        except PgpartError as exc:
            entry['error'] = str(exc)
            continue
        try:
            samples, rows, sample = time_query(conn, statement, q_runs, warmup, q_timeout, max_rows)
        except psycopg2.Error as exc:
            entry['error'] = error_text(exc)
            if conn.closed:
                raise PgpartError('the connection was lost while running %s: %s' % (query['name'], entry['error']))
            continue
        entry.update(samples_ms=samples, median_ms=round(statistics.median(samples), 3), min_ms=min(samples),
                     max_ms=max(samples), rows=rows, result=sample)
        if explain:
            try:
                entry.update(pruning(conn, statement, q_timeout))
            except psycopg2.Error as exc:
                entry['plan_error'] = error_text(exc)
    return results


def summary_line(entry):
    if entry['error']:
        return '%s: FAILED: %s' % (entry['name'], entry['error'])
    line = '%s: median %.1f ms over %d runs, %d rows' % (entry['name'], entry['median_ms'], entry['runs'],
                                                         entry['rows'])
    if entry['partitioned_tables']:
        line += ', %s (%d of %d partitions scanned)' % ('prunes' if entry['prunes'] else 'does NOT prune',
                                                       entry['partitions_scanned'], entry['partitions_total'])
    elif entry['prunes'] is not None:
        line += ', reads no partitioned table'
    return line
