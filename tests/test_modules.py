"""The Ansible face of the modules: documentation, arguments, results, failures, secrets."""
import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils.testing import patch_module_args

from helpers import build_sample

pytestmark = pytest.mark.timeout(240)
ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in (ROOT / 'library').glob('pgpart_*.py'))
ANSIBLE_DOC = str(ROOT / '.venv' / 'bin' / 'ansible-doc')


def load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / 'library' / (name + '.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def call(name, args, capsys):
    """Run a module's main() with args; return (result dict, failed)."""
    with patch_module_args(args):
        with pytest.raises(SystemExit) as exited:
            load(name).main()
    result = json.loads(capsys.readouterr().out)
    return result, exited.value.code != 0


@pytest.mark.parametrize('name', MODULES)
def test_every_module_documents_itself_and_every_option(name):
    doc = subprocess.run([ANSIBLE_DOC, '-M', 'library', '-t', 'module', '--json', name], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert doc.returncode == 0, doc.stderr
    documented = json.loads(doc.stdout)[name]
    options = set(documented['doc']['options'])
    for option in documented['doc']['options'].values():
        options.update(option.get('aliases', []))
    source = (ROOT / 'library' / (name + '.py')).read_text()
    assert documented['doc']['attributes']['check_mode']['support'] in ('full', 'partial')
    assert documented['examples'].strip() and documented['return']
    spec_names = set()
    captured = {}

    class Stop(Exception):
        pass

    def fake_run_module(argument_spec, work, connects=True, **kwargs):
        from ansible.module_utils.pgpart_db import connection_argument_spec
        captured.update(connection_argument_spec() if connects else {})
        captured.update(argument_spec)
        raise Stop()
    module = load(name)
    original = module.run_module
    module.run_module = fake_run_module
    try:
        with pytest.raises(Stop):
            module.main()
    finally:
        module.run_module = original
    spec_names = set(captured)
    assert spec_names <= options, 'undocumented options: %s' % (spec_names - options)
    assert 'queries' in documented['return'] and 'queries' in source


@pytest.fixture
def sample(db):
    return build_sample(db, rows=800)


def test_assess_and_convert_through_the_module_interface(sample, capsys):
    args = {'database_url': sample.url, 'table': 'event_impressions'}
    result, failed = call('pgpart_assess', args, capsys)
    assert not failed and result['eligible'] and result['changed'] is False and result['queries'] == []
    result, failed = call('pgpart_convert', dict(args, _ansible_check_mode=True), capsys)
    assert not failed and result['changed'] and any('CREATE TABLE' in q for q in result['queries'])
    assert sample.scalar("SELECT to_regclass('public.event_impressions_new')") is None
    result, failed = call('pgpart_convert', args, capsys)
    assert not failed and result['changed'] and result['phase'] == 'converted'
    assert [s['phase'] for s in result['steps']] == ['prepared', 'syncing', 'backfilled', 'verified', 'swapped',
                                                     'converted']
    result, failed = call('pgpart_convert', args, capsys)
    assert not failed and result['changed'] is False and result['queries'] == []
    result, failed = call('pgpart_verify', args, capsys)
    assert not failed and result['ok'] and result['failed_checks'] == []
    result, failed = call('pgpart_progress', dict(args, wait_seconds=0), capsys)
    assert not failed and result['phase'] == 'converted' and result['running'] is False


def test_refusal_fails_the_task_with_every_reason(sample, capsys):
    result, failed = call('pgpart_convert', {'database_url': sample.url, 'table': 'orders'}, capsys)
    assert failed and result['msg'].startswith('refusing to convert public.orders')
    assert len(result['reasons']) == 4 and sample.scalar("SELECT to_regnamespace('pgpart')") is None


def test_wrong_password_fails_cleanly_without_the_password_anywhere(sample, capsys):
    secret = 'n0t-the-R1ght-pw'
    url = sample.cluster.url(sample.name, password=secret)
    for name in ('pgpart_assess', 'pgpart_convert', 'pgpart_verify', 'pgpart_rollback', 'pgpart_cleanup'):
        result, failed = call(name, {'database_url': url, 'table': 'event_impressions'}, capsys)
        assert failed and 'password authentication failed' in result['msg']
        assert secret not in json.dumps(result), name
    result, failed = call('pgpart_assess', {'login_host': '127.0.0.1', 'login_port': sample.cluster.port,
                                            'login_user': 'postgres', 'login_password': secret,
                                            'login_db': sample.name, 'table': 'event_impressions'}, capsys)
    assert failed and secret not in json.dumps(result)


def test_missing_driver_is_reported_as_such(capsys, monkeypatch):
    from ansible.module_utils import pgpart_module
    monkeypatch.setattr(pgpart_module, 'HAS_PSYCOPG2', False)
    result, failed = call('pgpart_assess', {'database_url': 'postgresql://x@127.0.0.1/x', 'table': 't'}, capsys)
    assert failed and 'psycopg2' in result['msg']


def test_database_url_defaults_to_the_environment(sample, capsys, monkeypatch):
    monkeypatch.setenv('DATABASE_URL', sample.url)
    result, failed = call('pgpart_assess', {'table': 'ticket_analytics'}, capsys)
    assert not failed and result['eligible']
