#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: pgpart_progress
short_description: Report the progress of a running pgpart conversion from its journal
description:
  - Reads the journal of a table being converted by M(pgpart_convert) (usually started with C(async)) and returns
    its phase, chunks and rows copied, rate and ETA, and whether a run is still working on it.
  - Waits up to I(wait_seconds) for the next copied chunk before answering, so a polling loop with C(until)
    prints a line about every I(wait_seconds) (the C(pgpart_progress) callback plugin prints C(msg) on each retry).
  - A run is "running" while it holds the table's advisory lock; the lock goes with its connection, so a killed
    run is never reported as running.
version_added: "1.0.0"
author: pgpart maintainers
extends_documentation_fragment:
  - pgpart_connection
  - pgpart_connection.READ_ONLY
  - pgpart_connection.TABLE
options:
  wait_seconds:
    description: Longest wait for a change before answering.
    type: int
    default: 10
'''

EXAMPLES = r'''
- name: Deployment | Convert | Progress of event_impressions
  pgpart_progress:
    database_url: "{{ database_url }}"
    table: event_impressions
  register: progress
  until: not progress.running
  retries: 8640
  delay: 0
'''

RETURN = r'''
msg:
  description: "One human line, e.g. C(event_impressions: copying 41% (12/29 chunks), 410000 of ~1000000 rows, 52000 rows/s, ETA 11s)."
  returned: always
  type: str
running:
  description: A pgpart run holds the table's lock right now.
  returned: always
  type: bool
phase:
  description: The last phase the journal recorded (null before the first).
  returned: always
  type: str
chunks_done:
  description: Backfill chunks copied.
  returned: always
  type: int
chunks:
  description: Backfill chunks in all (null before the backfill starts).
  returned: always
  type: int
rows_done:
  description: Rows copied by the backfill (rows the sync trigger carried are not counted).
  returned: always
  type: int
rows_estimate:
  description: Rows in the table when the backfill started (planner estimate).
  returned: always
  type: int
rate_rows_per_s:
  description: Copy rate over the chunks copied so far.
  returned: always
  type: float
eta_seconds:
  description: Estimated seconds until the copy ends (null when unknown).
  returned: always
  type: float
queries:
  description: Always empty (read-only).
  returned: always
  type: list
  elements: str
'''

import time

from ansible.module_utils.pgpart_module import run_module, table_argument_spec
from ansible.module_utils import pgpart_journal as journal

NEXT_STEP = {None: 'assessing and preparing', 'prepared': 'installing the sync trigger',
             'syncing': 'copying', 'backfilled': 'verifying every month (one scan of both tables)',
             'verified': 'waiting for the swap locks', 'swapped': 'analyzing', 'converted': 'done',
             'cleaned': 'done (cleaned up)', 'rolled_back': 'rolled back'}


def snapshot(session, schema, table):
    entry = journal.read(session, schema, table)
    chunking = (entry or {}).get('backfill') or {}
    done = journal.backfill_progress(session, schema, table) if entry else None
    done = done or {'chunks_done': 0, 'rows_done': 0, 'seconds': None}
    return {
        'phase': entry['phase'] if entry else None,
        'running': session.table_lock_holder(schema, table) is not None,
        'chunks_done': done['chunks_done'], 'chunks': chunking.get('chunks'),
        'rows_done': done['rows_done'], 'rows_estimate': chunking.get('rows_estimate'),
        'copy_seconds': done['seconds'],
    }


def describe(table, state):
    phase = state['phase']
    if not state['running'] and phase not in ('converted', 'cleaned', 'rolled_back'):
        return '%s: no run is working on it (journal phase: %s)' % (table, phase)
    line = '%s: %s' % (table, NEXT_STEP.get(phase, phase))
    if phase == 'syncing' and state['chunks']:
        line += ' %d%% (%d/%d chunks), %d of ~%d rows' % (
            100 * state['chunks_done'] // max(state['chunks'], 1), state['chunks_done'], state['chunks'],
            state['rows_done'], state['rows_estimate'] or 0)
        if state['rate_rows_per_s']:
            line += ', %d rows/s' % state['rate_rows_per_s']
        if state['eta_seconds'] is not None:
            line += ', ETA %ds' % state['eta_seconds']
    return line


def rates(state):
    seconds, done, total = state.pop('copy_seconds'), state['chunks_done'], state['chunks']
    rate = eta = None
    if seconds and done > 1:
        # Chunks are timed from the first one's completion: done - 1 chunks over `seconds`.
        rate = round(state['rows_done'] * (done - 1) / done / seconds, 1)
        if total:
            eta = round((total - done) * seconds / (done - 1), 1)
    state.update(rate_rows_per_s=rate, eta_seconds=eta)
    return state


def work(module, session):
    p = module.params
    first = snapshot(session, p['schema'], p['table'])
    deadline = time.time() + p['wait_seconds']
    state = first
    while time.time() < deadline and state['running']:
        time.sleep(min(1.0, max(0.0, deadline - time.time())))
        state = snapshot(session, p['schema'], p['table'])
        if (state['phase'], state['chunks_done']) != (first['phase'], first['chunks_done']):
            break
    state = rates(state)
    state['msg'] = describe(p['table'], state)
    return dict(state, changed=False)


def main():
    spec = table_argument_spec()
    spec.update(wait_seconds=dict(type='int', default=10))
    run_module(spec, work)


if __name__ == '__main__':
    main()
