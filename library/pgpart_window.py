#!/usr/bin/python
# -*- coding: utf-8 -*-
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
module: pgpart_window
short_description: Refuse to proceed outside the environment's low-traffic window
description:
  - Says whether now (or I(now)) is inside the low-traffic I(window), when the window closes (inside) or
    opens next (outside), and fails outside it unless I(ignore) is set (the deployment checklist's
    "schedule low-traffic window").
  - "A window is a dict: I(days) the window starts on (C(mon) .. C(sun), full names accepted; empty means every
    day), I(start) and I(end) as C(HH:MM) local times in I(timezone) (an IANA name, default C(UTC); daylight
    saving time is honoured). An I(end) earlier than I(start) crosses midnight: C({days: [sat], start: '23:00',
    end: '02:00'}) is Saturday 23:00 to Sunday 02:00. I(end) equal to I(start) is 24 hours; C(24:00) is accepted
    as an end."
  - No window (null or an empty dict) allows any time.
  - Does not connect to any database; runs on the controller.
version_added: "1.0.0"
author: pgpart maintainers
options:
  window:
    description: The low-traffic window C({days, start, end, timezone}), or null for none.
    type: dict
  ignore:
    description:
      - Proceed outside the window (or with less than I(min_minutes_left) left), with a warning.
      - The playbooks map C(-e pgpart_ignore_window=true) to it.
    type: bool
    default: false
  fail_outside:
    description: Fail the task when not allowed. When false, only report (C(allowed=false)).
    type: bool
    default: true
  min_minutes_left:
    description: Inside the window, also require that it stays open at least this many more minutes.
    type: int
    default: 0
  now:
    description:
      - The instant to judge, ISO 8601 with an offset (C(2026-01-03T02:30:00Z)). Default the current time.
      - For previews ("would Saturday 03:00 be inside?") and tests.
    type: str
attributes:
  check_mode:
    support: full
    description: Changes nothing either way.
  diff_mode:
    support: none
notes:
  - The window's days are the days it starts on, so a midnight-crossing window's early hours belong to the
    previous day's window.
'''

EXAMPLES = r'''
- name: Pre-deployment | Low-traffic window | Honour the weekend night window
  pgpart_window:
    window:
      days: [sat, sun]
      start: "02:00"
      end: "05:00"
      timezone: Europe/Berlin
    ignore: "{{ pgpart_ignore_window | default(false) | bool }}"
    min_minutes_left: 30

- name: Would Saturday 23:30 in New York be inside a Friday-night window?
  pgpart_window:
    window: {days: [fri], start: "22:00", end: "06:00", timezone: America/New_York}
    now: "2026-01-03T04:30:00Z"
    fail_outside: false
  register: preview
'''

RETURN = r'''
inside:
  description: Now is inside the window (true when there is no window).
  returned: always
  type: bool
allowed:
  description: The caller may proceed (inside with enough time left, or I(ignore)).
  returned: always
  type: bool
ignored:
  description: The window check was overridden by I(ignore) while it would have refused.
  returned: always
  type: bool
window:
  description: The window as understood (days as C(mon) .. C(sun), start, end, timezone), or null.
  returned: always
  type: dict
description:
  description: The window in words, e.g. C(sat, sun 02:00-05:00 UTC).
  returned: always
  type: str
now:
  description: The instant judged, in the window's time zone (ISO 8601).
  returned: always
  type: str
closes_at:
  description: When the current window closes (ISO 8601, window's time zone).
  returned: when inside a window
  type: str
minutes_left:
  description: Minutes until the current window closes.
  returned: when inside a window
  type: float
opens_at:
  description: When the window opens next (ISO 8601, window's time zone).
  returned: when outside the window
  type: str
minutes_until_open:
  description: Minutes until the window opens next.
  returned: when outside the window
  type: float
msg:
  description: One human line.
  returned: always
  type: str
queries:
  description: Always empty (no database is involved).
  returned: always
  type: list
  elements: str
'''

from ansible.module_utils.pgpart_module import run_module
from ansible.module_utils.pgpart_db import PgpartError
from ansible.module_utils.pgpart_window import WindowError, evaluate


def work(module, session):
    p = module.params
    try:
        result = evaluate(p['window'], now=p['now'], ignore=p['ignore'], min_minutes_left=p['min_minutes_left'])
    except WindowError as exc:
        module.fail_json(msg='invalid low-traffic window: %s' % exc)
    if result['ignored']:
        module.warn(result['msg'])
    if not result['allowed'] and p['fail_outside']:
        raise PgpartError('%s. Wait for the window, or override (ignore=true; the playbooks: '
                          '-e pgpart_ignore_window=true).' % result['msg'],
                          **dict((k, v) for k, v in result.items() if k != 'msg'))
    result['changed'] = False
    return result


def main():
    run_module(dict(
        window=dict(type='dict'),
        ignore=dict(type='bool', default=False),
        fail_outside=dict(type='bool', default=True),
        min_minutes_left=dict(type='int', default=0),
        now=dict(type='str'),
    ), work, connects=False)


if __name__ == '__main__':
    main()
