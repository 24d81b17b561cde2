"""Small helpers shared by the test modules."""
import psycopg2
import pytest

import sample_db
from ansible.module_utils import pgpart_convert, pgpart_verify


def build_sample(db, rows=3000):
    sample_db.build(db.url, rows=rows, now=None)
    return db


def convert(session, table, schema='public', **options):
    return pgpart_convert.Conversion(session, schema, table, **options).run()


def verified(session, table, schema='public'):
    report = pgpart_verify.verify_converted(session, schema, table)
    assert report['ok'], [c for c in report['checks'] if not c['ok']]
    return report


def relation_names(db, pattern, kinds=('r', 'p')):
    """Tables (by default) whose name matches a LIKE pattern."""
    return sorted(r[0] for r in db.query("SELECT relname FROM pg_class WHERE relname LIKE %s AND relkind = ANY (%s)",
                                         (pattern, list(kinds))))


def catalog_fingerprint(db, exclude_schemas=()):
    """Everything a refused or check-mode run must leave untouched (schemas listed are left out)."""
    return db.query(
        "SELECT n.nspname, c.relname, c.relkind, c.relacl::text, c.relrowsecurity, c.relforcerowsecurity, "
        "(SELECT count(*) FROM pg_trigger t WHERE t.tgrelid = c.oid), "
        "(SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') AND n.nspname <> ALL (%s) "
        "ORDER BY 1, 2", (list(exclude_schemas),)) + db.query(
        "SELECT nspname FROM pg_namespace WHERE nspname <> ALL (%s) ORDER BY 1", (list(exclude_schemas),))


def as_role(db, role, statement, args=None):
    """Run a statement as `role` (SET ROLE) and return rows, or the error text."""
    conn = db.connect(autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute(psycopg2.sql.SQL('SET ROLE {}').format(psycopg2.sql.Identifier(role)))
            try:
                cur.execute(statement, args)
                return cur.fetchall() if cur.description else []
            except psycopg2.Error as exc:
                return 'ERROR: %s' % exc.pgerror
    finally:
        conn.rollback()
        conn.close()


def raises_pgpart(match):
    from ansible.module_utils.pgpart_db import PgpartError
    return pytest.raises(PgpartError, match=match)
