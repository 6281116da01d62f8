"""The production recipe in deploy/ stays true to the code: deploy/env.example
lists every environment variable the settings read (and nothing they do not,
besides the deploy scripts' own) and passes `check --deploy` once its secret
is filled in; the image, the compose file, the scripts and the systemd units
name only files and management commands that exist. deploy/smoke runs the
recipe for real (CI); this checks its text without Docker."""
from __future__ import annotations

import ast
import fnmatch
import os
import re
import secrets
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from django.core.management import get_commands

from martech.crm.checks import URLS as CRM_URLS
from martech.crm.emulators.defaults import CREDENTIALS as CRM_EMULATOR_CREDENTIALS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCRIPTS = ["install", "release", "web", "worker", "smoke"]
NAME = r"[A-Z][A-Z0-9_]*"


def settings_env_vars() -> set[str]:
    """Every variable martech/settings.py reads: the first argument of each
    call on the `env` reader (env.str("X"), env.db_url("X"), env("X"), ...)."""
    tree = ast.parse((ROOT / "martech" / "settings.py").read_text())
    found = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        func = node.func
        on_env = (isinstance(func, ast.Name) and func.id == "env") or (
            isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "env")
        first = node.args[0]
        if on_env and isinstance(first, ast.Constant) and isinstance(first.value, str):
            found.add(first.value)
    # The email backend is read by martech/email_config.py (email_settings),
    # which settings.py calls with the environment: environ_.get("X"), and
    # every ANYMAIL_<NAME> passed through (those the example names count).
    email_config = (ROOT / "martech" / "email_config.py").read_text()
    found |= set(re.findall(rf'environ_\.get\("({NAME})"\)', email_config))
    found |= {name for name in env_example() if name.startswith("ANYMAIL_")}
    return found


def env_example() -> dict[str, str | None]:
    """NAME -> value of env.example's active lines; None for the optional,
    commented-out ones ("# NAME=default")."""
    out: dict[str, str | None] = {}
    for line in (DEPLOY / "env.example").read_text().splitlines():
        if m := re.match(rf"^({NAME})=(.*)$", line):
            out[m[1]] = m[2]
        elif m := re.match(rf"^#\s?({NAME})=", line):
            out.setdefault(m[1], None)
    return out


def test_settings_reader_is_found():
    found = settings_env_vars()
    assert len(found) > 80
    assert {"MARTECH_PORT", "DATABASE_URL", "EMAIL_URL", "EMAIL_BACKEND", "REDIS_URL", "NURTURE_PUBLIC_BASE_URL"} <= found


def test_env_example_lists_every_variable_the_settings_read():
    missing = settings_env_vars() - set(env_example())
    assert not missing, f"deploy/env.example does not list {sorted(missing)}"


def test_env_example_lists_nothing_unknown():
    scripts = "\n".join((DEPLOY / s).read_text() for s in SCRIPTS) + (DEPLOY / "compose.yaml").read_text()
    used_by_deploy = set(re.findall(rf"\$\{{?({NAME})", scripts))
    unknown = set(env_example()) - settings_env_vars() - used_by_deploy
    assert not unknown, f"deploy/env.example lists variables nothing reads: {sorted(unknown)}"


def test_env_example_sets_what_the_deploy_checks_refuse_by_default():
    example = env_example()
    # The embedded defaults the deploy checks refuse must be set, not left commented out.
    must_set = {"DJANGO_DEBUG", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS", "DATABASE_URL", "REDIS_URL",
                "EMAIL_URL", "NURTURE_PUBLIC_BASE_URL", "NURTURE_SMS_BACKEND", "MARTECH_CRM_SALESFORCE_CA_CERT"}
    must_set |= {f"MARTECH_CRM_{k}" for k in [*CRM_EMULATOR_CREDENTIALS, *CRM_URLS]}
    unset = sorted(k for k in must_set if example.get(k) is None)
    assert not unset, f"deploy/env.example leaves these at their embedded default: {unset}"
    assert example["DJANGO_DEBUG"] == "false"
    assert example["NURTURE_PUBLIC_BASE_URL"].startswith("https://")


def test_env_example_passes_check_deploy_once_the_secret_is_filled_in(tmp_path):
    # Not the test process's own switches: the browser tests allow Django's
    # sync calls from async code, which check --deploy rightly refuses.
    env = {k: v for k, v in os.environ.items() if k not in settings_env_vars() and k != "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env.update({k: v for k, v in env_example().items() if v is not None})
    env["DJANGO_SECRET_KEY"] = secrets.token_urlsafe(64)
    env["DJANGO_STATIC_ROOT"] = str(tmp_path)
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    # ... and its placeholder secret is refused: nothing runs on the example as it stands.
    env["DJANGO_SECRET_KEY"] = env_example()["DJANGO_SECRET_KEY"]
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "security.W009" in done.stdout + done.stderr


def _manage_commands(text: str) -> set[str]:
    """Management commands a script runs: `manage.py <cmd>` or its `manage <cmd>` helper."""
    return set(re.findall(r"manage(?:\.py\"?)?\s+([a-z_]+)", text)) - {"py"}


@pytest.mark.parametrize("script", SCRIPTS)
def test_deploy_scripts_exist_and_run_only_existing_commands(script):
    path = DEPLOY / script
    assert path.is_file() and os.access(path, os.X_OK), f"deploy/{script} is not an executable file"
    unknown = _manage_commands(path.read_text()) - set(get_commands())
    assert not unknown, f"deploy/{script} runs unknown management commands {sorted(unknown)}"


def test_release_and_processes_run_what_production_needs():
    release = _manage_commands((DEPLOY / "release").read_text())
    assert {"check", "migrate", "collectstatic", "setup_schedules"} <= release
    assert "qcluster" in _manage_commands((DEPLOY / "worker").read_text())
    web = (DEPLOY / "web").read_text()
    assert '/bin/gunicorn" martech.wsgi' in web and "WEB_CONCURRENCY" in web
    assert (ROOT / "martech" / "wsgi.py").is_file()


def test_runtime_installs_only_requirements_txt():
    for name in ["install", "Dockerfile"]:
        code = [line for line in (DEPLOY / name).read_text().splitlines() if not line.lstrip().startswith("#")]
        assert not [line for line in code if "requirements-dev" in line], f"deploy/{name} installs dev tools"
    assert "-r \"$root/requirements.txt\"" in (DEPLOY / "install").read_text()
    pins = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^gunicorn==\S+$", pins, re.M), "gunicorn is not pinned in requirements.txt"
    assert re.search(r"^aiosmtpd==\S+$", (ROOT / "requirements-dev.txt").read_text(), re.M)


def _dockerignored(path: str) -> bool:
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    parts = Path(path).parts
    return any(fnmatch.fnmatch(path, p) or fnmatch.fnmatch(parts[0], p) for p in patterns)


def test_dockerfile_copies_and_runs_existing_files():
    lines = [line for line in (DEPLOY / "Dockerfile").read_text().splitlines() if not line.startswith("#")]
    copies = [shlex.split(line)[1:-1] for line in lines if line.startswith(("COPY ", "ADD "))]
    assert copies
    for sources in copies:
        for src in sources:
            if src == ".":
                continue
            assert (ROOT / src).exists(), f"Dockerfile copies {src}, which does not exist"
            assert not _dockerignored(src), f"Dockerfile copies {src}, which .dockerignore leaves out"
    for needed in ["manage.py", "martech", "nurture", "routing", "attribution", "templates", "deploy/web",
                   "deploy/worker", "deploy/release", "requirements.txt"]:
        assert (ROOT / needed).exists() and not _dockerignored(needed), needed
    run = [line for line in lines if line.startswith("RUN ")]
    assert any("deploy/install" in line for line in run)
    cmd = next(line for line in lines if line.startswith("CMD "))
    assert (ROOT / yaml.safe_load(cmd[4:])[0]).is_file()


def test_compose_runs_web_workers_release_postgres_and_redis():
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"db", "redis", "release", "web", "worker"} <= set(services)
    assert services["db"]["image"].startswith("postgres:")
    assert services["redis"]["image"].startswith("redis:")
    for name in ["release", "web", "worker"]:
        svc = services[name]
        build = svc["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
        command = svc["command"]
        assert (ROOT / command[0]).is_file(), f"{name} runs {command[0]}, which does not exist"
        env = svc["environment"]
        assert env["DATABASE_URL"].startswith("postgres://") and "@db:" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:")
    assert services["release"]["command"] == ["deploy/release"]
    assert services["web"]["command"] == ["deploy/web"]
    assert services["worker"]["command"] == ["deploy/worker"]
    assert services["worker"]["deploy"]["replicas"] >= 1
    assert services["worker-bulk"]["command"] == ["deploy/worker", "bulk"]
    for name in ["web", "worker"]:
        assert services[name]["depends_on"]["release"]["condition"] == "service_completed_successfully"
    assert services["release"]["depends_on"]["db"]["condition"] == "service_healthy"
    # The release's collectstatic is what web serves.
    assert "static:/app/staticfiles" in services["release"]["volumes"]
    assert "static:/app/staticfiles:ro" in services["web"]["volumes"]


def test_systemd_units_start_the_deploy_scripts():
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert {u.name for u in units} == {"martech-release.service", "martech-web.service", "martech-worker@.service",
                                       "martech-worker-bulk.service"}
    for unit in units:
        execs = re.findall(r"^ExecStart=(\S+)", unit.read_text(), re.M)
        assert len(execs) == 1
        script = execs[0].removeprefix("/opt/martech/app/")
        assert (ROOT / script).is_file(), f"{unit.name} starts {execs[0]}, which is not in deploy/"
        assert "EnvironmentFile=/etc/martech/env" in unit.read_text()
