#!/usr/bin/env python3
"""Build the sample database described in the partitioning decision document.

Used by the test suite, the demo and the benchmarks.  Everything is generated
server-side (INSERT ... SELECT ... FROM generate_series, in chunks), from
deterministic pseudo-random values: every value is a function of the seed, the
row number and "now", so two builds with the same arguments hold the same data.

    python tools/sample_db.py --dsn postgresql://... --rows 1000000 [--seed 42] [--schema-only]

Python API:

    create_schema(conn, *, schema="public")
    load_data(conn, *, rows=1_000_000, seed=42, now=None, schema="public") -> dict
    build(dsn_or_conn, rows=1_000_000, seed=42, now=None, *, schema="public",
          schema_only=False) -> dict

`rows` is the number of rows in EACH fact table (event_impressions and
ticket_analytics).  Of these, a dozen lie 3-5 years back (in three months) and
five lie 1-45 days in the future; the rest span the 30 months ending at `now`,
denser in recent months, with ids increasing with created_at (as in a table
that was filled over time).

What the database looks like (all in `schema`):

* roles anon, authenticated, service_role (NOLOGIN, created when missing);
* events, orders and the four tables referencing orders (order_items, refunds,
  tickets, inventory_operations): the reason `orders` is not partitioned;
* event_impressions: bigserial id, CHECK, defaults, four kinds of index
  (composite, plain, partial, expression), comments, RLS enabled with two
  policies, grants for the API roles (and on its sequence), a security_invoker
  view event_impressions_daily, membership of publication analytics_pub;
* ticket_analytics: GENERATED ALWAYS identity id, a STORED generated column,
  CHECK, RLS enabled and FORCED with two policies, grants, a BEFORE INSERT OR
  UPDATE row trigger lower-casing `channel`, REPLICA IDENTITY FULL.

Legacy data: the normalize trigger "was added" 12 months before `now`.  Rows of
ticket_analytics older than that keep their mixed-case channel ('Web', 'IOS',
...); newer rows are lower case, as the trigger would have made them.  (The
loader disables the trigger inside its own transaction for speed and writes
what the trigger would have written.)  A conversion that copies rows through
the normalize trigger therefore changes old rows, and a checksum comparison
catches it.
"""
import argparse
import os
import datetime as dt
import sys
import time

import psycopg2
from psycopg2 import sql

API_ROLES = ("anon", "authenticated", "service_role")
TABLES = ("events", "orders", "order_items", "refunds", "tickets", "inventory_operations",
          "event_impressions", "ticket_analytics")
FACT_TABLES = ("event_impressions", "ticket_analytics")
VIEW = "event_impressions_daily"
PUBLICATION = "analytics_pub"
FUNCTION = "normalize_channel"

CHUNK = 200_000          # rows per INSERT ... SELECT statement
N_EVENTS = 300           # "a few hundred"
N_ANCIENT = 12           # rows 3-5 years back, per fact table
N_FUTURE = 5             # rows 1-45 days ahead, per fact table
ANCIENT_MONTHS_BACK = (50, 44, 38)   # three sparse months, 4y2m, 3y8m and 3y2m before now
HISTORY_MONTHS = 30      # the bulk spans the 30 months ending at now
TRIGGER_AGE_MONTHS = 12  # rows older than this keep their legacy mixed-case channel
DENSITY_START = 0.4      # relative density at the start of the history (1.6 at its end)

# Constant SQL array literals the generator picks values from (module constants, not input).
EVENT_ADJECTIVES = "ARRAY['Spring','Summer','Autumn','Winter','Midnight','Open-Air','Acoustic','Grand']"
EVENT_KINDS = "ARRAY['Jazz Night','Rock Fest','Comedy Hour','Opera Gala','Tech Talk','Food Fair','Film Club','Dance Party']"
VENUES = "ARRAY['Arena Nord','Blue Hall','Riverside Stage','Old Theatre','Club 9','Park Pavilion']"
FIRST_NAMES = "ARRAY['Ada','Grace','Linus','Ken','Barbara','Edsger','Frances','Donald']"
LAST_NAMES = "ARRAY['Lovelace','Hopper','Torvalds','Thompson','Liskov','Dijkstra','Allen','Knuth']"
TICKET_TYPES = "ARRAY['general','vip','student','early_bird','backstage']"
BASE_PRICES = "ARRAY[25.00,49.50,75.00,120.00,250.00]"
CAMPAIGNS = "ARRAY['spring_sale','summer_fest','black_friday','newsletter','retargeting']"
REFERRERS = "ARRAY['google','instagram','tiktok','direct']"
CHANNELS = "ARRAY['Web','WEB','web','IOS','iOS','Android','ANDROID','Box_Office','Partner']"


class SampleDBError(RuntimeError):
    """The sample database cannot be built here (e.g. the tables already exist)."""


# ---------------------------------------------------------------------------
# Deterministic pseudo-random values, computed by the server.
#
# u(k) is uniform in [0, 1), a function of (row number, stream k, seed).
# hashint8extended(bigint, seed bigint) exists since PostgreSQL 11 and is
# stable across versions and platforms.  k (0..255) selects an independent
# stream; every table uses its own range of k.  These fragments contain only
# constants of this module, never user input; values travel as parameters.

def _u(k, var="g"):
    return (f"((hashint8extended({var} * 256 + {int(k)}, %(seed)s) & 9007199254740991)::float8"
            f" / 9007199254740992.0)")


def _pick(array_literal, k, var="g"):
    """An element of a constant SQL array literal chosen uniformly by stream k."""
    n = array_literal.count(",") + 1
    return f"(({array_literal})[1 + floor({_u(k, var)} * {n})::int])"


def _user_uuid(k, var="g"):
    """A uuid from a pool of %(n_users)s users, so users recur across rows and tables."""
    return (f"md5('user:' || %(seed)s::text || ':' || floor({_u(k, var)} * %(n_users)s)::bigint::text)::uuid")


def _history_ts(k, index_expr, count_param):
    """created_at for bulk row `index_expr` (0-based) of %(count_param)s rows: monotonic in the
    index (plus jitter), density rising linearly from DENSITY_START to 2 - DENSITY_START."""
    a = DENSITY_START
    x = f"(({index_expr}) + {_u(k)}) / %({count_param})s::float8"
    t = f"((-{a} + sqrt({a * a} + {4 * (1 - a)} * {x})) / {2 * (1 - a)})"
    return f"(%(hist_start)s::timestamptz + ({t} * %(hist_span)s) * interval '1 second')"


def _fact_created_at(k):
    """created_at of fact row g (1-based): ancient rows first, then history, then future."""
    months = ",".join(str(m) for m in ANCIENT_MONTHS_BACK)
    ancient = (f"(date_trunc('month', %(now)s::timestamptz)"
               f" - make_interval(months => (ARRAY[{months}])[(1 + ((g - 1) * {len(ANCIENT_MONTHS_BACK)})"
               f" / %(n_ancient)s)::int])"
               f" + ({_u(k)} * 27 * 86400) * interval '1 second')")
    future = f"(%(now)s::timestamptz + (86400 + {_u(k)} * 44 * 86400) * interval '1 second')"
    history = _history_ts(k + 1, "g - %(n_ancient)s - 1", "n_bulk")
    return (f"CASE WHEN g <= %(n_ancient)s THEN {ancient}"
            f" WHEN g > %(n_ancient)s + %(n_bulk)s THEN {future}"
            f" ELSE {history} END")


# ---------------------------------------------------------------------------
# Schema

def _server_version(conn):
    with conn.cursor() as cur:
        cur.execute("SHOW server_version_num")
        return int(cur.fetchone()[0])


def _existing_objects(cur, schema):
    cur.execute("""
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = %s AND c.relname = ANY(%s) ORDER BY c.relname""",
                (schema, list(TABLES) + [VIEW]))
    found = [r[0] for r in cur.fetchall()]
    cur.execute("SELECT pubname FROM pg_publication WHERE pubname = %s", (PUBLICATION,))
    found += [f"publication {r[0]}" for r in cur.fetchall()]
    cur.execute("""
        SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
         WHERE n.nspname = %s AND p.proname = %s""", (schema, FUNCTION))
    found += [f"function {r[0]}()" for r in cur.fetchall()]
    return found


def ensure_roles(cur):
    """Create Supabase's API roles when missing (NOLOGIN).  They are cluster-wide."""
    for role in API_ROLES:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
        if cur.fetchone():
            continue
        cur.execute("SAVEPOINT sample_db_role")
        try:
            cur.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        except psycopg2.errors.DuplicateObject:   # created concurrently by another session
            cur.execute("ROLLBACK TO SAVEPOINT sample_db_role")
        else:
            cur.execute("RELEASE SAVEPOINT sample_db_role")


def create_schema(conn, *, schema="public", phases=None):
    """Create roles, tables, indexes, policies, grants, view, trigger and publication.

    One transaction, committed at the end.  Raises SampleDBError, changing
    nothing, when any of the sample objects already exists: use a fresh database.
    `phases` (internal, used by build()): (PRE,) creates what loading needs, (POST,)
    the rest; default both.
    """
    phases = (PRE, POST) if phases is None else tuple(phases)
    version = _server_version(conn)
    with conn.cursor() as cur:
        if PRE in phases:
            found = _existing_objects(cur, schema)
            if found:
                conn.rollback()
                raise SampleDBError(
                    f"schema {schema!r} of database {conn.info.dbname!r} already holds sample objects "
                    f"({', '.join(found)}); sample_db never drops anything: build into a fresh database")
        try:
            if PRE in phases:
                ensure_roles(cur)
            statements = list(_schema_statements(schema, version))
            for phase in phases:
                for statement_phase, statement in statements:
                    if statement_phase == phase:
                        cur.execute(statement)
        except Exception:
            conn.rollback()
            raise
    conn.commit()


PRE, POST = "pre-data", "post-data"


def _schema_statements(schema, version):
    """The DDL as (phase, statement): composed psycopg2.sql objects (run without parameters).

    PRE statements create everything needed to load data; POST statements (the fact tables'
    foreign keys, secondary indexes and the normalize trigger) are cheaper after the load."""
    s = sql.Identifier(schema)

    def t(name):
        return sql.Identifier(schema, name)

    def q(text, **kw):
        return sql.SQL(text).format(**kw)

    roles = {r: sql.Identifier(r) for r in API_ROLES}
    anon, authn, service = roles["anon"], roles["authenticated"], roles["service_role"]
    yield PRE, q("CREATE SCHEMA IF NOT EXISTS {s}", s=s)
    yield PRE, q("GRANT USAGE ON SCHEMA {s} TO {a}, {b}, {c}", s=s, a=anon, b=authn, c=service)

    # --- the transactional core; orders and everything that references it
    yield PRE, q("""CREATE TABLE {t} (
        id bigserial PRIMARY KEY,
        name text NOT NULL,
        starts_at timestamptz NOT NULL,
        venue text)""", t=t("events"))
    yield PRE, q("""CREATE TABLE {t} (
        id bigserial PRIMARY KEY,
        event_id bigint REFERENCES {events}(id),
        user_id uuid NOT NULL,
        total numeric(12,2) NOT NULL,
        status text NOT NULL DEFAULT 'paid',
        created_at timestamptz NOT NULL DEFAULT now())""", t=t("orders"), events=t("events"))
    yield PRE, q("CREATE INDEX ON {t} (created_at)", t=t("orders"))
    yield PRE, q("""CREATE TABLE {t} (
        id bigserial PRIMARY KEY,
        order_id bigint NOT NULL REFERENCES {orders}(id),
        ticket_type text NOT NULL,
        quantity int NOT NULL CHECK (quantity > 0),
        unit_price numeric(10,2) NOT NULL)""", t=t("order_items"), orders=t("orders"))
    yield PRE, q("CREATE INDEX ON {t} (order_id)", t=t("order_items"))
    yield PRE, q("""CREATE TABLE {t} (
        id bigserial PRIMARY KEY,
        order_id bigint NOT NULL REFERENCES {orders}(id),
        amount numeric(12,2) NOT NULL,
        reason text,
        created_at timestamptz NOT NULL DEFAULT now())""", t=t("refunds"), orders=t("orders"))
    yield PRE, q("""CREATE TABLE {t} (
        id bigserial PRIMARY KEY,
        order_id bigint NOT NULL REFERENCES {orders}(id),
        event_id bigint NOT NULL REFERENCES {events}(id),
        attendee_name text,
        status text NOT NULL DEFAULT 'valid')""", t=t("tickets"), orders=t("orders"), events=t("events"))
    yield PRE, q("CREATE INDEX ON {t} (order_id)", t=t("tickets"))
    yield PRE, q("""CREATE TABLE {t} (
        id bigserial PRIMARY KEY,
        order_id bigint REFERENCES {orders}(id),
        event_id bigint NOT NULL REFERENCES {events}(id),
        operation text NOT NULL,
        quantity int NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now())""",
            t=t("inventory_operations"), orders=t("orders"), events=t("events"))

    # --- event_impressions
    ei = t("event_impressions")
    yield PRE, q("""CREATE TABLE {t} (
        id bigserial PRIMARY KEY,
        event_id bigint NOT NULL,
        user_id uuid,
        session_id text,
        source text NOT NULL DEFAULT 'web'
            CONSTRAINT event_impressions_source_check CHECK (source IN ('web', 'ios', 'android', 'email')),
        metadata jsonb NOT NULL DEFAULT '{{}}',
        created_at timestamptz NOT NULL DEFAULT now())""", t=ei)
    # foreign keys and secondary indexes of the fact tables are POST: build() adds them after
    # the data (one validating query, one index build), as pg_restore does
    yield POST, q("ALTER TABLE {t} ADD CONSTRAINT event_impressions_event_id_fkey"
                  " FOREIGN KEY (event_id) REFERENCES {events}(id)", t=ei, events=t("events"))
    yield POST, q("CREATE INDEX event_impressions_event_id_created_at_idx ON {t} (event_id, created_at)", t=ei)
    yield POST, q("CREATE INDEX event_impressions_created_at_idx ON {t} (created_at)", t=ei)
    yield POST, q("CREATE INDEX event_impressions_user_id_idx ON {t} (user_id) WHERE user_id IS NOT NULL", t=ei)
    yield POST, q("CREATE INDEX event_impressions_campaign_idx ON {t} ((metadata ->> 'campaign'))", t=ei)
    yield PRE, q("COMMENT ON TABLE {t} IS 'One row per event page view (analytics fact table).'", t=ei)
    yield PRE, q("COMMENT ON COLUMN {t}.source IS 'Client that showed the event: web, ios, android or email.'",
            t=ei)
    yield PRE, q("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY", t=ei)
    yield PRE, q("CREATE POLICY impressions_read ON {t} FOR SELECT TO {b} USING (true)", t=ei, b=authn)
    yield PRE, q("CREATE POLICY impressions_insert ON {t} FOR INSERT TO {a}, {b} WITH CHECK (source <> 'email')",
            t=ei, a=anon, b=authn)
    yield PRE, q("GRANT SELECT, INSERT ON {t} TO {a}, {b}", t=ei, a=anon, b=authn)
    yield PRE, q("GRANT ALL ON {t} TO {c}", t=ei, c=service)
    # inserting through the id default needs USAGE on the sequence (Supabase grants it too)
    seq = t("event_impressions_id_seq")
    yield PRE, q("GRANT USAGE, SELECT ON SEQUENCE {q} TO {a}, {b}", q=seq, a=anon, b=authn)
    yield PRE, q("GRANT ALL ON SEQUENCE {q} TO {c}", q=seq, c=service)
    options = sql.SQL(" WITH (security_invoker = true)") if version >= 150000 else sql.SQL("")
    yield PRE, q("""CREATE VIEW {v}{o} AS
        SELECT event_id, date_trunc('day', created_at) AS day, count(*) AS impressions
          FROM {t}
         GROUP BY event_id, date_trunc('day', created_at)""", v=t(VIEW), o=options, t=ei)
    yield PRE, q("GRANT SELECT ON {v} TO {b}", v=t(VIEW), b=authn)
    yield PRE, q("CREATE PUBLICATION {p} FOR TABLE {t}", p=sql.Identifier(PUBLICATION), t=ei)

    # --- ticket_analytics
    ta = t("ticket_analytics")
    yield PRE, q("""CREATE TABLE {t} (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        event_id bigint NOT NULL,
        ticket_type text NOT NULL,
        quantity int NOT NULL CONSTRAINT ticket_analytics_quantity_check CHECK (quantity > 0),
        unit_price numeric(10,2) NOT NULL,
        revenue numeric(12,2) GENERATED ALWAYS AS (quantity * unit_price) STORED,
        channel text,
        created_at timestamptz NOT NULL DEFAULT now())""", t=ta)
    yield POST, q("ALTER TABLE {t} ADD CONSTRAINT ticket_analytics_event_id_fkey"
                  " FOREIGN KEY (event_id) REFERENCES {events}(id)", t=ta, events=t("events"))
    yield POST, q("CREATE INDEX ticket_analytics_created_at_idx ON {t} (created_at)", t=ta)
    yield POST, q("CREATE INDEX ticket_analytics_event_id_ticket_type_idx ON {t} (event_id, ticket_type)", t=ta)
    yield PRE, q("COMMENT ON TABLE {t} IS 'Ticket sales facts for analytics dashboards.'", t=ta)
    yield PRE, q("ALTER TABLE {t} ENABLE ROW LEVEL SECURITY", t=ta)
    yield PRE, q("ALTER TABLE {t} FORCE ROW LEVEL SECURITY", t=ta)
    yield PRE, q("CREATE POLICY analytics_service ON {t} FOR ALL TO {c} USING (true) WITH CHECK (true)",
            t=ta, c=service)
    yield PRE, q("CREATE POLICY analytics_read ON {t} FOR SELECT TO {b} USING (quantity < 1000)", t=ta, b=authn)
    yield PRE, q("GRANT SELECT ON {t} TO {b}", t=ta, b=authn)
    yield PRE, q("GRANT ALL ON {t} TO {c}", t=ta, c=service)
    yield PRE, q("""CREATE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.channel := lower(NEW.channel);
    RETURN NEW;
END
$fn$""", f=t(FUNCTION))
    yield POST, q("""CREATE TRIGGER ticket_analytics_normalize BEFORE INSERT OR UPDATE ON {t}
        FOR EACH ROW EXECUTE FUNCTION {f}()""", t=ta, f=t(FUNCTION))
    yield PRE, q("ALTER TABLE {t} REPLICA IDENTITY FULL", t=ta)


# ---------------------------------------------------------------------------
# Data

def _chunks(total, size=CHUNK):
    lo = 1
    while lo <= total:
        hi = min(total, lo + size - 1)
        yield lo, hi
        lo = hi + 1


def _insert_chunked(conn, statement, total, params, chunk=CHUNK):
    """Run `statement` (which reads %(lo)s..%(hi)s) for each chunk, committing each."""
    for lo, hi in _chunks(total, chunk):
        with conn.cursor() as cur:
            cur.execute("SET LOCAL synchronous_commit = off")
            cur.execute(statement, dict(params, lo=lo, hi=hi))
        conn.commit()


def _plan(rows):
    rows = int(rows)
    if rows < 0:
        raise ValueError("rows must be >= 0")
    # tiny builds (rows < 100) get no ancient or future rows
    n_ancient = N_ANCIENT if rows >= 100 else 0
    n_future = N_FUTURE if rows >= 100 else 0
    return {
        "rows": rows,
        "n_ancient": n_ancient,
        "n_future": n_future,
        "n_bulk": rows - n_ancient - n_future,
        "n_events": N_EVENTS,
        "n_orders": max(100, rows // 20),
        "n_users": max(1000, rows // 50),
    }


def load_data(conn, *, rows=1_000_000, seed=42, now=None, schema="public", analyze=True):
    """Fill the tables created by create_schema, then ANALYZE them.  Commits (per chunk).

    `now` (datetime with tzinfo, or None for the server's now()) pins "the current time".
    Returns {"now": ..., "timings": {step: seconds}, "rows": ..., ...the plan}.
    Run it as a superuser or as the tables' owner without FORCE RLS in effect: the
    policies of ticket_analytics admit only service_role.
    """
    plan = _plan(rows)
    timings = {}
    with conn.cursor() as cur:
        if now is None:
            cur.execute("SELECT now()")
            now = cur.fetchone()[0]
        elif isinstance(now, dt.datetime) and now.tzinfo is None:
            raise ValueError("now must be timezone-aware")
        cur.execute(f"SELECT %(now)s::timestamptz - interval '{HISTORY_MONTHS} months',"
                    f" extract(epoch FROM %(now)s::timestamptz"
                    f" - (%(now)s::timestamptz - interval '{HISTORY_MONTHS} months'))::float8,"
                    f" %(now)s::timestamptz - interval '{TRIGGER_AGE_MONTHS} months'",
                    {"now": now})
        hist_start, hist_span, trigger_added = cur.fetchone()
    conn.commit()
    params = dict(plan, seed=int(seed), now=now, hist_start=hist_start, hist_span=hist_span,
                  trigger_added=trigger_added)

    def t(name):
        return sql.Identifier(schema, name)

    def run(name, statement, total, **kw):
        started = time.monotonic()
        _insert_chunked(conn, sql.SQL(statement).format(**kw).as_string(conn), total, params)
        timings[name] = time.monotonic() - started

    # events: k 0-7.  Ids given explicitly (1..n) so that references are simple to generate.
    run("events", f"""
        INSERT INTO {{t}} (id, name, starts_at, venue)
        SELECT g,
               {_pick(EVENT_ADJECTIVES, 0)}
                 || ' ' || {_pick(EVENT_KINDS, 1)}
                 || ' #' || g,
               {_history_ts(2, "g - 1", "n_events")} + interval '30 days',
               CASE WHEN {_u(3)} < 0.1 THEN NULL
                    ELSE {_pick(VENUES, 4)} END
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g""",
        plan["n_events"], t=t("events"))

    # orders: k 8-15
    run("orders", f"""
        INSERT INTO {{t}} (id, event_id, user_id, total, status, created_at)
        SELECT g,
               1 + floor({_u(8)} * %(n_events)s)::bigint,
               {_user_uuid(9)},
               round((10 + {_u(10)} * 490)::numeric, 2),
               CASE WHEN {_u(11)} < 0.85 THEN 'paid' WHEN {_u(11)} < 0.93 THEN 'refunded'
                    WHEN {_u(11)} < 0.97 THEN 'pending' ELSE 'cancelled' END,
               {_history_ts(12, "g - 1", "n_orders")}
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g""",
        plan["n_orders"], t=t("orders"))

    # order_items: one per order, a second for about half of them.  k 16-23
    run("order_items", f"""
        INSERT INTO {{t}} (order_id, ticket_type, quantity, unit_price)
        SELECT g, {_pick(TICKET_TYPES, 16)},
               1 + floor({_u(17)} * 4)::int, {_pick(BASE_PRICES, 18)}
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
        UNION ALL
        SELECT g, {_pick(TICKET_TYPES, 19)},
               1 + floor({_u(20)} * 4)::int, {_pick(BASE_PRICES, 21)}
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g
         WHERE {_u(22)} < 0.5""",
        plan["n_orders"], t=t("order_items"))

    # refunds: for the refunded orders.  k 24-31
    run("refunds", """
        INSERT INTO {t} (order_id, amount, reason, created_at)
        SELECT o.id, round(o.total * (0.5 + 0.5 * (o.id %% 2)), 2),
               (ARRAY['event cancelled','customer request','duplicate order'])[1 + (o.id %% 3)::int],
               o.created_at + interval '3 days'
          FROM {orders} o
         WHERE o.id BETWEEN %(lo)s AND %(hi)s AND o.status = 'refunded'
         ORDER BY o.id""",
        plan["n_orders"], t=t("refunds"), orders=t("orders"))

    # tickets: one or two for most paid orders.  k 32-39
    run("tickets", f"""
        INSERT INTO {{t}} (order_id, event_id, attendee_name, status)
        SELECT o.id, o.event_id,
               {_pick(FIRST_NAMES, 32, "o.id")}
                 || ' ' || {_pick(LAST_NAMES, 33, "o.id")},
               CASE WHEN o.status = 'paid' THEN 'valid' ELSE 'void' END
          FROM {{orders}} o, generate_series(1, 1 + floor({_u(34, "o.id")} * 2)::int) AS n
         WHERE o.id BETWEEN %(lo)s AND %(hi)s AND o.event_id IS NOT NULL AND {_u(35, "o.id")} < 0.8
         ORDER BY o.id, n""",
        plan["n_orders"], t=t("tickets"), orders=t("orders"))

    # inventory_operations: a reservation for some orders, plus order-less restocks.  k 40-47
    run("inventory_operations", f"""
        INSERT INTO {{t}} (order_id, event_id, operation, quantity, created_at)
        SELECT o.id, o.event_id, 'reserve', -(1 + floor({_u(40, "o.id")} * 3)::int), o.created_at
          FROM {{orders}} o
         WHERE o.id BETWEEN %(lo)s AND %(hi)s AND o.event_id IS NOT NULL AND {_u(41, "o.id")} < 0.5
        UNION ALL
        SELECT NULL, 1 + (o.id %% %(n_events)s), 'restock', 50, o.created_at
          FROM {{orders}} o
         WHERE o.id BETWEEN %(lo)s AND %(hi)s AND o.id %% 50 = 0""",
        plan["n_orders"], t=t("inventory_operations"), orders=t("orders"))

    # event_impressions: explicit ids 1..rows, increasing with created_at.  k 48-63
    run("event_impressions", f"""
        INSERT INTO {{t}} (id, event_id, user_id, session_id, source, metadata, created_at)
        SELECT g,
               1 + floor(({_u(48)} ^ 2) * %(n_events)s)::bigint,
               CASE WHEN {_u(49)} < 0.3 THEN NULL ELSE {_user_uuid(50)} END,
               CASE WHEN {_u(51)} < 0.05 THEN NULL
                    ELSE 's_' || to_hex(hashint8extended((g / 8) * 256 + 52, %(seed)s)) END,
               CASE WHEN {_u(53)} < 0.55 THEN 'web' WHEN {_u(53)} < 0.75 THEN 'ios'
                    WHEN {_u(53)} < 0.95 THEN 'android' ELSE 'email' END,
               CASE WHEN {_u(54)} < 0.3
                    THEN jsonb_build_object(
                           'campaign', {_pick(CAMPAIGNS, 55)},
                           'variant', {_pick("ARRAY['a','b']", 56)})
                    WHEN {_u(54)} < 0.5
                    THEN jsonb_build_object('referrer', {_pick(REFERRERS, 57)})
                    ELSE '{{{{}}}}'::jsonb END,
               {_fact_created_at(58)}
          FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g""",
        plan["rows"], t=t("event_impressions"))

    # ticket_analytics: ids from the identity (no OVERRIDING), in created_at order.  k 64-79
    # The normalize trigger is disabled inside this transaction; rows written since the
    # trigger "exists" are lower-cased here, older ones keep their legacy case.
    started = time.monotonic()
    ta = t("ticket_analytics")
    statement = sql.SQL(f"""
        INSERT INTO {{t}} (event_id, ticket_type, quantity, unit_price, channel, created_at)
        SELECT event_id, ticket_type, quantity,
               round((base_price * price_factor)::numeric, 2),
               CASE WHEN created_at >= %(trigger_added)s::timestamptz THEN lower(channel) ELSE channel END,
               created_at
          FROM (SELECT g,
                       1 + floor(({_u(64)} ^ 2) * %(n_events)s)::bigint AS event_id,
                       {_pick(TICKET_TYPES, 65)} AS ticket_type,
                       1 + floor(({_u(66)} ^ 2) * 10)::int AS quantity,
                       {_pick(BASE_PRICES, 67)} AS base_price,
                       {_pick("ARRAY[1.0,1.0,0.8,1.2]", 68)} AS price_factor,
                       CASE WHEN {_u(69)} < 0.03 THEN NULL
                            ELSE {_pick(CHANNELS, 70)}
                       END AS channel,
                       {_fact_created_at(71)} AS created_at
                  FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g) AS s""").format(t=ta).as_string(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_trigger WHERE tgrelid = %s::regclass AND tgname = 'ticket_analytics_normalize'",
                    (ta.as_string(conn),))
        has_trigger = cur.fetchone() is not None
    conn.commit()
    if not has_trigger:       # build(): the trigger is created after the load
        _insert_chunked(conn, statement, plan["rows"], params)
    else:                     # one transaction, so the trigger cannot stay disabled
        with conn.cursor() as cur:
            try:
                cur.execute(sql.SQL("ALTER TABLE {} DISABLE TRIGGER ticket_analytics_normalize").format(ta))
                for lo, hi in _chunks(plan["rows"]):
                    cur.execute(statement, dict(params, lo=lo, hi=hi))
                cur.execute(sql.SQL("ALTER TABLE {} ENABLE TRIGGER ticket_analytics_normalize").format(ta))
            except Exception:
                conn.rollback()
                raise
        conn.commit()
    timings["ticket_analytics"] = time.monotonic() - started

    # sequences past max(id) where ids were given explicitly
    started = time.monotonic()
    with conn.cursor() as cur:
        for name in ("events", "orders", "event_impressions"):
            cur.execute(sql.SQL("SELECT setval(pg_get_serial_sequence(%s, 'id'), coalesce(max(id), 0) + 1, false)"
                                " FROM {}").format(t(name)),
                        (sql.Identifier(schema, name).as_string(conn),))
    conn.commit()
    timings["sequences"] = time.monotonic() - started

    if analyze:
        timings["analyze"] = analyze_all(conn, schema=schema)
    return {"now": now, "timings": timings, **plan}


def analyze_all(conn, *, schema="public"):
    """ANALYZE every sample table (outside a transaction); returns the seconds it took."""
    started = time.monotonic()
    conn.commit()
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in TABLES:
                cur.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(schema, name)))
    finally:
        conn.autocommit = autocommit
    return time.monotonic() - started


# ---------------------------------------------------------------------------

def describe(conn, *, schema="public"):
    """Row counts of every table, and min/max created_at of the fact tables."""
    out = {}
    with conn.cursor() as cur:
        for name in TABLES:
            if name in FACT_TABLES or name in ("orders",):
                cur.execute(sql.SQL("SELECT count(*), min(created_at), max(created_at) FROM {}")
                            .format(sql.Identifier(schema, name)))
                count, lo, hi = cur.fetchone()
                out[name] = {"rows": count, "min_created_at": lo, "max_created_at": hi}
            else:
                cur.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, name)))
                out[name] = {"rows": cur.fetchone()[0]}
    conn.commit()
    return out


def build(dsn_or_conn, rows=1_000_000, seed=42, now=None, *, schema="public", schema_only=False):
    """create_schema + load_data on a DSN (own connection, closed after) or an open connection.

    Faster than the two calls: the fact tables' foreign keys, secondary indexes and trigger
    are created after the load (the resulting catalog is the same).
    Returns {"rows", "seed", "schema", "now", "timings": {step: seconds}, "tables": describe()}.
    """
    own = not hasattr(dsn_or_conn, "cursor")
    conn = psycopg2.connect(dsn_or_conn, application_name="sample_db",
                            options="-c statement_timeout=0") if own else dsn_or_conn
    try:
        result = {"rows": rows, "seed": seed, "schema": schema, "now": None, "timings": {}}
        timings = result["timings"]
        started = time.monotonic()
        if schema_only:
            create_schema(conn, schema=schema)
            timings["schema"] = time.monotonic() - started
        else:
            create_schema(conn, schema=schema, phases=(PRE,))
            timings["schema"] = time.monotonic() - started
            loaded = load_data(conn, rows=rows, seed=seed, now=now, schema=schema, analyze=False)
            result["now"] = loaded["now"]
            timings.update(loaded["timings"])
            step = time.monotonic()
            create_schema(conn, schema=schema, phases=(POST,))
            timings["indexes_fks_trigger"] = time.monotonic() - step
            timings["analyze"] = analyze_all(conn, schema=schema)
            timings["data"] = time.monotonic() - started - timings["schema"]
        timings["total"] = time.monotonic() - started
        result["tables"] = describe(conn, schema=schema)
        return result
    finally:
        if own:
            conn.close()


def _format(result):
    lines = [f"sample database: schema {result['schema']!r}, rows per fact table {result['rows']:,}, "
             f"seed {result['seed']}" + (f", now {result['now'].isoformat()}" if result.get("now") else "")]
    for name, info in result["tables"].items():
        line = f"  {name:<22} {info['rows']:>12,} rows"
        if info.get("min_created_at") is not None:
            line += f"   created_at {info['min_created_at'].isoformat()} .. {info['max_created_at'].isoformat()}"
        lines.append(line)
    lines.append("timings: " + ", ".join(f"{k} {v:.2f}s" for k, v in result["timings"].items()))
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default=os.environ.get("DATABASE_URL"),
                        help="libpq URL or key=value string (default: $DATABASE_URL, which keeps the "
                             "password off the command line)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in EACH fact table (default 1,000,000)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--schema", default="public")
    parser.add_argument("--now", type=dt.datetime.fromisoformat, default=None,
                        help="pin the current time (ISO 8601 with offset); default: the server's now()")
    parser.add_argument("--schema-only", action="store_true", help="create the schema, load no data")
    args = parser.parse_args(argv)
    if not args.dsn:
        parser.error("give --dsn or set DATABASE_URL")
    try:
        result = build(args.dsn, rows=args.rows, seed=args.seed, now=args.now,
                       schema=args.schema, schema_only=args.schema_only)
    except (SampleDBError, psycopg2.Error, ValueError) as exc:
        print(f"sample_db: {exc}".rstrip(), file=sys.stderr)
        return 1
    print(_format(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
