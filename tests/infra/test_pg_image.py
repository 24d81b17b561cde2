"""The local PostgreSQL image keeps the official postgres image's contract.

Needs a Docker engine and the image (scripts/provision_docker.sh makes both);
skipped otherwise. Containers use the host network and bind 127.0.0.1 only.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid

import pytest

psycopg2 = pytest.importorskip("psycopg2")

IMAGE = os.environ.get("PGPART_PG_IMAGE", "pgpart/postgres:15-local")
if not IMAGE.startswith("pgpart/"):  # these tests are about our own image
    IMAGE = "pgpart/postgres:15-local"


def _docker(*args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, timeout=timeout, check=check
    )


def _image_ready() -> str | None:
    if not shutil.which("docker"):
        return "no docker client"
    try:
        if _docker("info", timeout=15, check=False).returncode != 0:
            return "no Docker engine (run scripts/provision_docker.sh)"
        if _docker("image", "inspect", IMAGE, timeout=15, check=False).returncode != 0:
            return f"image {IMAGE} missing (run scripts/provision_docker.sh)"
    except subprocess.TimeoutExpired:
        return "docker does not answer"
    return None


_why = _image_ready()
pytestmark = [
    pytest.mark.skipif(_why is not None, reason=_why or ""),
    pytest.mark.timeout(120),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_pg():
    """Start containers of IMAGE; remove them all afterwards."""
    names: list[str] = []

    def start(*args: str, env: dict[str, str] | None = None, volumes: list[str] = ()) -> str:
        name = f"pgpart-imgtest-{uuid.uuid4().hex[:8]}"
        cmd = ["run", "-d", "--name", name, "--network", "host"]
        for k, v in (env or {}).items():
            cmd += ["-e", f"{k}={v}"]
        for v in volumes:
            cmd += ["-v", v]
        _docker(*cmd, IMAGE, *args)
        names.append(name)
        return name

    yield start
    for name in names:
        _docker("rm", "-f", "-v", name, check=False)


def connect(port: int, deadline: float = 30, **kw):
    """Connect to 127.0.0.1:port, retrying until the server is up."""
    end = time.monotonic() + deadline
    while True:
        try:
            return psycopg2.connect(host="127.0.0.1", port=port, connect_timeout=3, **kw)
        except psycopg2.OperationalError as e:
            # Authentication errors are final; "connection refused" is not.
            if "authentication" in str(e) or "no password" in str(e) or time.monotonic() > end:
                raise
            time.sleep(0.3)


def query(conn, sql: str):
    with conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()[0]


def test_defaults_password_preload_and_fast_stop(run_pg):
    port = free_port()
    name = run_pg(
        "postgres", "-c", f"port={port}", "-c", "listen_addresses=127.0.0.1",
        "-c", "shared_preload_libraries=pg_stat_statements",
        env={"POSTGRES_PASSWORD": "s3cret"},
    )
    conn = connect(port, user="postgres", password="s3cret", dbname="postgres")
    conn.autocommit = True
    assert query(conn, "SHOW server_version_num").startswith("15")
    assert query(conn, "SHOW server_encoding") == "UTF8"
    assert query(conn, "SHOW listen_addresses") == "127.0.0.1"
    query(conn, "CREATE EXTENSION pg_stat_statements; SELECT 1")
    assert query(conn, "SELECT count(*) >= 0 FROM pg_stat_statements") is True
    # JIT is stripped from the image: a query that would use it still runs.
    query(conn, "SET jit_above_cost = 0; SELECT 1")
    assert query(conn, "SELECT sum(x) FROM generate_series(1, 1000) x") == 500500
    conn.close()

    # TCP needs the password, even from 127.0.0.1.
    with pytest.raises(psycopg2.OperationalError):
        connect(port, user="postgres", dbname="postgres")

    # postgres is PID 1 (exec), and STOPSIGNAL is SIGINT: stop is quick.
    assert _docker("exec", name, "cat", "/proc/1/comm").stdout.strip() == "postgres"
    t0 = time.monotonic()
    _docker("stop", "-t", "20", name)
    assert time.monotonic() - t0 < 10
    state = _docker("inspect", "-f", "{{.State.ExitCode}}", name).stdout.strip()
    assert state == "0"


def test_user_db_pgport_initdb_args_and_init_scripts(run_pg, tmp_path):
    port = free_port()
    (tmp_path / "10-table.sql").write_text("CREATE TABLE seeded (id int); INSERT INTO seeded VALUES (42);\n")
    tmp_path.chmod(0o755)
    run_pg(
        # Leading "-c": the entrypoint prepends "postgres", as upstream.
        "-c", "listen_addresses=127.0.0.1",
        env={
            "POSTGRES_PASSWORD": "pw",
            "POSTGRES_USER": "alice",
            "POSTGRES_DB": "appdb",
            "POSTGRES_INITDB_ARGS": "--data-checksums",
            "PGPORT": str(port),  # postgres itself reads PGPORT
        },
        volumes=[f"{tmp_path}:/docker-entrypoint-initdb.d:ro"],
    )
    conn = connect(port, user="alice", password="pw", dbname="appdb")
    assert query(conn, "SELECT current_user") == "alice"
    assert query(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is True
    assert query(conn, "SHOW data_checksums") == "on"
    assert query(conn, "SELECT id FROM seeded") == 42
    conn.close()


def test_trust_and_dash_p(run_pg):
    port = free_port()
    run_pg(
        "postgres", "-p", str(port), "-c", "listen_addresses=127.0.0.1",
        env={"POSTGRES_HOST_AUTH_METHOD": "trust"},
    )
    conn = connect(port, user="postgres", dbname="postgres")
    assert query(conn, "SELECT 1") == 1
    conn.close()


def test_missing_password_is_refused(run_pg):
    name = run_pg("postgres", "-c", f"port={free_port()}", "-c", "listen_addresses=127.0.0.1")
    rc = _docker("wait", name, timeout=60).stdout.strip()
    assert rc != "0"
    assert "POSTGRES_PASSWORD is not set" in _docker("logs", name).stderr
