# -*- coding: utf-8 -*-
"""Connection options shared by every pgpart module (community.postgresql style)."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type


class ModuleDocFragment(object):
    DOCUMENTATION = r'''
options:
  database_url:
    description:
      - libpq connection URL (C(postgresql://user@host:5432/db)) or key=value conninfo string. The password may be
        part of it, or come from C(PGPASSWORD) or C(~/.pgpass) as usual with libpq.
      - Defaults to the C(DATABASE_URL) environment variable. The C(login_*) options override its parts.
      - Never printed; keep it in Ansible Vault or the environment.
    type: str
    aliases: [conninfo]
  login_host:
    description: Host to connect to (overrides the host in I(database_url)).
    type: str
  login_port:
    description:
      - Port to connect to.
      - Port 6543 (Supabase's transaction pooler) is refused, as is any transaction-mode pooler detected
        behind another port; use the direct connection or a session-mode pooler.
    type: int
  login_user:
    description: Role to connect as. It must own the tables (or be a member of the owning role).
    type: str
  login_password:
    description: Password of I(login_user).
    type: str
  login_db:
    description: Database to connect to.
    type: str
  login_unix_socket:
    description: Directory of a local Unix socket to connect through (instead of TCP).
    type: str
  ssl_mode:
    description: libpq C(sslmode).
    type: str
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  ca_cert:
    description: CA certificate file for C(verify-ca) and C(verify-full) (libpq C(sslrootcert)).
    type: path
  connect_params:
    description: Any other libpq connection parameters, as a dictionary.
    type: dict
    default: {}
  connect_timeout:
    description: Seconds to wait for the connection.
    type: int
    default: 10
requirements:
  - psycopg2 (psycopg2-binary)
  - PostgreSQL 14 or newer
notes:
  - Every pgpart module returns C(queries), the SQL statements that changed something (or would, in check mode).
  - Messages and results never contain the password, even when the connection fails.
'''

    TABLE = r'''
options:
  table:
    description: Name of the table (not schema-qualified; see I(schema)).
    type: str
    required: true
    aliases: [name]
  schema:
    description: Schema of the table.
    type: str
    default: public
  column:
    description: The partition key column (timestamptz, timestamp or date, NOT NULL).
    type: str
    default: created_at
  interval:
    description: Partition interval. Only calendar months (UTC) are supported.
    type: str
    default: month
    choices: [month]
'''

    READ_ONLY = r'''
attributes:
  check_mode:
    support: full
    description: Reads only; runs the same in check mode.
  diff_mode:
    support: none
'''

    LOCKS = r'''
options:
  lock_timeout_ms:
    description:
      - C(lock_timeout) of each attempt to take the short exclusive locks this step needs.
      - Other queries never wait behind the attempt for longer than this, so keep it short; the attempts
        outlast whatever holds the lock (a long query, an autovacuum).
    type: int
    default: 300
  lock_attempts:
    description: Attempts before giving up (nothing is changed by a failed attempt).
    type: int
    default: 60
  max_backoff_ms:
    description: Longest pause between attempts; pauses double from I(lock_timeout_ms), with random jitter.
    type: int
    default: 10000
'''
