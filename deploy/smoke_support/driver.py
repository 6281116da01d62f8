"""The deploy smoke test's driver: named steps run in order against the
running recipe (deploy/smoke starts it: TLS proxy -> gunicorn, two qcluster
processes, PostgreSQL, Redis, an SMTP sink). The first step that fails stops
the run with exit status 1.

Steps share one ``Context``. To add a step, write ``def step_x(ctx)`` that
raises ``SmokeFailure`` (or any exception) when the recipe misbehaves, and
put it in ``STEPS`` where it belongs.

Runs from the dev venv (Playwright); every Django command runs in the
runtime venv (``SMOKE_PYTHON``) with the production environment deploy/smoke
exported. The site's public name (``SMOKE_HOST``) resolves nowhere: the
browser maps it to the proxy (--host-resolver-rules) and ``https_request``
connects to the proxy with that name for SNI and Host, verifying the proxy's
certificate (``SMOKE_CERT``)."""
from __future__ import annotations

import base64
import email
import email.policy
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import urlencode, urlsplit

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-quic"]


class SmokeFailure(AssertionError):
    pass


def check(condition: object, message: str) -> None:
    if not condition:
        raise SmokeFailure(message)


@dataclass
class Context:
    base_url: str  # https://<host>:<port>, the public address (NURTURE_PUBLIC_BASE_URL)
    host: str
    connect: tuple[str, int]  # where the proxy listens
    cert: str
    mail_dir: Path
    python: str  # the runtime venv's python
    repo: Path
    artifacts: Path
    admin_user: str = "smoke-admin"
    admin_password: str = field(default_factory=lambda: uuid.uuid4().hex + "Aa1!")
    lead_email: str = field(default_factory=lambda: f"smoke-{uuid.uuid4().hex[:10]}@example.com")
    form_key: str = ""
    lead_id: int | None = None
    message: email.message.EmailMessage | None = None

    @classmethod
    def from_env(cls) -> "Context":
        base = os.environ["SMOKE_BASE_URL"]
        host, port = os.environ["SMOKE_CONNECT"].rsplit(":", 1)
        return cls(base_url=base, host=urlsplit(base).hostname, connect=(host, int(port)),
                   cert=os.environ["SMOKE_CERT"], mail_dir=Path(os.environ["SMOKE_MAIL_DIR"]),
                   python=os.environ["SMOKE_PYTHON"], repo=Path(__file__).resolve().parents[2],
                   artifacts=Path(os.environ.get("SMOKE_ARTIFACTS", "/tmp")))

    def manage(self, *args: str, stdin: str | None = None, env: dict | None = None) -> str:
        done = subprocess.run([self.python, "manage.py", *args], cwd=self.repo, input=stdin, text=True,
                              capture_output=True, env={**os.environ, **(env or {})}, timeout=120)
        if done.returncode:
            raise SmokeFailure(f"manage.py {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout


class _ProxyConnection(http.client.HTTPSConnection):
    """HTTPS to the proxy's address, speaking to it as the public host name
    (SNI, certificate check, Host header)."""

    def __init__(self, host: str, connect: tuple[str, int], context: ssl.SSLContext):
        super().__init__(host, connect[1], context=context, timeout=30)
        self._connect_to = connect
        self._ssl_context = context

    def connect(self) -> None:
        sock = socket.create_connection(self._connect_to, timeout=self.timeout)
        self.sock = self._ssl_context.wrap_socket(sock, server_hostname=self.host)


def https_request(ctx: Context, method: str, url: str, *, body: bytes | None = None,
                  headers: dict | None = None) -> tuple[int, dict, bytes]:
    parts = urlsplit(url)
    check(parts.scheme == "https" and parts.hostname == ctx.host and parts.port == ctx.connect[1],
          f"{url} is not on the smoke site {ctx.base_url}")
    tls = ssl.create_default_context(cafile=ctx.cert)
    conn = _ProxyConnection(ctx.host, ctx.connect, tls)
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""), body=body,
                     headers={"User-Agent": "martech-deploy-smoke", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# --- Steps ------------------------------------------------------------------

def step_healthz(ctx: Context) -> None:
    """/healthz through the TLS proxy: database, Redis broker and a qcluster
    heartbeat all ok (the clusters report within seconds of starting)."""
    deadline, last = time.monotonic() + 90, ""
    while time.monotonic() < deadline:
        try:
            status, _, body = https_request(ctx, "GET", f"{ctx.base_url}/healthz")
        except OSError as exc:
            status, body = 0, str(exc).encode()
        if status == 200 and json.loads(body)["status"] == "ok":
            print(f"    {body.decode()}")
            return
        last = f"{status} {body[:300]!r}"
        time.sleep(1)
    raise SmokeFailure(f"/healthz never answered ok: {last}")


def step_superuser(ctx: Context) -> None:
    """A superuser created non-interactively, as an operator would."""
    ctx.manage("createsuperuser", "--noinput", "--username", ctx.admin_user, "--email", "ops@example.com",
               env={"DJANGO_SUPERUSER_PASSWORD": ctx.admin_password})


def step_journey(ctx: Context) -> None:
    """A capture form and a published journey it triggers, email first."""
    out = ctx.manage("shell", "-v0", stdin=(Path(__file__).parent / "setup_journey.py").read_text())
    made = json.loads(out.strip().splitlines()[-1])
    ctx.form_key = made["form"]
    print(f"    form {made['form']!r}, workflow {made['workflow']} v{made['version']} published")


def step_capture(ctx: Context) -> None:
    """A visitor posts the public capture form (JSON, with email consent)."""
    payload = {"email": ctx.lead_email, "first_name": "Ada", "consent": "true"}
    status, _, body = https_request(ctx, "POST", f"{ctx.base_url}/api/v1/capture/{ctx.form_key}",
                                    body=json.dumps(payload).encode(), headers={"Content-Type": "application/json"})
    check(status == 202, f"capture answered {status}: {body[:500]!r}")
    # The public answer never tells whether a lead was made; the database does.
    check(json.loads(body) == {"status": "received"}, f"capture answer {body[:300]!r}")
    out = ctx.manage("shell", "-v0", "-c",
                     f"from martech.models import Lead; print(Lead.objects.get(email={ctx.lead_email!r}).pk)")
    ctx.lead_id = int(out.strip().splitlines()[-1])
    print(f"    lead {ctx.lead_id} ({ctx.lead_email})")


def step_admin_pages(ctx: Context) -> None:
    """Headless Chromium logs into the admin and opens the lead list (the
    captured lead is in it) and the attribution dashboard (Chart.js drawn):
    every response below 400, every static file served (200), no console
    error, the admin stylesheet applied."""
    from playwright.sync_api import sync_playwright

    problems: list[str] = []
    static_seen: list[str] = []

    def on_response(resp):
        if resp.status >= 400:
            problems.append(f"{resp.status} {resp.url}")
        if "/static/" in resp.url:
            static_seen.append(resp.url)
            if resp.status != 200:
                problems.append(f"static {resp.status} {resp.url}")

    def on_console(msg):
        if msg.type != "error":
            return
        source = (msg.location or {}).get("url", "")
        # The site has no favicon and the admin names none, so Chromium's own
        # /favicon.ico probe is a 404; that one is not the site's static files.
        if msg.text.startswith("Failed to load resource") and urlsplit(source).path == "/favicon.ico":
            return
        problems.append(f"console error on {page.url} ({source}): {msg.text}")

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, headless=True,
            args=CHROMIUM_ARGS + [f"--host-resolver-rules=MAP {ctx.host} {ctx.connect[0]}"],
        )
        try:
            # The proxy's certificate is self-signed for this run; Python's
            # requests above verify it, the browser is told to accept it.
            context = browser.new_context(ignore_https_errors=True, viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(20_000)
            # Every asset from the server, none from the browser's HTTP cache:
            # what is checked is what the site serves (and Chromium's cache
            # has been seen to fail a stylesheet it raced for with
            # ERR_TOO_MANY_RETRIES before any request left the browser).
            cdp = context.new_cdp_session(page)
            cdp.send("Network.enable")
            cdp.send("Network.setCacheDisabled", {"cacheDisabled": True})
            page.on("response", on_response)
            page.on("console", on_console)
            page.on("requestfailed", lambda req: problems.append(f"failed {req.url}: {req.failure}"))

            page.goto(f"{ctx.base_url}/admin/login/?next=/admin/")
            page.fill("#id_username", ctx.admin_user)
            page.fill("#id_password", ctx.admin_password)
            page.click("input[type=submit]")
            page.wait_for_url(f"{ctx.base_url}/admin/")

            page.goto(f"{ctx.base_url}/admin/martech/lead/")
            check(page.locator("#result_list").count() == 1, "the lead list has no result table")
            check(ctx.lead_email in page.inner_text("#result_list"), f"{ctx.lead_email} is not in the lead list")
            # The admin's CSS came through whitenoise's hashed names: the header is styled.
            styled = page.evaluate("() => getComputedStyle(document.querySelector('#header')).display")
            check(styled == "flex", f"the admin stylesheet is not applied (#header display: {styled})")
            page.screenshot(path=str(ctx.artifacts / "smoke_lead_list.png"), full_page=True)

            page.goto(f"{ctx.base_url}/admin/attribution/attributioncredit/dashboard/")
            page.wait_for_selector("body[data-attribution-loaded='1']")
            check(page.inner_text("#att-status") == "", f"dashboard status: {page.inner_text('#att-status')}")
            scripts = page.eval_on_selector_all("script[src]", "els => els.map((e) => e.src)")
            check(any("/static/attribution/vendor/chart.umd" in s for s in scripts), f"no Chart.js script: {scripts}")
            check(all(s.startswith(ctx.base_url) for s in scripts), f"a script from elsewhere: {scripts}")
            drawn = page.evaluate("() => Object.values(window.attributionCharts || {}).length")
            check(drawn >= 1, "the dashboard drew no chart")
            page.screenshot(path=str(ctx.artifacts / "smoke_dashboard.png"), full_page=True)
        finally:
            browser.close()
    check(static_seen, "no static file was requested")
    check(not problems, "browser problems:\n  " + "\n  ".join(problems))
    print(f"    {len(static_seen)} static files, all 200; no console errors")


def step_journey_email(ctx: Context) -> None:
    """The journey's first email reaches the SMTP sink (the qcluster's
    scheduler runs nurture.advance_due every minute), with the RFC 8058
    one-click unsubscribe headers pointing at the public https address."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        for path in sorted(ctx.mail_dir.glob("*.eml")):
            msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
            if ctx.lead_email in str(msg["To"]):
                ctx.message = msg
                break
        if ctx.message is not None:
            break
        time.sleep(1)
    msg = ctx.message
    check(msg is not None, f"no email to {ctx.lead_email} within 180 s")
    check(str(msg["Subject"]) == "Welcome, Ada", f"subject {msg['Subject']!r}")
    # A long header is folded; its unfolded value starts with the folding space.
    unsub = str(msg["List-Unsubscribe"] or "").strip()
    check(unsub.startswith(f"<{ctx.base_url}/n/u/") and unsub.endswith(">"), f"List-Unsubscribe {unsub!r}")
    check(str(msg["List-Unsubscribe-Post"]).strip() == "List-Unsubscribe=One-Click",
          f"List-Unsubscribe-Post {msg['List-Unsubscribe-Post']!r}")
    print(f"    {msg['Subject']!r} to {msg['To']}; List-Unsubscribe {unsub[:60]}...")


def step_one_click_unsubscribe(ctx: Context) -> None:
    """The mail client's RFC 8058 POST to the List-Unsubscribe link works
    through the proxy (the link's host, scheme and signature are real)."""
    url = str(ctx.message["List-Unsubscribe"]).strip().strip("<>")
    status, _, body = https_request(ctx, "POST", url, body=urlencode({"List-Unsubscribe": "One-Click"}).encode(),
                                    headers={"Content-Type": "application/x-www-form-urlencoded"})
    check(status == 200, f"one-click unsubscribe answered {status}: {body[:300]!r}")
    state = ctx.manage("shell", "-v0", "-c",
                       "from martech.models import Lead; from martech.selectors import lead_consent_state; "
                       f"print(lead_consent_state(lead=Lead.objects.get(pk={ctx.lead_id})).get('email'))")
    check(state.strip() == "withdrawn", f"email consent after the unsubscribe: {state.strip()!r}")


def step_esp_bounce(ctx: Context) -> None:
    """The email provider reports a hard bounce of the journey's email
    through its tracking webhook (Postmark's documented Bounce payload, with
    the basic auth of ANYMAIL_WEBHOOK_SECRET): the address is suppressed and
    the bounce is on the lead's timeline. Without the secret it is refused."""
    url = f"{ctx.base_url}/anymail/postmark/tracking/"
    payload = {
        "RecordType": "Bounce", "ID": 4323372036854775807, "Type": "HardBounce", "TypeCode": 1, "Name": "Hard bounce",
        "Tag": "", "MessageID": str(uuid.uuid4()), "Metadata": {}, "ServerID": 23, "MessageStream": "outbound",
        "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        "Email": ctx.lead_email, "From": os.environ.get("DEFAULT_FROM_EMAIL", ""),
        "BouncedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "DumpAvailable": False,
        "Inactive": True, "CanActivate": True, "Subject": str(ctx.message["Subject"]),
    }
    body = json.dumps(payload).encode()
    status, _, answer = https_request(ctx, "POST", url, body=body, headers={"Content-Type": "application/json"})
    check(status in (400, 401, 403), f"the webhook took a post without its secret: {status} {answer[:200]!r}")
    secret = base64.b64encode(os.environ["ANYMAIL_WEBHOOK_SECRET"].split(",")[0].encode()).decode()
    status, _, answer = https_request(ctx, "POST", url, body=body,
                                      headers={"Content-Type": "application/json", "Authorization": f"Basic {secret}"})
    check(status == 200, f"the bounce webhook answered {status}: {answer[:300]!r}")
    out = ctx.manage("shell", "-v0", "-c",
                     "import json; from martech.models import Event; from nurture.models import Suppression; "
                     f"s = Suppression.objects.filter(address={ctx.lead_email!r}).first(); "
                     f"n = Event.objects.filter(lead_id={ctx.lead_id}, event_type__name='email_bounced').count(); "
                     "print(json.dumps({'reason': s and s.reason, 'events': n}))")
    state = json.loads(out.strip().splitlines()[-1])
    check(state == {"reason": "bounce", "events": 1}, f"after the bounce: {state}")
    print(f"    {ctx.lead_email} suppressed (bounce); email_bounced on the lead's timeline")


STEPS: list[tuple[str, Callable[[Context], None]]] = [
    ("healthz through the TLS proxy", step_healthz),
    ("superuser created non-interactively", step_superuser),
    ("capture form and published journey", step_journey),
    ("public form capture", step_capture),
    ("admin lead list and attribution dashboard in Chromium", step_admin_pages),
    ("journey email received with List-Unsubscribe", step_journey_email),
    ("ESP bounce webhook suppresses the address", step_esp_bounce),
    ("one-click unsubscribe through the proxy", step_one_click_unsubscribe),
]


def main() -> int:
    ctx = Context.from_env()
    started = time.monotonic()
    for n, (name, step) in enumerate(STEPS, 1):
        t0 = time.monotonic()
        print(f"smoke: [{n}/{len(STEPS)}] {name}", flush=True)
        try:
            step(ctx)
        except Exception as exc:  # noqa: BLE001 - any failure fails the smoke, with its traceback
            traceback.print_exc()
            print(f"smoke: FAILED at step {n} ({name}): {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"smoke: [{n}/{len(STEPS)}] ok ({time.monotonic() - t0:.1f} s)", flush=True)
    print(f"smoke: all {len(STEPS)} steps passed ({time.monotonic() - started:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
