#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: pgpart_rollback
short_description: Roll a pgpart conversion back without losing a row
description:
  - "Before the swap (a conversion stopped or killed part-way): removes the sync trigger and the partial
    C(<table>_new); the original table, which never stopped being live, is untouched."
  - "After the swap and before cleanup: proves C(<table>_old) equals the live partitioned table month by month
    (the reverse trigger kept it current: every insert, update and delete since the swap), then swaps back in one
    short transaction under lock_timeout: the original table gets its name, indexes, grants, RLS flags, triggers,
    views, BEGIN ATOMIC functions, publication membership and sequences (ids continue) back. The partitioned table is
    then dropped."
  - "After cleanup: refuses, because C(<table>_old) no longer exists, and returns the restore-from-backup
    procedure and the latest backup manifest."
  - "With I(force): rolls back even when the two tables differ, keeping the partitioned table aside as
    C(<table>_new) instead of dropping it, so nothing is lost."
  - Idempotent; a re-run finishes a rollback that was interrupted.
version_added: "1.0.0"
author: pgpart maintainers
extends_documentation_fragment:
  - pgpart_connection
  - pgpart_connection.TABLE
  - pgpart_connection.LOCKS
options:
  force:
    description: Roll back even when C(<table>_old) and the partitioned table differ (the partitioned table is kept aside).
    type: bool
    default: false
attributes:
  check_mode:
    support: full
    description: Checks that the rollback is possible (including the data comparison) and reports what it would do.
  diff_mode:
    support: none
'''

EXAMPLES = r'''
- name: Rollback | Restore the original event_impressions
  pgpart_rollback:
    database_url: "{{ database_url }}"
    table: event_impressions
'''

RETURN = r'''
action:
  description: C(remove_partial), C(swap_back), C(drop_leftover) or C(none).
  returned: always
  type: str
rows:
  description: Rows in the restored table.
  returned: after a swap back
  type: int
lock_ms:
  description: Duration of the transaction holding the exclusive locks.
  returned: when locks were taken
  type: float
kept_aside:
  description: Name of the partitioned table kept because the tables differed (force).
  returned: when forced with differences
  type: str
queries:
  description: SQL that changed something.
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.pgpart_module import lock_argument_spec, lock_options, run_module, table_argument_spec
from ansible.module_utils.pgpart_rollback import rollback


def work(module, session):
    p = module.params
    return rollback(session, p['schema'], p['table'], force=p['force'], **lock_options(p))


def main():
    spec = table_argument_spec()
    spec.update(lock_argument_spec())
    spec.update(force=dict(type='bool', default=False))
    run_module(spec, work)


if __name__ == '__main__':
    main()
