# -*- coding: utf-8 -*-
"""The common life of a pgpart module: spec, connect, work, report.

    def main():
        run_module(dict(table=dict(type='str', required=True)), work)

`work(module, session)` returns the result dict.  Every module returns `queries` (the SQL
that changed something, or would in check mode), fails with a message scrubbed of
secrets, and reports PgpartError details as extra result keys.
"""
from __future__ import absolute_import, division, print_function

__metaclass__ = type

import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.pgpart_db import (HAS_PSYCOPG2, LOCK_DEFAULTS, PSYCOPG2_IMPORT_ERROR, PgpartError, connect,
                                            connection_argument_spec, psycopg2, redact, secrets_of)


def table_argument_spec():
    """The options naming one table of `partition_tables`."""
    return dict(
        table=dict(type='str', required=True, aliases=['name']),
        schema=dict(type='str', default='public'),
        column=dict(type='str', default='created_at'),
        interval=dict(type='str', default='month', choices=['month']),
    )


def lock_argument_spec():
    """Options of steps that take short exclusive locks (swap, cleanup, rollback)."""
    return dict(
        lock_timeout_ms=dict(type='int', default=LOCK_DEFAULTS['lock_timeout_ms']),
        lock_attempts=dict(type='int', default=LOCK_DEFAULTS['lock_attempts']),
        max_backoff_ms=dict(type='int', default=LOCK_DEFAULTS['max_backoff_ms']),
    )


def lock_options(params):
    """The lock options of a module's parameters, as keyword arguments."""
    return dict((name, params[name]) for name in LOCK_DEFAULTS)


def run_module(argument_spec, work, connects=True, **module_kwargs):
    spec = connection_argument_spec() if connects else {}
    spec.update(argument_spec)
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True, **module_kwargs)
    if connects and not HAS_PSYCOPG2:
        module.fail_json(msg=missing_required_lib('psycopg2'), exception=str(PSYCOPG2_IMPORT_ERROR))
    secrets = secrets_of(module.params) if connects else []
    session = None
    try:
        if connects:
            session = connect(module.params, check_mode=module.check_mode)
        result = work(module, session)
    except PgpartError as exc:
        module.fail_json(msg=redact(str(exc), secrets), queries=_queries(session, secrets),
                         **scrub(exc.details, secrets))
    except Exception as exc:  # an unexpected failure still must not leak a secret
        message = str(exc).strip()
        if HAS_PSYCOPG2 and isinstance(exc, psycopg2.Error):
            message = 'PostgreSQL error: %s' % message
        module.fail_json(msg=redact(message, secrets), queries=_queries(session, secrets),
                         exception=redact(traceback.format_exc(), secrets))
    finally:
        if session is not None:
            session.close()
    result.setdefault('changed', False)
    result['queries'] = _queries(session, secrets)
    module.exit_json(**scrub(result, secrets))


def _queries(session, secrets):
    return [redact(q, secrets) for q in session.queries] if session is not None else []


def scrub(value, secrets):
    """Redact secrets anywhere in a JSON-like value."""
    if isinstance(value, dict):
        return dict((k, scrub(v, secrets)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [scrub(v, secrets) for v in value]
    if isinstance(value, str):
        return redact(value, secrets)
    return value
