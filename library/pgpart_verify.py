#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: pgpart_verify
short_description: Prove a converted table holds exactly the original's rows, structure and security
description:
  - For a table converted by M(pgpart_convert), checks and reports, failing when anything differs.
  - "Data, while C(<table>_old) exists: per UTC month, in one snapshot, C(count(*)) and
    C(sum(hashtextextended(row::text, 0))) of C(<table>_old) and of the partitions are equal, zero tolerance."
  - "Structure: the partition tree is exactly the plan; every index is valid and present on every partition;
    no id appears twice; each sequence belongs to the new table and is past the highest value; columns,
    constraints, indexes, policies, owner, grants, RLS flags, triggers and publications equal the original's;
    partitions have RLS on and no grants; views read the partitioned table with their options;
    C(<table>_old) could be dropped without CASCADE; EXPLAIN of a 6-month range query prunes the older
    partitions."
version_added: "1.0.0"
author: pgpart maintainers
extends_documentation_fragment:
  - pgpart_connection
  - pgpart_connection.READ_ONLY
  - pgpart_connection.TABLE
options:
  fail_on_mismatch:
    description: Fail the task when any check fails (the report is returned either way).
    type: bool
    default: true
'''

EXAMPLES = r'''
- name: Deployment | Verify event_impressions
  pgpart_verify:
    database_url: "{{ database_url }}"
    table: event_impressions
  register: verification
'''

RETURN = r'''
ok:
  description: Every check passed.
  returned: always
  type: bool
failed_checks:
  description: The names of the checks that failed.
  returned: always
  type: list
  elements: str
checks:
  description: Every check with C(check) (what it proves), C(ok) and C(detail) (what differs).
  returned: always
  type: list
  elements: dict
data:
  description: Rows in C(<table>_old) and in the partitions, and the per-month comparison.
  returned: while <table>_old exists
  type: dict
phase:
  description: Journal phase of the table.
  returned: always
  type: str
queries:
  description: Always empty (read-only).
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.pgpart_module import run_module, table_argument_spec
from ansible.module_utils.pgpart_db import PgpartError
from ansible.module_utils.pgpart_verify import verify_converted


def work(module, session):
    p = module.params
    report = verify_converted(session, p['schema'], p['table'])
    result = {'ok': report['ok'], 'failed_checks': report['failed'], 'checks': report['checks'],
              'data': report['data'], 'phase': report['phase'], 'changed': False}
    if p['fail_on_mismatch'] and not report['ok']:
        raise PgpartError('verification of %s.%s failed: %s' % (p['schema'], p['table'], '; '.join(report['failed'])),
                          **result)
    return result


def main():
    spec = table_argument_spec()
    spec.update(fail_on_mismatch=dict(type='bool', default=True))
    run_module(spec, work)


if __name__ == '__main__':
    main()
