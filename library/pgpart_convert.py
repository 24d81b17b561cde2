#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: pgpart_convert
short_description: Convert a table to monthly range partitions online, resumably
description:
  - Converts a plain table into a table partitioned by month on I(column) while the application keeps writing.
  - "Phases, each recorded in the journal (schema C(pgpart) of the target database) together with its work:
    C(prepare) (the partitioned C(<table>_new) built from the catalog: columns, defaults, identity, generated
    columns, CHECKs, primary key (id, key), unique constraints, foreign keys, policies, comments; partitions created
    as tables with a CHECK and attached), C(sync) (a row trigger applies every INSERT, UPDATE, DELETE and TRUNCATE to
    the new table, installed before any copy), C(backfill) (physical chunks copied in parallel, each chunk one
    transaction with its own statement_timeout; then every other index built CONCURRENTLY per partition and attached,
    and C(VACUUM (ANALYZE)) of the new table), C(verify) (per-month count and hash,
    zero tolerance), C(swap) (one short transaction under lock_timeout, retried with backoff and jitter),
    C(analyze)."
  - "After the swap the original table is C(<table>_old), kept exactly current by a reverse trigger until
    cleanup, so a rollback loses nothing. Partitions are named C(<table>_pYYYYMM), plus C(<table>_phistory)
    for sparse old history."
  - A killed run continues from the recorded phase when re-run. A converted table reports C(changed=false).
  - Runs the same assessment as M(pgpart_assess) first and refuses, changing nothing, if the table is not eligible.
  - Runs for as long as the copy takes; run it with C(async) and poll M(pgpart_progress) to show progress.
version_added: "1.0.0"
author: pgpart maintainers
extends_documentation_fragment:
  - pgpart_connection
  - pgpart_connection.TABLE
  - pgpart_connection.LOCKS
options:
  premake:
    description: Future months to create partitions for, beyond the current month.
    type: int
    default: 3
  max_future_months:
    description: Rows further ahead than this many months make the table ineligible.
    type: int
    default: 24
  batch_rows:
    description: About how many rows one backfill chunk (one transaction) copies.
    type: int
    default: 50000
  workers:
    description: Connections working in parallel on the backfill chunks, then on the partition indexes (built CONCURRENTLY after the copy). Each is one more backend on the server; 2 suits a small instance.
    type: int
    default: 2
  statement_timeout_ms:
    description: statement_timeout of each backfill chunk (Supabase's default for the API roles is much lower; this is set per transaction).
    type: int
    default: 120000
  batch_pause_ms:
    description: Pause of each worker between chunks, to leave room for the workload.
    type: int
    default: 0
  stop_before:
    description: Stop before this phase (for example C(swapped) to swap in a later run or window).
    type: str
    choices: [syncing, backfilled, verified, swapped, converted]
attributes:
  check_mode:
    support: full
    description: Builds the partitioned table inside a transaction that is rolled back (proving the DDL against this server) and returns the SQL every phase would run; the live table is not touched or locked.
  diff_mode:
    support: none
'''

EXAMPLES = r'''
- name: Deployment | Convert event_impressions
  pgpart_convert:
    database_url: "{{ database_url }}"
    table: event_impressions
    workers: 2
    lock_timeout_ms: 500
  async: 86400
  poll: 0
  register: convert_job

- name: Prepare and copy now, swap in tonight's window
  pgpart_convert:
    database_url: "{{ database_url }}"
    table: ticket_analytics
    stop_before: swapped
'''

RETURN = r'''
table:
  description: schema.table
  returned: always
  type: str
state_before:
  description: State found by the assessment (plain, in_progress, swapped, converted).
  returned: always
  type: str
phase:
  description: Journal phase at the end (C(converted) when complete).
  returned: always
  type: str
steps:
  description: The phases run by this call, each with its seconds and details (chunks and rows copied, swap attempts and lock_ms).
  returned: always
  type: list
  elements: dict
partitions:
  description: Names of the planned partitions.
  returned: always
  type: list
  elements: str
verification:
  description: Summary of the pre-swap verification (rows on each side, months compared, mismatches).
  returned: when verified
  type: dict
concerns:
  description: Concerns from the assessment.
  returned: always
  type: list
  elements: str
would_run:
  description: In check mode, the phases that would run.
  returned: in check mode
  type: list
  elements: str
queries:
  description: SQL that changed something, or would in check mode.
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.pgpart_module import lock_argument_spec, run_module, table_argument_spec
from ansible.module_utils.pgpart_convert import Conversion

OPTIONS = ('premake', 'max_future_months', 'batch_rows', 'workers', 'statement_timeout_ms', 'batch_pause_ms',
           'lock_timeout_ms', 'lock_attempts', 'max_backoff_ms', 'stop_before', 'column')


def work(module, session):
    p = module.params
    result = Conversion(session, p['schema'], p['table'], **dict((k, p[k]) for k in OPTIONS)).run()
    for concern in result['concerns']:
        module.warn(concern)
    return result


def main():
    spec = table_argument_spec()
    spec.update(lock_argument_spec())
    spec.update(
        premake=dict(type='int', default=3),
        max_future_months=dict(type='int', default=24),
        batch_rows=dict(type='int', default=50000),
        workers=dict(type='int', default=2),
        statement_timeout_ms=dict(type='int', default=120000),
        batch_pause_ms=dict(type='int', default=0),
        stop_before=dict(type='str', choices=['syncing', 'backfilled', 'verified', 'swapped', 'converted']),
    )
    run_module(spec, work)


if __name__ == '__main__':
    main()
