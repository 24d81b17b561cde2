"""A real PgBouncer in front of a test cluster, in transaction or session pooling mode."""
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

from pgcluster import free_port, os_user


def pgbouncer_binary():
    return shutil.which('pgbouncer') or ('/usr/sbin/pgbouncer' if os.path.exists('/usr/sbin/pgbouncer') else None)


class PgBouncer:
    def __init__(self, cluster, dbname, mode):
        self.cluster, self.dbname, self.mode = cluster, dbname, mode
        self.dir = tempfile.mkdtemp(prefix='pgbouncer-')
        self.port = free_port()
        self.process = None

    def url(self):
        return 'postgresql://postgres:%s@127.0.0.1:%d/%s' % (self.cluster.password, self.port, self.dbname)

    def start(self):
        user = os_user()
        ini = os.path.join(self.dir, 'pgbouncer.ini')
        auth = os.path.join(self.dir, 'users.txt')
        with open(auth, 'w') as f:
            f.write('"postgres" "%s"\n' % self.cluster.password)
        with open(ini, 'w') as f:
            f.write('[databases]\n%s = host=127.0.0.1 port=%d dbname=%s user=postgres password=%s\n'
                    '[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = %d\nauth_type = plain\nauth_file = %s\n'
                    'pool_mode = %s\nmax_client_conn = 50\ndefault_pool_size = 5\nunix_socket_dir =\n'
                    'logfile = %s\npidfile = %s\n' % (
                        self.dbname, self.cluster.port, self.dbname, self.cluster.password, self.port, auth,
                        self.mode, os.path.join(self.dir, 'log'), os.path.join(self.dir, 'pid')))
        kwargs = {}
        if user is not None:
            for path in (self.dir, ini, auth):
                os.chown(path, user.pw_uid, user.pw_gid)
            kwargs = dict(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        self.process = subprocess.Popen([pgbouncer_binary(), ini], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, **kwargs)
        deadline = time.time() + 15
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(('127.0.0.1', self.port)) == 0:
                    return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError('pgbouncer did not start')

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


__all__ = ['PgBouncer', 'pgbouncer_binary', 'pwd']
