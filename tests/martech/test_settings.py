"""Settings read from the environment (docs/style.md, 13): the documented production
variables pass `check --deploy`; bad values fail at start naming the variable.

Each case runs in a subprocess with a clean environment, because settings are
read once per process."""
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

BASE_DIR = Path(__file__).resolve().parents[2]
PROBE = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "from django.db.backends.postgresql.psycopg_any import is_psycopg3; "
    "print(json.dumps({'engine': s.DATABASES['default']['ENGINE'], 'name': s.DATABASES['default']['NAME'], "
    "'q': s.Q_CLUSTER, 'cache': s.CACHES['default']['BACKEND'], 'debug': s.DEBUG, 'psycopg3': is_psycopg3, "
    "'proxies': [s.REST_FRAMEWORK['NUM_PROXIES'], s.AXES_IPWARE_PROXY_COUNT]}))"
)


def _run(args: list[str], **env: str) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "DJANGO_SETTINGS_MODULE": "martech.settings"}
    return subprocess.run(
        [sys.executable, *args], cwd=BASE_DIR, env={**clean, **env}, capture_output=True, text=True, timeout=120
    )


def _settings(**env: str) -> dict:
    proc = _run(["-c", PROBE], **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# What an operator sets for production (deploy/env.example): HubSpot in use,
# Salesforce not (its variables empty), mail through a server, no SMS.
PRODUCTION = {
    "DJANGO_DEBUG": "false",
    "DJANGO_ALLOWED_HOSTS": "martech.example.com",
    "EMAIL_URL": "smtp+tls://mailer:secret@mail.example.com:587",
    "NURTURE_SMS_BACKEND": "nurture.channels.DisabledSmsBackend",
    "NURTURE_PUBLIC_BASE_URL": "https://martech.example.com",
    "MARTECH_CRM_HUBSPOT_URL": "https://api.hubapi.com",
    "MARTECH_CRM_HUBSPOT_TOKEN": "pat-na1-11111111-2222-3333-4444-555555555555",
    "MARTECH_CRM_HUBSPOT_APP_SECRET": "a1b2c3d4-e5f6-7890-abcd-ef1234567890",
    "MARTECH_CRM_SALESFORCE_URL": "",
    "MARTECH_CRM_SALESFORCE_ACCESS_TOKEN": "",
    "MARTECH_CRM_SALESFORCE_REFRESH_TOKEN": "",
    "MARTECH_CRM_SALESFORCE_CLIENT_ID": "",
    "MARTECH_CRM_SALESFORCE_CLIENT_SECRET": "",
}


@pytest.fixture
def production_env(tmp_path) -> dict[str, str]:
    return {**PRODUCTION, "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
            "DATABASE_URL": f"sqlite:///{tmp_path / 'deploy.sqlite3'}"}


def test_check_deploy_is_clean_with_the_documented_production_variables(production_env):
    proc = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **production_env)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "System check identified no issues" in output
    assert "WARNING" not in output and "?: (security" not in output


def test_check_deploy_refuses_every_emulator_and_console_default(production_env):
    """Debug off and nothing else set: every default of the embedded setup
    that is unsafe or delivers nothing is refused, each naming its variable."""
    env = {k: v for k, v in production_env.items() if k not in PRODUCTION or k in ("DJANGO_DEBUG", "DJANGO_ALLOWED_HOSTS")}
    proc = _run(["manage.py", "check", "--deploy", "--fail-level", "WARNING"], **env)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for named in ("EMAIL_URL", "NURTURE_SMS_BACKEND", "NURTURE_PUBLIC_BASE_URL", "MARTECH_CRM_HUBSPOT_URL",
                  "MARTECH_CRM_HUBSPOT_TOKEN", "MARTECH_CRM_HUBSPOT_APP_SECRET", "MARTECH_CRM_SALESFORCE_URL",
                  "MARTECH_CRM_SALESFORCE_ACCESS_TOKEN", "MARTECH_CRM_SALESFORCE_REFRESH_TOKEN",
                  "MARTECH_CRM_SALESFORCE_CLIENT_ID", "MARTECH_CRM_SALESFORCE_CLIENT_SECRET"):
        assert named in output, named
    assert output.count("(martech.crm.E001)") == 6 and output.count("(martech.crm.E002)") == 2


def test_the_embedded_setup_keeps_its_emulator_defaults():
    proc = _run(["manage.py", "check", "--deploy"])
    output = proc.stdout + proc.stderr
    assert "martech.E001" not in output and "martech.crm.E00" not in output and "nurture.E00" not in output


def test_embedded_defaults():
    s = _settings()
    assert s["engine"] == "django.db.backends.sqlite3"
    assert s["q"]["orm"] == "default" and "redis" not in s["q"]
    assert s["cache"].endswith("FileBasedCache")  # shared by runserver and qcluster
    assert s["debug"] is True
    assert s["proxies"] == [0, 0]  # client IP is REMOTE_ADDR unless proxies are declared


def test_proxy_count_reaches_throttles_and_lockouts():
    assert _settings(DJANGO_PROXY_COUNT="2")["proxies"] == [2, 2]


def test_database_url_selects_postgresql_on_psycopg3():
    s = _settings(DATABASE_URL="postgres://martech@db.internal:5432/martech")
    assert s["engine"] == "django.db.backends.postgresql"
    assert s["name"] == "martech"
    assert s["psycopg3"] is True


def test_redis_url_switches_the_task_queue_and_cache_to_redis():
    s = _settings(REDIS_URL="redis://cache.internal:6379/2")
    assert s["q"]["redis"] == "redis://cache.internal:6379/2"
    assert s["q"]["broker_class"] == "martech.taskqueue.PooledRedisBroker"
    assert "orm" not in s["q"]
    assert s["cache"] == "martech.rediscache.PooledRedisCache"
    assert s["q"]["retry"] > s["q"]["timeout"] and s["q"]["max_attempts"] > 0


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DJANGO_DEBUG": "false"}, "DJANGO_SECRET_KEY"),
        ({"MARTECH_UNKNOWN_EVENT_POLICY": "bogus"}, "MARTECH_UNKNOWN_EVENT_POLICY"),
        ({"Q_TIMEOUT": "600", "Q_RETRY": "300"}, "Q_RETRY"),
        ({"Q_WORKERS": "many"}, "Q_WORKERS"),
        ({"DJANGO_DEBUG": "flase"}, "DJANGO_DEBUG"),
        # A lease not above the task timeout lets two drains push the same record.
        ({"MARTECH_CRM_OUTBOX_LEASE_SECONDS": "300"}, "MARTECH_CRM_OUTBOX_LEASE_SECONDS"),
        ({"MARTECH_CRM_OUTBOX_LEASE_SECONDS": "soon"}, "MARTECH_CRM_OUTBOX_LEASE_SECONDS"),
    ],
)
def test_bad_configuration_fails_at_start_naming_the_variable(env, named):
    proc = _run(["manage.py", "check"], **env)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "ImproperlyConfigured" in last and named in last


def test_the_outbox_lease_defaults_to_a_minute_above_the_task_timeout():
    probe = ("import json, django; django.setup(); from django.conf import settings as s; "
             "print(json.dumps(s.MARTECH_CRM['OUTBOX_LEASE_SECONDS']))")
    assert json.loads(_run(["-c", probe]).stdout) == 360
    assert json.loads(_run(["-c", probe], Q_TIMEOUT="120", Q_RETRY="200").stdout) == 180
    assert json.loads(_run(["-c", probe], MARTECH_CRM_OUTBOX_LEASE_SECONDS="900").stdout) == 900


PORTS = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({k: s.MARTECH_CRM[k] for k in ('HUBSPOT_URL', 'HUBSPOT_EMULATOR_PORT', 'SALESFORCE_URL', "
    "'SALESFORCE_EMULATOR_PORT')} | {'public': s.MARTECH_NURTURE['PUBLIC_BASE_URL']}))"
)


def _ports(**env: str) -> dict:
    proc = _run(["-c", PORTS], **env)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_one_port_variable_moves_the_emulators_and_the_links():
    assert _ports() == {"HUBSPOT_URL": "http://127.0.0.1:8471", "HUBSPOT_EMULATOR_PORT": 8471,
                        "SALESFORCE_URL": "https://127.0.0.1:8472", "SALESFORCE_EMULATOR_PORT": 8472,
                        "public": "http://127.0.0.1:8000"}
    assert _ports(MARTECH_PORT="9100") == {"HUBSPOT_URL": "http://127.0.0.1:9571", "HUBSPOT_EMULATOR_PORT": 9571,
                                           "SALESFORCE_URL": "https://127.0.0.1:9572", "SALESFORCE_EMULATOR_PORT": 9572,
                                           "public": "http://127.0.0.1:9100"}
    # An explicit value still wins over the derived default.
    assert _ports(MARTECH_PORT="9100", NURTURE_PUBLIC_BASE_URL="https://ops.example.com")["public"] == \
        "https://ops.example.com"


@pytest.mark.parametrize("port", ["0", "65500", "http"])
def test_a_bad_port_fails_at_start_naming_the_variable(port):
    proc = _run(["manage.py", "check"], MARTECH_PORT=port)
    assert proc.returncode != 0
    assert "MARTECH_PORT" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("name", ["MARTECH_CRM_HUBSPOT_RECORD_URL", "MARTECH_CRM_SALESFORCE_RECORD_URL"])
def test_a_crm_record_url_without_its_id_fails_at_start(name):
    proc = _run(["-c", PROBE], **{name: "https://crm.example/records/"})
    assert proc.returncode != 0
    assert name in proc.stderr.strip().splitlines()[-1] and "{id}" in proc.stderr.strip().splitlines()[-1]
    assert _run(["-c", PROBE], **{name: "https://crm.example/records/{id}"}).returncode == 0
