# -*- coding: utf-8 -*-
"""Connections, sessions and errors shared by every pgpart module.

Connection options follow community.postgresql (login_host, login_user, login_password, ...)
plus `database_url`, a libpq URL or key=value conninfo that defaults to $DATABASE_URL.
A Session wraps one psycopg2 connection in autocommit mode: reads go through fetch()/one()/
scalar(), changes through run(), which records the SQL text in `queries` (the list every
module returns).  Secrets never reach messages: every error text passes through redact().
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import re
import threading
import time
from contextlib import contextmanager

try:
    import psycopg2
    import psycopg2.errors
    import psycopg2.extensions
    import psycopg2.extras
    from psycopg2 import sql
    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
except ImportError as exc:  # pragma: no cover - exercised only without the driver
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = exc
    psycopg2 = sql = None

from ansible.module_utils.basic import env_fallback

# Supabase's transaction pooler (Supavisor) listens on 6543; PgBouncer's usual port is 6432.
TRANSACTION_POOLER_PORT = 6543
# Advisory-lock namespace of this project ('pgpt'): key 1 of pg_advisory_lock(int4, int4).
LOCK_NAMESPACE = 0x70677074
# Steps that take exclusive locks on a live table wait at most lock_timeout per attempt: a
# waiting lock request makes every later writer wait too, so keep it short and retry (with
# backoff and jitter) instead; a few hundred attempts' worth of waiting outlasts an autovacuum.
LOCK_DEFAULTS = {'lock_timeout_ms': 300, 'lock_attempts': 60, 'max_backoff_ms': 10000}


class PgpartError(Exception):
    """An error the operator can act on: what happened, why, and what to do.

    `details` become extra keys of the module result (plain JSON types only).
    """

    def __init__(self, message, **details):
        super(PgpartError, self).__init__(message)
        self.details = details


def connection_argument_spec():
    """Options shared by every module that talks to PostgreSQL."""
    return dict(
        database_url=dict(type='str', no_log=True, aliases=['conninfo'],
                          fallback=(env_fallback, ['DATABASE_URL'])),
        login_host=dict(type='str'),
        login_port=dict(type='int'),
        login_user=dict(type='str'),
        login_password=dict(type='str', no_log=True),
        login_db=dict(type='str'),
        login_unix_socket=dict(type='str'),
        ssl_mode=dict(type='str', choices=['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']),
        ca_cert=dict(type='path'),
        connect_params=dict(type='dict', default={}),
        connect_timeout=dict(type='int', default=10),
    )


_OPTION_TO_LIBPQ = (
    ('login_host', 'host'), ('login_port', 'port'), ('login_user', 'user'),
    ('login_password', 'password'), ('login_db', 'dbname'), ('login_unix_socket', 'host'),
    ('ssl_mode', 'sslmode'), ('ca_cert', 'sslrootcert'),
)


def secrets_of(params):
    """Every secret string the parameters carry, so messages can be scrubbed of them."""
    found = [params.get('login_password')]
    url = params.get('database_url') or ''
    match = re.search(r'://[^:/@\s]*:([^@\s]+)@', url)
    if match:
        found.append(match.group(1))
    match = re.search(r"password\s*=\s*('(?:[^'\\]|\\.)*'|\S+)", url)
    if match:
        found.append(match.group(1).strip("'"))
    found.append((params.get('connect_params') or {}).get('password'))
    if url:
        found.append(url)
    return [s for s in found if s]


def redact(text, secrets):
    text = str(text)
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, '********')
    # A URL that reached a message by another route keeps its user but not its password.
    return re.sub(r'(://[^:/@\s]*):[^@\s]+@', r'\1:********@', text)


def describe_target(dsn_params):
    """user@host:port/dbname, for messages; never the password."""
    host = dsn_params.get('host') or 'local socket'
    return '%s@%s:%s/%s' % (dsn_params.get('user') or '(default user)', host,
                           dsn_params.get('port') or 5432, dsn_params.get('dbname') or '(default db)')


def build_dsn(params, application_name):
    kwargs = dict(params.get('connect_params') or {})
    for option, keyword in _OPTION_TO_LIBPQ:
        if params.get(option) is not None:
            kwargs[keyword] = params[option]
    kwargs.setdefault('connect_timeout', params.get('connect_timeout') or 10)
    kwargs.setdefault('application_name', application_name)
    return psycopg2.extensions.make_dsn(params.get('database_url') or '', **kwargs)


def connect(params, application_name='pgpart', check_mode=False):
    """Open a Session or raise PgpartError with a message free of secrets."""
    secrets = secrets_of(params)
    try:
        dsn = build_dsn(params, application_name)
        dsn_params = psycopg2.extensions.parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        raise PgpartError(redact('the connection string is not valid libpq syntax: %s' % exc, secrets))
    target = describe_target(dsn_params)
    port = int(dsn_params.get('port') or 5432)
    if port == TRANSACTION_POOLER_PORT:
        raise PgpartError(transaction_pooler_message(target))
    session = open_session(dsn, target, secrets, check_mode)
    refuse_transaction_pooler(session, dsn, port)
    return session


def open_session(dsn, target, secrets, check_mode=False):
    try:
        conn = psycopg2.connect(dsn)
    except psycopg2.Error as exc:
        raise PgpartError(redact('cannot connect to %s: %s' % (target, str(exc).strip()), secrets))
    conn.autocommit = True
    # Catalog deparsing (pg_get_expr, pg_get_viewdef, ...) then qualifies every user object,
    # so definitions stay valid whatever the table is renamed to or whoever runs them.
    # UTC makes timestamptz text (partition bounds, row hashes) the same in every session.
    # Verification and ANALYZE scan whole tables: a role's or database's statement_timeout
    # (Supabase: 2 min) must not kill them.  Backfill chunks set their own statement_timeout
    # per transaction; lock waits are bounded by lock_timeout wherever a lock is taken.
    with conn.cursor() as cur:
        cur.execute("SET search_path = ''")
        cur.execute("SET TimeZone = 'UTC'")
        cur.execute("SET statement_timeout = 0")
        cur.execute("SET idle_in_transaction_session_timeout = 0")
    return Session(conn, target, secrets, check_mode, dsn)


def transaction_pooler_message(target):
    return ('%s looks like a transaction pooler (Supabase Supavisor on port 6543, or PgBouncer in '
            'transaction mode). pgpart needs session state (SET, advisory locks, long transactions): '
            'use the direct connection (port 5432 on db.<project>.supabase.co) or a session-mode pooler.'
            % target)


def refuse_transaction_pooler(session, dsn, port):
    """Refuse a connection whose statements may run on different server backends.

    Direct connections report the port we dialled.  Behind a proxy we probe: two clients
    each set a custom setting; in transaction pooling one client's statement can run on the
    backend the other configured, and reads back the other's value.
    """
    server_port = session.scalar('SELECT inet_server_port()')
    if server_port is None or server_port == port:
        return
    other = psycopg2.connect(dsn)
    other.autocommit = True
    try:
        for attempt in range(3):
            for conn, value in ((session.conn, 'a%d' % attempt), (other, 'b%d' % attempt)):
                with conn.cursor() as cur:
                    cur.execute("SELECT set_config('pgpart.pooler_probe', %s, false)", (value,))
            with session.conn.cursor() as cur:
                cur.execute("SELECT current_setting('pgpart.pooler_probe', true)")
                seen = cur.fetchone()[0]
            if seen != 'a%d' % attempt:
                session.close()
                raise PgpartError(transaction_pooler_message(session.target))
    finally:
        other.close()


class Session:
    """One connection, the SQL it changed things with, and check-mode awareness."""

    def __init__(self, conn, target, secrets, check_mode=False, dsn=None):
        self.conn = conn
        self.dsn = dsn
        self.target = target
        self.secrets = secrets
        self.check_mode = check_mode
        self.queries = []
        self.server_version_num = conn.server_version
        self.major = self.server_version_num // 10000

    def sibling(self):
        """Another connection to the same database (parallel workers, a second snapshot holder)."""
        return open_session(self.dsn, self.target, self.secrets, self.check_mode)

    # -- reading ---------------------------------------------------------------------------
    def fetch(self, query, params=None):
        """All rows as dicts."""
        with self.conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(query, params)
            return [dict(row) for row in cur.fetchall()] if cur.description else []

    def one(self, query, params=None):
        rows = self.fetch(query, params)
        return rows[0] if rows else None

    def scalar(self, query, params=None):
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone()
            return row[0] if row else None

    # -- changing --------------------------------------------------------------------------
    def text(self, query, params=None):
        """The exact SQL text psycopg2 sends for a query and its parameters."""
        with self.conn.cursor() as cur:
            return cur.mogrify(query, params).decode()

    def run(self, query, params=None, record=True):
        """Execute a statement that changes something, and record it in `queries`.

        record=False for pgpart's own bookkeeping (journal rows), which is not what a
        reader of `queries` wants to review.
        """
        if record:
            self.queries.append(self.text(query, params))
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return cur.rowcount

    def plan(self, query, params=None):
        """Record a statement that check mode would run, without running it."""
        self.queries.append(self.text(query, params))

    @contextmanager
    def transaction(self, isolation=None, readonly=False, settings=None, snapshot=None):
        """BEGIN ... COMMIT, rolled back on any exception.

        settings: SET LOCAL values.  snapshot: an exported snapshot to share (REPEATABLE READ).
        """
        begin = 'BEGIN'
        if isolation:
            begin += ' ISOLATION LEVEL ' + {'repeatable read': 'REPEATABLE READ',
                                            'serializable': 'SERIALIZABLE'}[isolation]
        if readonly:
            begin += ' READ ONLY'
        with self.conn.cursor() as cur:
            cur.execute(begin)
            if snapshot:
                cur.execute('SET TRANSACTION SNAPSHOT %s', (snapshot,))
            for name, value in (settings or {}).items():
                cur.execute('SELECT set_config(%s, %s, true)', (name, str(value)))
        try:
            yield self
        except BaseException:
            if not self.conn.closed:
                try:
                    self._exec('ROLLBACK')
                except psycopg2.Error:
                    pass  # the connection is gone; the server rolls back on its own
            raise
        self._exec('COMMIT')

    def _exec(self, statement):
        with self.conn.cursor() as cur:
            cur.execute(statement)

    # -- locks -----------------------------------------------------------------------------
    def try_table_lock(self, schema, table):
        """Session advisory lock so two pgpart runs never work on one table at once."""
        return self.scalar('SELECT pg_try_advisory_lock(%s, hashtext(%s))',
                           (LOCK_NAMESPACE, qualified_text(schema, table)))

    def table_lock_holder(self, schema, table):
        """pid and start of the run holding the table's pgpart lock, or None."""
        return self.one(
            "SELECT l.pid, a.application_name, a.backend_start::text AS since FROM pg_locks l "
            "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.classid = %s::oid "
            "AND l.objid = hashtext(%s)::oid AND l.objsubid = 2 AND l.granted",
            (LOCK_NAMESPACE, qualified_text(schema, table)))

    def release_table_lock(self, schema, table):
        self.scalar('SELECT pg_advisory_unlock(%s, hashtext(%s))',
                    (LOCK_NAMESPACE, qualified_text(schema, table)))

    @contextmanager
    def table_lock(self, schema, table):
        if not self.try_table_lock(schema, table):
            holder = self.table_lock_holder(schema, table) or {}
            raise PgpartError(
                'another pgpart run is working on %s (backend pid %s, connected since %s); '
                'wait for it to finish or stop it, then re-run' % (
                    qualified_text(schema, table), holder.get('pid'), holder.get('since')))
        try:
            yield
        finally:
            if not self.conn.closed:
                self.release_table_lock(schema, table)

    def close(self):
        if not self.conn.closed:
            self.conn.close()


def on_siblings(session, items, workers, do, prepare=None):
    """Call do(worker, item) for every item, on up to `workers` sibling connections at once.

    Threads suffice: psycopg2 releases the GIL while the server works.  Items are taken in
    order; the first failure stops every worker from taking another and is raised once all
    have stopped (what finished stays done: callers keep their progress resumable).  The SQL
    the workers recorded joins session.queries.
    """
    todo, lock, errors, recorded = list(items), threading.Lock(), [], []

    def take():
        with lock:
            return (False, None) if errors or not todo else (True, todo.pop(0))

    def work():
        try:
            worker = session.sibling()
        except Exception as exc:  # noqa: BLE001 - raised in the caller's thread below
            with lock:
                errors.append(exc)
            return
        try:
            if prepare:
                prepare(worker)
            more, item = take()
            while more:
                do(worker, item)
                more, item = take()
        except Exception as exc:  # noqa: BLE001 - raised in the caller's thread below
            with lock:
                errors.append(exc)
        finally:
            recorded.append(worker.queries)
            worker.close()
    threads = [threading.Thread(target=work, name='pgpart-worker-%d' % i)
               for i in range(min(max(1, workers), len(todo)))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for queries in recorded:
        session.queries.extend(queries)
    if errors:
        raise errors[0]


def qualified_text(schema, table):
    """schema.table as text for messages and lock keys (never spliced into SQL)."""
    return '%s.%s' % (schema, table)


def ident(*names):
    """A possibly qualified identifier: ident('public', 't') -> "public"."t"."""
    return sql.Identifier(*names)


def retry_on_lock_timeout(session, work, lock_timeout_ms, attempts, max_backoff_ms=5000,
                          on_retry=None, sleep=time.sleep, jitter=None, relations=None):
    """Run `work()` inside a transaction with SET LOCAL lock_timeout, retrying on lock timeouts.

    Backoff doubles from lock_timeout up to max_backoff_ms, with random jitter so several
    runs (or a run and an application retry) do not collide in lockstep.  Returns
    (work()'s result, attempts used, seconds the successful transaction took: from BEGIN to
    COMMIT, an upper bound of how long its locks were held); raises PgpartError when every
    attempt timed out.
    """
    import random
    jitter = jitter or random.random
    delay = lock_timeout_ms
    for attempt in range(1, attempts + 1):
        started = time.time()
        try:
            with session.transaction(settings={'lock_timeout': '%dms' % lock_timeout_ms}):
                result = work()
            return result, attempt, time.time() - started
        except psycopg2.errors.LockNotAvailable:
            if attempt == attempts:
                break
            blockers = lock_blockers(session, relations)
            if on_retry:
                on_retry(attempt, blockers)
            sleep((delay * (0.5 + jitter())) / 1000.0)
            delay = min(delay * 2, max_backoff_ms)
    blockers = lock_blockers(session, relations)
    dumps = [b for b in blockers if b['application_name'] in ('pg_dump', 'pgpart_backup')]
    raise PgpartError(
        'could not take the locks needed within lock_timeout=%dms after %d attempts; %s. Nothing was changed '
        'by this step; re-run when they have finished (see blockers).' % (
            lock_timeout_ms, attempts,
            'a backup (pg_dump, pid %s) is running and holds its locks until it ends' % dumps[0]['pid'] if dumps else
            'long-running transactions or queries hold them'), blockers=blockers)


def lock_blockers(session, relations=None):
    """Other sessions in a transaction for more than a second; with relations ((schema, name)
    pairs), only those holding a lock on one of them."""
    names = ['%s.%s' % (quote_ident_text(s), quote_ident_text(n)) for s, n in relations] if relations else None
    return session.fetch(
        "SELECT a.pid, a.usename::text AS user, a.application_name, a.state, "
        "round(extract(epoch FROM now() - a.xact_start)::numeric, 1)::float AS xact_seconds, "
        "left(a.query, 200) AS query FROM pg_stat_activity a "
        "WHERE a.xact_start IS NOT NULL AND a.pid <> pg_backend_pid() AND a.datname = current_database() "
        "AND now() - a.xact_start > interval '1 second' AND (%(names)s::text[] IS NULL OR EXISTS ("
        "  SELECT 1 FROM pg_locks l WHERE l.pid = a.pid AND l.granted "
        "  AND l.relation = ANY (SELECT to_regclass(n) FROM unnest(%(names)s::text[]) n))) "
        "ORDER BY a.xact_start LIMIT 10", {'names': names})


def quote_ident_text(name):
    """An identifier quoted as text for to_regclass() (a value, never spliced into SQL)."""
    return '"%s"' % name.replace('"', '""')
