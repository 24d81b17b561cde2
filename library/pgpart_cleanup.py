#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: pgpart_cleanup
short_description: Drop the retired original table after the validation window, only when it is safe
description:
  - Drops C(<table>_old) of a table converted by M(pgpart_convert), reclaiming its disk space.
  - "Only when every gate passes, otherwise it fails and changes nothing: the swap was at least
    I(min_age_hours) ago; full verification (as M(pgpart_verify)) passes now; the latest recorded backup's
    dump still verifies (size, sha256, read whole by pg_restore, row count)."
  - Removes the reverse trigger and drops the table WITHOUT CASCADE in one short transaction under lock_timeout;
    an object still depending on it is an error that names it.
  - After cleanup a rollback is no longer possible online (M(pgpart_rollback) then explains the restore).
version_added: "1.0.0"
author: pgpart maintainers
extends_documentation_fragment:
  - pgpart_connection
  - pgpart_connection.TABLE
  - pgpart_connection.LOCKS
options:
  min_age_hours:
    description: Validation window; the swap must be at least this old.
    type: float
    default: 24
  pg_restore_path:
    description: pg_restore to verify the backup with (default the newest found, at least the server's version).
    type: path
attributes:
  check_mode:
    support: full
    description: Evaluates every gate and reports what would be dropped and the bytes it would reclaim.
  diff_mode:
    support: none
'''

EXAMPLES = r'''
- name: Post-deployment | Cleanup | Drop event_impressions_old
  pgpart_cleanup:
    database_url: "{{ database_url }}"
    table: event_impressions
    min_age_hours: 48
'''

RETURN = r'''
dropped:
  description: The table dropped.
  returned: when dropped
  type: str
bytes_reclaimed:
  description: Size of the dropped table with its indexes and TOAST.
  returned: when dropped or in check mode
  type: int
hours_since_swap:
  description: Age of the swap.
  returned: when the table is converted
  type: float
verification:
  description: Result of the verification gate (ok, failed checks).
  returned: when the table is converted
  type: dict
backup:
  description: The backup gate (manifest, ok, taken_at).
  returned: when a backup is recorded
  type: dict
gates:
  description: Every gate that failed.
  returned: on refusal
  type: list
  elements: str
queries:
  description: SQL that changed something, or would in check mode.
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.pgpart_module import lock_argument_spec, lock_options, run_module, table_argument_spec
from ansible.module_utils.pgpart_cleanup import cleanup


def work(module, session):
    p = module.params
    return cleanup(session, p['schema'], p['table'], min_age_hours=p['min_age_hours'], pg_restore=p['pg_restore_path'],
                   **lock_options(p))


def main():
    spec = table_argument_spec()
    spec.update(lock_argument_spec())
    spec.update(min_age_hours=dict(type='float', default=24), pg_restore_path=dict(type='path'))
    run_module(spec, work)


if __name__ == '__main__':
    main()
