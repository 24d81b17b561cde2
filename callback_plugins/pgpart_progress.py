# -*- coding: utf-8 -*-
"""Print the progress line of every pgpart_progress poll, retries included."""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r'''
name: pgpart_progress
type: notification
short_description: Print each pgpart_progress poll's message (rows done/total, rate, ETA)
description:
  - "A conversion runs with C(async); its progress is polled by a C(pgpart_progress) task in an C(until) loop.
    The default output shows only C(FAILED - RETRYING) for each poll; this callback prints the poll's C(msg)
    too, e.g. C(event_impressions: copying 41% (12/29 chunks), 410000 of ~1000000 rows, 52000 rows/s, ETA 11s),
    with the host and the time."
  - Only results of the C(pgpart_progress) module are printed; every other task is left to the stdout callback.
  - Enabled in the project's C(ansible.cfg) (C(callbacks_enabled = pgpart_progress)).
requirements:
  - enable in configuration (callbacks_enabled)
'''

import time

from ansible.plugins.callback import CallbackBase

MODULE = 'pgpart_progress'


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = 'notification'
    CALLBACK_NAME = 'pgpart_progress'
    CALLBACK_NEEDS_ENABLED = True

    @staticmethod
    def _data(result):
        data = getattr(result, 'result', None)  # ansible-core 2.19+
        return data if data is not None else result._result

    @staticmethod
    def _is_progress(result):
        task = result._task
        names = (getattr(task, 'action', None), getattr(task, 'resolved_action', None))
        return any(n and (n == MODULE or n.endswith('.' + MODULE)) for n in names)

    def _show(self, result, final=False):
        if not self._is_progress(result):
            return
        data = self._data(result)
        message = data.get('msg')
        if not message or data.get('_ansible_no_log'):
            return
        host = result._host.get_name() if getattr(result, '_host', None) else '?'
        suffix = '' if final else ' (poll %s)' % data.get('attempts', '?')
        self._display.display('  pgpart progress %s [%s] %s%s' % (time.strftime('%H:%M:%S'), host, message, suffix))

    def v2_runner_retry(self, result):
        self._show(result)

    def v2_runner_on_ok(self, result):
        self._show(result, final=True)
