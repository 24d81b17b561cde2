#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: pgpart_maintain
short_description: Monthly maintenance of a converted table - premake partitions, ANALYZE, coverage alert, retention
description:
  - For a table converted by M(pgpart_convert) (journal phase C(swapped), C(converted) or C(cleaned)); any other
    table is refused and nothing changes.
  - "Premake: keeps monthly partitions through the current UTC month plus I(premake) months. Each partition is
    created as a plain table with a validated CHECK implying its bounds and then attached: only SHARE UPDATE
    EXCLUSIVE on the live parent, so reads and writes continue (never C(CREATE TABLE ... PARTITION OF), which takes
    ACCESS EXCLUSIVE). It gets the parent's columns, indexes, owner and storage options, RLS enabled and no grants
    (not readable through the API roles). Each partition is one short transaction under I(lock_timeout_ms),
    retried with backoff, that also adds it to the journal plan, so M(pgpart_verify) keeps passing."
  - "ANALYZE of the parent on every run: autovacuum never analyzes a partitioned parent."
  - "Alert: the task fails when, after this run, now plus I(alert_days) days reaches the upper bound of the last
    partition (for example partitions could not be created): rows after that instant would be refused with
    C(no partition of relation found for row). The coverage end is returned either way."
  - "Retention (only with I(retention_months)): partitions whose whole range ends on or before the first day of
    (current month - I(retention_months)), the C(<table>_phistory) partition included once its upper bound
    qualifies, are detached with C(DETACH PARTITION ... CONCURRENTLY) (a detach left pending by an interrupted run
    is finished with C(FINALIZE)), dumped with pg_dump into I(backup_dir) and verified (the archive read whole by
    pg_restore, its rows counted), then dropped without CASCADE - only when the dump verifies and holds exactly
    as many rows as the detached table, counted under an exclusive lock in the dropping transaction. A partition
    whose dump does not verify is kept, detached, with all its rows, and the task fails."
  - "Retention waits until M(pgpart_cleanup) dropped C(<table>_old) (phase C(cleaned)): before that the retired
    table still holds every row and verification compares month by month against it. Until then the step is
    skipped with a warning."
  - "Crash-safe: every step is recorded in the journal (C(pgpart.conversions.plan) and C(pgpart.events)); a re-run
    after a run died at any point (detach pending, detached but not dumped, dumped but not dropped) finishes the
    job without losing rows. Two runs on one table never overlap (pgpart advisory lock)."
  - "Scheduling: run it from cron or a CI pipeline schedule on the controller, monthly at least (weekly or daily is
    harmless: a run with nothing to do changes nothing), well before I(alert_days) runs out. pg_cron is not used:
    retention needs pg_dump and pg_restore and a backup directory on the controller, outside the database.
    Example crontab line (03:17 UTC on the 1st and 15th):
    C(17 3 1,15 * * cd /srv/pgpart && ansible-playbook maintain.yml -l production >>/var/log/pgpart-maintain.log 2>&1).
    The job's non-zero exit status (failed alert, unverifiable dump, lock timeouts) is what should page someone."
version_added: "1.0.0"
author: pgpart maintainers
extends_documentation_fragment:
  - pgpart_connection
  - pgpart_connection.TABLE
  - pgpart_connection.LOCKS
options:
  premake:
    description:
      - Months after the current UTC month to keep partitions for.
      - Partitions missing between the end of the coverage and the current month (maintenance did not run for a
        while) are created too.
    type: int
    default: 3
  alert_days:
    description:
      - Fail the task when the partitions end within this many days of now (after this run's work).
      - Keep it larger than the interval between two scheduled runs.
    type: int
    default: 14
  retention_months:
    description:
      - Keep this many whole months before the current month; older partitions are detached, dumped, verified
        and dropped.
      - Default (unset) keeps everything. At least 1.
      - After C(<table>_phistory) is dropped, a row older than the oldest remaining partition is refused.
    type: int
  backup_dir:
    description:
      - Directory on the host running the module (the controller) for the dumps of retired partitions, one
        directory per partition with the dump and its C(manifest.json) (0700/0600).
      - Required with I(retention_months).
    type: path
  pg_dump_path:
    description: pg_dump to use (default the newest found, which must be at least the server's major version).
    type: path
  pg_restore_path:
    description: pg_restore to verify dumps with (default the newest found, at least the server's major version).
    type: path
attributes:
  check_mode:
    support: full
    description:
      - Reports the partitions that would be created, detached and dropped, with the SQL (C(queries)) and the
        backup paths; runs nothing and takes no lock on the table (only the pgpart advisory lock that keeps two runs apart).
  diff_mode:
    support: none
notes:
  - "Locks: attaching a partition takes SHARE UPDATE EXCLUSIVE on the parent (writers are not blocked) and, when
    the table has foreign keys, SHARE ROW EXCLUSIVE on the referenced tables for the short transaction. Dropping a
    retired partition with a foreign key takes ACCESS EXCLUSIVE on the referenced table for an instant; every
    such transaction runs under I(lock_timeout_ms) and is retried."
  - "C(DETACH ... CONCURRENTLY) waits for the transactions already using the table; a long transaction makes it
    time out (the partition is then detach pending, invisible to new queries) and the run fails; the next run
    finishes it."
seealso:
  - module: pgpart_verify
  - module: pgpart_cleanup
'''

EXAMPLES = r'''
- name: Maintenance | Partitions | Premake, analyze and alert for event_impressions
  pgpart_maintain:
    database_url: "{{ database_url }}"
    table: event_impressions
    premake: 3
    alert_days: 14
  register: maintenance

- name: Maintenance | Retention | Keep 24 months of ticket_analytics, dump older partitions first
  pgpart_maintain:
    database_url: "{{ database_url }}"
    table: ticket_analytics
    retention_months: 24
    backup_dir: /var/backups/pgpart
    lock_timeout_ms: 2000

- name: Maintenance | Preview | What the next run would do
  pgpart_maintain:
    database_url: "{{ database_url }}"
    table: event_impressions
    retention_months: 24
    backup_dir: /var/backups/pgpart
  check_mode: true
  register: preview

# crontab on the controller (maintain.yml runs the tasks above for every table):
# 17 3 1,15 * * cd /srv/pgpart && ansible-playbook maintain.yml -l production >>/var/log/pgpart-maintain.log 2>&1
'''

RETURN = r'''
table:
  description: The table, schema-qualified.
  returned: always
  type: str
  sample: public.event_impressions
phase:
  description: Journal phase of the table.
  returned: always
  type: str
created:
  description: Partitions created by this run (or that would be, in check mode), oldest first.
  returned: always
  type: list
  elements: str
  sample: [event_impressions_p202701, event_impressions_p202702]
detached:
  description: Partitions detached by this run (or that would be), including detaches left pending by an earlier run.
  returned: always
  type: list
  elements: str
dropped:
  description:
    - Partitions dropped by this run (or that would be), each with C(name), C(from) and C(to) (months C(YYYY-MM);
      C(from) null for the history partition), C(manifest_path) of the verified dump, C(rows) and C(sha256)
      (null in check mode).
  returned: always
  type: list
  elements: dict
coverage_until:
  description:
    - First UTC month (C(YYYY-MM)) the partitions do not cover, after this run; rows are accepted up to the first
      instant of this month. Null when a partition reaches MAXVALUE.
  returned: always
  type: str
  sample: "2027-03"
coverage_ends_at:
  description: The same instant as a timestamp (UTC).
  returned: always
  type: str
  sample: "2027-03-01 00:00:00+00"
days_of_coverage_left:
  description: Days from now to I(coverage_ends_at).
  returned: always
  type: float
alert:
  description: The alert message when coverage ends within I(alert_days) (the task then fails), else null.
  returned: always
  type: str
analyzed:
  description: The parent was analyzed (false in check mode, where C(ANALYZE) is only listed in C(queries)).
  returned: always
  type: bool
retention:
  description:
    - With I(retention_months), C(cutoff) (the first month kept), C(candidates) (partitions to retire this run)
      and C(skipped) (why retention did not run, before cleanup). Null without I(retention_months).
  returned: always
  type: dict
queries:
  description: SQL that changed something (or would, in check mode), in order.
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.pgpart_module import lock_argument_spec, lock_options, run_module, table_argument_spec
from ansible.module_utils.pgpart_maintain import maintain


def work(module, session):
    p = module.params
    result = maintain(session, p['schema'], p['table'], column=p['column'], premake=p['premake'],
                      alert_days=p['alert_days'], retention_months=p['retention_months'], backup_dir=p['backup_dir'],
                      pg_dump=p['pg_dump_path'], pg_restore=p['pg_restore_path'], **lock_options(p))
    for warning in result.pop('warnings'):
        module.warn(warning)
    return result


def main():
    spec = table_argument_spec()
    spec.update(lock_argument_spec())
    spec.update(
        premake=dict(type='int', default=3),
        alert_days=dict(type='int', default=14),
        retention_months=dict(type='int'),
        backup_dir=dict(type='path'),
        pg_dump_path=dict(type='path'),
        pg_restore_path=dict(type='path'),
    )
    run_module(spec, work, required_by={'retention_months': ['backup_dir']})


if __name__ == '__main__':
    main()
