#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: pgpart_assess
short_description: Pre-flight report on a table to be converted to monthly range partitions
description:
  - Reads a table and reports whether pgpart can convert it online to monthly range partitions on I(column),
    with every reason when it cannot, and the partition plan when it can.
  - Refuses (C(eligible=false)) tables with incoming foreign keys (naming each), unique constraints that cannot
    include the key, no primary key, a nullable or NULL-holding key, rows too far in the future, materialized views
    or other objects that would keep pointing at the retired table, unsupported servers (before PostgreSQL 14),
    standbys, and names pgpart needs that are taken.
  - Warns about membership of C(supabase_realtime) (Realtime does not deliver changes of partitioned tables),
    publications without C(publish_via_partition_root), functions using the table's row type, and, from
    C(pg_stat_statements) when installed, queries that will not prune and primary-key upserts whose meaning changes.
  - Reads only. Counting rows per month scans the table once.
version_added: "1.0.0"
author: pgpart maintainers
extends_documentation_fragment:
  - pgpart_connection
  - pgpart_connection.READ_ONLY
  - pgpart_connection.TABLE
options:
  premake:
    description: Future months to create partitions for, beyond the current month.
    type: int
    default: 3
  max_future_months:
    description: Rows further ahead than this many months make the table ineligible (probably bad data).
    type: int
    default: 24
  review_workload:
    description: Review the workload's statements on the table from C(pg_stat_statements), when installed.
    type: bool
    default: true
  fail_on_refusal:
    description: Fail the task when the table is not eligible (the message lists every reason).
    type: bool
    default: false
'''

EXAMPLES = r'''
- name: Pre-deployment | Assess event_impressions
  pgpart_assess:
    database_url: "{{ database_url }}"
    table: event_impressions
  register: assessment

- name: Refuse orders, naming every referencing foreign key
  pgpart_assess:
    database_url: "{{ database_url }}"
    table: orders
    fail_on_refusal: true
'''

RETURN = r'''
eligible:
  description: Whether the table can be converted (or already is).
  returned: always
  type: bool
state:
  description: C(plain), C(in_progress) (a run stopped part-way), C(swapped), C(converted), C(partitioned) (by someone else), C(missing).
  returned: always
  type: str
reasons:
  description: Every reason the table is refused; empty when eligible.
  returned: always
  type: list
  elements: str
  sample: ["foreign key order_items_order_id_fkey on public.order_items references this table: ..."]
concerns:
  description: Things someone should know; they do not stop the conversion (also shown as task warnings).
  returned: always
  type: list
  elements: str
facts:
  description: Size, row estimate, owner, primary key, id generation (owned/identity), incoming foreign keys, indexes, views, functions, triggers, policies, grants, RLS flags, publications, replica identity.
  returned: when the table exists
  type: dict
key_stats:
  description: Rows, NULL count, min and max of the key.
  returned: when the table is plain
  type: dict
plan:
  description: The partitions that would cover every row (a history partition from MINVALUE, one per month up to the current month plus premake).
  returned: when the table is plain or converted
  type: dict
workload:
  description: Findings from pg_stat_statements (kind, warning, calls, query).
  returned: when review_workload and the table is plain
  type: list
  elements: dict
queries:
  description: Statements that changed something (always empty for this module).
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.pgpart_module import run_module, table_argument_spec
from ansible.module_utils.pgpart_assess import assess_table
from ansible.module_utils.pgpart_convert import refusal_message
from ansible.module_utils.pgpart_db import PgpartError


def work(module, session):
    p = module.params
    report = assess_table(session, p['schema'], p['table'], p['column'], p['premake'], p['max_future_months'],
                          p['review_workload'])
    if p['fail_on_refusal'] and not report['eligible']:
        raise PgpartError(refusal_message(report), **report)
    for concern in report['concerns']:
        module.warn(concern)
    return dict(report, changed=False)


def main():
    spec = table_argument_spec()
    spec.update(
        premake=dict(type='int', default=3),
        max_future_months=dict(type='int', default=24),
        review_workload=dict(type='bool', default=True),
        fail_on_refusal=dict(type='bool', default=False),
    )
    run_module(spec, work)


if __name__ == '__main__':
    main()
