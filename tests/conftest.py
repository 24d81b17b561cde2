"""Shared fixtures: throwaway PostgreSQL servers (15 from the system, 18 from the wheel),
a fresh database per test, and the project's module_utils importable as Ansible does.

PGPART_TEST_VERSIONS=15,18 (default) selects the server versions the suite runs on.
"""
import os
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))

# Ansible bundles module_utils into each module at run time; for tests we extend the
# package path so `from ansible.module_utils.pgpart_x import ...` finds the project's files.
import ansible.module_utils  # noqa: E402

if str(ROOT / "module_utils") not in ansible.module_utils.__path__:
    ansible.module_utils.__path__.append(str(ROOT / "module_utils"))

from pgcluster import Cluster  # noqa: E402

VERSIONS = [v.strip() for v in os.environ.get("PGPART_TEST_VERSIONS", "15,18").split(",") if v.strip()]
WORK = Path(os.environ.get("PGPART_TEST_WORKDIR", ROOT / ".work" / "test-clusters"))


@pytest.fixture(scope="session", params=VERSIONS, ids=lambda v: "pg%s" % v)
def server(request):
    """One running cluster per PostgreSQL version for the whole session."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    cluster = Cluster(WORK / ("pg%s-%s-%s" % (request.param, worker, uuid.uuid4().hex[:6])), request.param,
                      settings={"max_connections": "200", "fsync": "off", "full_page_writes": "off"})
    cluster.start()
    yield cluster
    cluster.stop()


class Database:
    """A database of its own for one test, with connection helpers."""

    def __init__(self, cluster, name):
        self.cluster = cluster
        self.name = name
        self.url = cluster.url(name)
        self.major = cluster.major

    def connect(self, autocommit=True, **kwargs):
        conn = psycopg2.connect(self.url, **kwargs)
        conn.autocommit = autocommit
        return conn

    def params(self, **extra):
        """Module parameters for this database (the connection part)."""
        return dict({"database_url": self.url, "connect_params": {}, "connect_timeout": 10}, **extra)

    def query(self, statement, args=None):
        conn = self.connect()
        try:
            with conn.cursor() as cur:
                cur.execute(statement, args)
                return cur.fetchall() if cur.description else None
        finally:
            conn.close()

    def scalar(self, statement, args=None):
        rows = self.query(statement, args)
        return rows[0][0] if rows else None


@pytest.fixture
def db(server):
    name = "t_" + uuid.uuid4().hex[:12]
    admin = psycopg2.connect(server.url("postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute('CREATE DATABASE "%s"' % name)
        # A safety net: a test stuck on a lock or a query fails instead of hanging CI
        # (pgpart's own sessions set their timeouts explicitly).
        cur.execute('ALTER DATABASE "%s" SET lock_timeout = \'120s\'' % name)
        cur.execute('ALTER DATABASE "%s" SET statement_timeout = \'300s\'' % name)
    admin.close()
    yield Database(server, name)
    admin = psycopg2.connect(server.url("postgres"))
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
    admin.close()


@pytest.fixture
def session_for():
    """Open pgpart Sessions on a Database; all are closed after the test."""
    from ansible.module_utils import pgpart_db
    opened = []

    def open_session(database, check_mode=False):
        session = pgpart_db.connect(database.params(), check_mode=check_mode)
        opened.append(session)
        return session
    yield open_session
    for session in opened:
        session.close()
