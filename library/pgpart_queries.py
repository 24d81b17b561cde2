#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: pgpart_queries
short_description: Time critical read queries and check that their plans prune partitions, changing nothing
description:
  - Runs each of I(critical_queries) I(warmup) times untimed and then I(runs) times timed, and returns the
    median, minimum and maximum time in milliseconds, the number of rows of the result and, with I(explain),
    whether the plan prunes partitions (how many partitions of each partitioned table it reads, out of how many).
  - Used before and after a conversion to compare timings (the deployment checklist's "test critical queries"
    and "monitor performance"), and at any time as a read-only probe.
  - "Read-only, by three layers: each query must be exactly one statement and a read (C(SELECT), C(WITH),
    C(VALUES) or C(TABLE)), checked before anything is sent, so C(SELECT 1; COMMIT; DELETE ...) is refused;
    every run happens in its own C(BEGIN ... READ ONLY) transaction, so a writing function, a data-modifying
    C(WITH) or C(nextval()) fails; and every transaction ends with C(ROLLBACK), never C(COMMIT)."
  - Each run has its own C(statement_timeout) (C(SET LOCAL)); the session's own settings are reset first, so
    the queries see the role's and database's C(search_path) and C(TimeZone), as the application does.
  - "Pruning is read from C(EXPLAIN (VERBOSE, FORMAT JSON)), which includes pruning at executor start-up
    (C(created_at > now() - interval '6 months') is pruned then, not at plan time: C(Subplans Removed))."
  - A query that fails (error, timeout, refused) is reported in C(failed_queries) with its error; the other
    queries still run. With I(fail_on_error) (the default) the task then fails.
version_added: "1.0.0"
author: pgpart maintainers
extends_documentation_fragment:
  - pgpart_connection
  - pgpart_connection.READ_ONLY
options:
  critical_queries:
    description: The queries, each with a unique I(name) and its I(sql).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: A short unique name, used in reports and to compare runs.
        type: str
        required: true
      sql:
        description: One read statement (a trailing semicolon is allowed). No parameters.
        type: str
        required: true
      runs:
        description: Timed runs of this query (default I(runs)).
        type: int
      statement_timeout_ms:
        description: C(statement_timeout) of this query's runs (default I(statement_timeout_ms)).
        type: int
  runs:
    description: Timed runs of each query; the median is reported.
    type: int
    default: 3
  warmup:
    description: Untimed runs of each query before the timed ones (they fill the caches).
    type: int
    default: 1
  statement_timeout_ms:
    description: C(statement_timeout) of every run, set with C(SET LOCAL) in its own transaction.
    type: int
    default: 60000
  explain:
    description: Also read each query's plan and report whether it prunes partitions.
    type: bool
    default: true
  max_rows:
    description:
      - Return at most this many rows of each result (as C(result)), for example the count of a C(COUNT(*)) query.
      - 0 returns none; keep it small and remember reports may be stored.
    type: int
    default: 0
  fail_on_error:
    description: Fail the task when any query fails or is refused (every query is still run and reported).
    type: bool
    default: true
notes:
  - Read-only means the queries cannot change data through this connection. A function that opens another
    connection (C(dblink)) is outside any transaction of ours; critical queries are the operator's own reads.
  - The reported times are measured by the client around execute and fetch, so they include the network.
seealso:
  - module: pgpart_convert
  - module: pgpart_verify
'''

EXAMPLES = r'''
- name: Deployment | Critical queries | Before the conversion
  pgpart_queries:
    database_url: "{{ database_url }}"
    critical_queries:
      - name: event_impressions 6-month count
        sql: SELECT COUNT(*) FROM event_impressions WHERE created_at > now() - interval '6 months'
      - name: ticket revenue, last 6 months
        sql: >-
          SELECT sum(quantity * unit_price) FROM ticket_analytics
          WHERE created_at > now() - interval '6 months'
        statement_timeout_ms: 10000
    runs: 5
    max_rows: 1
  register: before

- name: Show the medians
  ansible.builtin.debug:
    msg: "{{ before.by_name }}"
'''

RETURN = r'''
timings:
  description:
    - One entry per query, in order, with C(name), C(sql), C(runs), C(samples_ms), C(median_ms), C(min_ms),
      C(max_ms), C(rows) (of the last run), C(result) (at most I(max_rows) rows, values as JSON types),
      C(prunes) (null without I(explain)), C(partitions_scanned), C(partitions_total), C(partitioned_tables)
      (each C(table), C(partitions_scanned), C(partitions_total)), C(subplans_removed), C(error) and
      C(plan_error) (null when fine).
  returned: always
  type: list
  elements: dict
  sample:
    - name: event_impressions 6-month count
      median_ms: 41.3
      rows: 1
      result: [[1864]]
      prunes: true
      partitions_scanned: 10
      partitions_total: 36
      error: null
by_name:
  description: Median milliseconds by query name (null for a query that failed).
  returned: always
  type: dict
  sample: {"event_impressions 6-month count": 41.3}
failed_queries:
  description: Names of the queries that failed or were refused.
  returned: always
  type: list
  elements: str
msg:
  description: One line per query.
  returned: always
  type: str
queries:
  description: SQL that changed something (always empty for this module).
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.pgpart_module import run_module
from ansible.module_utils.pgpart_db import PgpartError
from ansible.module_utils.pgpart_queries import run_queries, summary_line


def work(module, session):
    p = module.params
    for option in ('runs', 'statement_timeout_ms'):
        if p[option] < 1:
            module.fail_json(msg='%s must be at least 1' % option)
    if p['warmup'] < 0 or p['max_rows'] < 0:
        module.fail_json(msg='warmup and max_rows must not be negative')
    timings = run_queries(session, p['critical_queries'], runs=p['runs'], warmup=p['warmup'],
                          statement_timeout_ms=p['statement_timeout_ms'], explain=p['explain'],
                          max_rows=p['max_rows'])
    failed = [t['name'] for t in timings if t['error']]
    result = {'changed': False, 'timings': timings, 'failed_queries': failed,
              'by_name': dict((t['name'], t['median_ms']) for t in timings),
              'msg': '; '.join(summary_line(t) for t in timings)}
    if failed and p['fail_on_error']:
        raise PgpartError('%d critical quer%s failed, nothing was changed: %s' % (
            len(failed), 'y' if len(failed) == 1 else 'ies',
            '; '.join(summary_line(t) for t in timings if t['error'])),
            **dict((k, v) for k, v in result.items() if k not in ('changed', 'msg')))
    return result


def main():
    query = dict(name=dict(type='str', required=True), sql=dict(type='str', required=True),
                 runs=dict(type='int'), statement_timeout_ms=dict(type='int'))
    run_module(dict(
        critical_queries=dict(type='list', elements='dict', required=True, options=query),
        runs=dict(type='int', default=3),
        warmup=dict(type='int', default=1),
        statement_timeout_ms=dict(type='int', default=60000),
        explain=dict(type='bool', default=True),
        max_rows=dict(type='int', default=0),
        fail_on_error=dict(type='bool', default=True),
    ), work)


if __name__ == '__main__':
    main()
