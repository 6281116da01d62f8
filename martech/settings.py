"""Settings for the martech site.

Every value is read from the environment through django-environ, with types
and defaults that give the embedded setup (SQLite under var/, django-q2 on its
ORM broker, console email). A bad value fails at start naming the variable.
"""
from __future__ import annotations

import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

from martech.crm.emulators.defaults import CREDENTIALS as _CRM_EMULATOR, HUBSPOT_PORT_OFFSET, SALESFORCE_PORT_OFFSET
from martech.email_config import email_settings

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
VAR_DIR.mkdir(exist_ok=True)


class _Env(environ.Env):
    """django-environ, stricter: a value that does not parse fails naming its
    variable (django-environ's own ValueError does not), and a boolean must be
    a known true/false word, so DJANGO_DEBUG=flase is an error, not False."""

    FALSE_STRINGS = ("false", "off", "no", "n", "0", "")

    def get_value(self, var, cast=None, default=environ.Env.NOTSET, parse_default=False):
        raw = self.ENVIRON.get(var)
        if cast is bool and raw is not None and raw.strip().lower() not in self.BOOLEAN_TRUE_STRINGS + self.FALSE_STRINGS:
            raise ImproperlyConfigured(f"{var}={raw!r} is not a boolean (use true or false)")
        try:
            return super().get_value(var, cast=cast, default=default, parse_default=parse_default)
        except (ValueError, TypeError) as exc:
            raise ImproperlyConfigured(f"{var}={raw!r} is not valid: {exc}") from exc


env = _Env()
# A .env file next to manage.py is optional; real deployments set variables.
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DJANGO_DEBUG", default=True)

# The port the embedded site serves on (scripts/run); the CRM emulators' ports
# and URLs and the public base URL of email links follow from it by default.
PORT = env.int("MARTECH_PORT", default=8000)
if not 0 < PORT < 65536 - SALESFORCE_PORT_OFFSET:
    raise ImproperlyConfigured(f"MARTECH_PORT={PORT} is not a usable port (1 to {65535 - SALESFORCE_PORT_OFFSET})")


def _secret_key() -> str:
    key = env.str("DJANGO_SECRET_KEY", default="")
    if key:
        return key
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY must be set when DJANGO_DEBUG=false")
    # Embedded default only: a random key kept under var/ (never committed), so
    # runserver and the qcluster, which signs task payloads, share it.
    path = VAR_DIR / "dev_secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "martech.adminsite.OpsAdminConfig",  # django.contrib.admin with the ops site (martech/adminsite.py)
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served from our own static files
    "import_export",
    "simple_history",
    "phonenumber_field",
    "axes",
    "django_q",
    "anymail",
    "martech.apps.MartechConfig",
    "martech.scoring.apps.ScoringConfig",
    "routing",
    "nurture",
    "attribution",
    "martech.crm.apps.CrmConfig",
    "martech.privacy.apps.PrivacyConfig",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "simple_history.middleware.HistoryRequestMiddleware",
    # Last, as django-axes asks: it turns a locked-out login into its response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "martech.urls"
WSGI_APPLICATION = "martech.wsgi.application"
ASGI_APPLICATION = "martech.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database ---------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'martech.sqlite3'}"),
}
_db = DATABASES["default"]
if _db["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded default shares one file between runserver and qcluster:
    # WAL lets readers run beside the writer, IMMEDIATE transactions take the
    # write lock up front (no "database is locked" on upgrade), and the
    # timeout waits for it instead of failing.
    _db.setdefault("OPTIONS", {}).update(
        {
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    )
else:
    _db["CONN_MAX_AGE"] = env.int("DATABASE_CONN_MAX_AGE", default=60)
    _db["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache and task queue ---------------------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    # Django's Redis cache, reusing one client per pool (martech/rediscache.py).
    CACHES = {"default": {"BACKEND": "martech.rediscache.PooledRedisCache", "LOCATION": REDIS_URL}}
else:
    # A file cache, not locmem: rate limits and django-q2's cluster heartbeat
    # must be seen by every process (runserver, qcluster) on the machine.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# django-q2 refuses a config whose retry is not above timeout; max_attempts is
# explicit because a task may be delivered more than once (at least once, by design).
Q_CLUSTER = {
    "name": "martech",
    "workers": env.int("Q_WORKERS", default=2),
    "timeout": env.int("Q_TIMEOUT", default=300),
    "retry": env.int("Q_RETRY", default=360),
    "max_attempts": env.int("Q_MAX_ATTEMPTS", default=5),
    "queue_limit": 50,
    "bulk": 10,
    "catch_up": False,
    # Successful tasks are kept and pruned by retention (RETENTION_TASK_RESULTS_DAYS),
    # not by django-q2: with a limit above 0 its monitor locks and loads every
    # kept success row after each task (about 20 ms of CPU a task at 1,000).
    "save_limit": 0,
    "ack_failures": True,
    "label": "Task queue",
}
# Bulk work (CRM full pulls and backfills, imports, retention, attribution
# recomputes) goes to this second cluster's queue when set: a qcluster started
# with Q_CLUSTER_NAME=<it> (deploy/worker bulk) works it, so a backlog of it
# never delays speed-to-lead work in the default cluster. Empty: one cluster.
MARTECH_BULK_CLUSTER = env.str("MARTECH_BULK_CLUSTER", default="")
# Measurement (bench/speed_to_lead.py sets it): each worker adds its tasks' CPU
# seconds per function to a Redis hash (martech.taskqueue.task_cpu_tally).
MARTECH_TASK_CPU_TALLY = env.bool("MARTECH_TASK_CPU_TALLY", default=False)
if MARTECH_BULK_CLUSTER:
    if MARTECH_BULK_CLUSTER == Q_CLUSTER["name"]:
        raise ImproperlyConfigured(f"MARTECH_BULK_CLUSTER must differ from the default cluster {Q_CLUSTER['name']!r}")
    Q_CLUSTER["ALT_CLUSTERS"] = {MARTECH_BULK_CLUSTER: {
        "workers": env.int("Q_BULK_WORKERS", default=1), "label": "Task queue (bulk)",
    }}
if REDIS_URL:
    Q_CLUSTER["redis"] = REDIS_URL
    # One connection pool per process instead of a connection per enqueue.
    Q_CLUSTER["broker_class"] = "martech.taskqueue.PooledRedisBroker"
else:
    Q_CLUSTER["orm"] = "default"
if Q_CLUSTER["retry"] <= Q_CLUSTER["timeout"]:
    raise ImproperlyConfigured("Q_RETRY must be larger than Q_TIMEOUT")
# A stored capture (a form, an event batch) whose task has not finished this
# many seconds after its enqueue (or its task's start) is enqueued again by
# the capture sweep (martech.services.capture): longer than a queued task
# waits under a normal backlog, and than a task may run (Q_TIMEOUT), so a
# live task is not doubled.
MARTECH_CAPTURE_SWEEP_AFTER = env.int("MARTECH_CAPTURE_SWEEP_AFTER", default=600)
if MARTECH_CAPTURE_SWEEP_AFTER <= Q_CLUSTER["timeout"]:
    raise ImproperlyConfigured("MARTECH_CAPTURE_SWEEP_AFTER must be larger than Q_TIMEOUT")

# --- Auth -------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Admin logins are throttled: after AXES_FAILURE_LIMIT failures for one
# username from one IP, that pair is locked out for AXES_COOLOFF_MINUTES.
AXES_ENABLED = env.bool("AXES_ENABLED", default=True)
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = env.int("AXES_COOLOFF_MINUTES", default=15) / 60
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_IPWARE_PROXY_COUNT = env.int("DJANGO_PROXY_COUNT", default=0)

# --- i18n / time ------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("DJANGO_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# --- Static -----------------------------------------------------------------
STATIC_URL = "static/"
STATIC_ROOT = env.path("DJANGO_STATIC_ROOT", default=BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}

# --- Email ------------------------------------------------------------------
# EMAIL_URL or EMAIL_BACKEND picks SMTP, console, file or an ESP through
# django-anymail; ANYMAIL_* variables fill anymail's settings, among them the
# secrets of the tracking webhooks under /anymail/ (martech/email_config.py).
vars().update(email_settings(env.ENVIRON))
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="marketing@localhost")
SERVER_EMAIL = env.str("SERVER_EMAIL", default=DEFAULT_FROM_EMAIL)

# --- Security (production) --------------------------------------------------
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if env.bool("DJANGO_BEHIND_PROXY", default=not DEBUG) else None
SECURE_SSL_REDIRECT = env.bool("DJANGO_SECURE_SSL_REDIRECT", default=not DEBUG)
SESSION_COOKIE_SECURE = env.bool("DJANGO_SECURE_COOKIES", default=not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = env.int("DJANGO_HSTS_SECONDS", default=0 if DEBUG else 31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", default=not DEBUG)
SECURE_HSTS_PRELOAD = env.bool("DJANGO_HSTS_PRELOAD", default=not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# anymail.W003 says anymail no longer officially supports SendGrid; its backend
# and webhook still ship and are tested here, and an operator who picked
# SendGrid must still get a clean `check --deploy --fail-level WARNING`.
SILENCED_SYSTEM_CHECKS = ["anymail.W003"]

# --- REST API ---------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "martech.api.auth.ApiClientTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["martech.api.permissions.ScopedOrModelPermission"],
    # Refuse NUL and lone surrogates naming the field (a 400, not a 500 at save).
    "DEFAULT_PARSER_CLASSES": [
        "martech.api.parsers.StorableJSONParser",
        "martech.api.parsers.StorableFormParser",
        "martech.api.parsers.StorableMultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "martech.api.pagination.CursorPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env.str("API_THROTTLE_ANON", default="120/min"),
        "user": env.str("API_THROTTLE_CLIENT", default="6000/min"),
        "form_capture": env.str("FORM_CAPTURE_RATE", default="20/min"),
        "tracker": env.str("TRACKER_RATE", default="300/min"),
    },
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "martech.api.errors.exception_handler",
    # Throttles key anonymous callers by IP: trust only as many X-Forwarded-For
    # hops as there are proxies (0: REMOTE_ADDR), or a client could pick its own.
    "NUM_PROXIES": env.int("DJANGO_PROXY_COUNT", default=0),
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Martech API",
    "DESCRIPTION": "Capture, leads, accounts, events, lifecycle stages and campaigns.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The docs pages load their scripts from this site (no CDN): they work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    # One schema name per choice set that several fields share.
    "ENUM_NAME_OVERRIDES": {
        "ChannelEnum": "martech.models.Channel.choices",
        # Values of ConsentRecord.Status (a nested class cannot be given by import path).
        "ConsentStatusEnum": [("granted", "Granted"), ("withdrawn", "Withdrawn")],
        # Routing assignments (nested TextChoices, spelled out as above).
        "AssignmentStatusEnum": [("assigned", "Assigned"), ("waiting", "Waiting for an eligible rep"),
                                 ("nurture", "Nurture queue")],
        "AssignmentTriggerEnum": [("new_lead", "New lead"), ("stage_change", "Stage change"), ("admin", "Admin action"),
                                  ("api", "API call"), ("handoff", "SQL handoff"), ("deactivation", "Rep deactivated"),
                                  ("waiting", "Waiting queue"), ("escalation", "SLA escalation"),
                                  ("first_score", "First score")],
    },
}

# --- App tunables (one namespaced dict) -------------------------------------
MARTECH = {
    # What happens to an event of an unknown type or missing required
    # properties: "reject" answers the item as rejected; "quarantine" keeps it
    # in QuarantinedEvent (shown in the admin, replayable) and answers accepted.
    "UNKNOWN_EVENT_POLICY": env.str("MARTECH_UNKNOWN_EVENT_POLICY", default="reject"),
    "EVENT_BATCH_MAX": env.int("MARTECH_EVENT_BATCH_MAX", default=500),
    # The website tracker's public endpoint: most events per request and
    # largest body (64 KiB is also what a browser lets sendBeacon and a
    # keepalive fetch carry).
    "TRACKER_BATCH_MAX": env.int("MARTECH_TRACKER_BATCH_MAX", default=50),
    "TRACKER_BODY_MAX": env.int("MARTECH_TRACKER_BODY_MAX", default=65536),
    "DEFAULT_LIFECYCLE_STAGE": "lead",
    # /healthz fails when no qcluster has reported for this many seconds.
    "HEALTHZ_CLUSTER_MAX_AGE": env.int("MARTECH_HEALTHZ_CLUSTER_MAX_AGE", default=30),
}
# Privacy (martech.privacy): subject access export and erasure.
MARTECH_PRIVACY = {
    # The salt of the erasure tombstones (salted hashes of erased emails and
    # ids). Empty: SECRET_KEY. Set it once and keep it: a new salt forgets
    # every tombstone, and erased people could come back with the next import.
    "SALT": env.str("MARTECH_PRIVACY_SALT", default=""),
}

# Attribution (attribution app): windows and model parameters.
MARTECH_ATTRIBUTION = {
    # Touches count from this many days before an opportunity's creation through its close.
    "LOOKBACK_DAYS": env.int("MARTECH_ATTRIBUTION_LOOKBACK_DAYS", default=90),
    # Repeated touches of one channel by one lead within this many minutes are one touch.
    "SESSION_MINUTES": env.int("MARTECH_ATTRIBUTION_SESSION_MINUTES", default=30),
    "HALF_LIFE_DAYS": env.float("MARTECH_ATTRIBUTION_HALF_LIFE_DAYS", default=7.0),
    # A woken touchpoint refresh waits this many seconds before it reads the
    # leads noted pending, so the captures of that while join its run (one
    # bulk task a second at most under load, not one a capture); 0: at once.
    # Under the wake-up mark's life (martech.taskqueue.WAKE_TTL, 30 s).
    "TOUCHPOINTS_GATHER_SECONDS": env.float("MARTECH_ATTRIBUTION_TOUCHPOINTS_GATHER_SECONDS", default=1.0),
}
# Money: every report converts amounts into this ISO 4217 currency with the
# dated exchange rates (attribution.money); deals and spend in it need no rate.
MARTECH_COMPANY_CURRENCY = env.str("MARTECH_COMPANY_CURRENCY", default="USD").strip().upper()
if len(MARTECH_COMPANY_CURRENCY) != 3 or not MARTECH_COMPANY_CURRENCY.isalpha():
    raise ImproperlyConfigured("MARTECH_COMPANY_CURRENCY must be a three-letter ISO 4217 code (e.g. USD)")
MARTECH_MONEY = {
    # Where the scheduled task fetches exchange rates: a URL of an ECB-style
    # daily XML (gesmes Envelope, <Cube time=...><Cube currency= rate=>) with
    # rates as units of currency per one unit of RATES_BASE. Empty: not fetched.
    "RATES_URL": env.str("MARTECH_RATES_URL", default=""),
    "RATES_BASE": env.str("MARTECH_RATES_BASE", default="EUR").strip().upper(),
    "RATES_TIMEOUT": env.float("MARTECH_RATES_TIMEOUT", default=10.0),
    # Forecast: an open deal counts in the commit forecast from this win probability (percent).
    "COMMIT_PROBABILITY": env.int("MARTECH_FORECAST_COMMIT_PROBABILITY", default=90),
}
if not 0 <= MARTECH_MONEY["COMMIT_PROBABILITY"] <= 100:
    raise ImproperlyConfigured("MARTECH_FORECAST_COMMIT_PROBABILITY must be a percentage (0-100)")
if MARTECH_ATTRIBUTION["LOOKBACK_DAYS"] < 0 or MARTECH_ATTRIBUTION["SESSION_MINUTES"] < 0:
    raise ImproperlyConfigured("MARTECH_ATTRIBUTION_LOOKBACK_DAYS and _SESSION_MINUTES must not be negative")
if "MARTECH_ATTRIBUTION_MARKOV_COLLAPSE_REPEATS" in env.ENVIRON:
    # Removed: collapsing repeats never changed a first-order chain's removal effects. Said at start rather
    # than ignored, so nobody believes a value of it still does something.
    raise ImproperlyConfigured("MARTECH_ATTRIBUTION_MARKOV_COLLAPSE_REPEATS was removed (it changed no result); unset it")
if not 0 <= MARTECH_ATTRIBUTION["TOUCHPOINTS_GATHER_SECONDS"] < 30:
    raise ImproperlyConfigured("MARTECH_ATTRIBUTION_TOUCHPOINTS_GATHER_SECONDS must be from 0 to under 30 (seconds)")
if MARTECH_ATTRIBUTION["HALF_LIFE_DAYS"] <= 0:
    raise ImproperlyConfigured("MARTECH_ATTRIBUTION_HALF_LIFE_DAYS must be positive")

if MARTECH["UNKNOWN_EVENT_POLICY"] not in {"reject", "quarantine"}:
    raise ImproperlyConfigured("MARTECH_UNKNOWN_EVENT_POLICY must be 'reject' or 'quarantine'")

# Lead routing (routing/): triggers, first touch, escalation notifications.
MARTECH_ROUTING = {
    "ROUTE_NEW_LEADS": env.bool("ROUTING_ROUTE_NEW_LEADS", default=True),
    "ROUTE_ON_STAGES": env.list("ROUTING_ROUTE_ON_STAGES", default=["mql", "sql"]),
    "FIRST_TOUCH_STAGES": env.list("ROUTING_FIRST_TOUCH_STAGES", default=["sql", "opportunity", "customer", "other"]),
    "FIRST_TOUCH_EVENT_TYPES": env.list("ROUTING_FIRST_TOUCH_EVENT_TYPES", default=["sales_email_sent", "call_logged", "meeting_booked"]),
    "SLACK_WEBHOOK_URL": env.str("ROUTING_SLACK_WEBHOOK_URL", default=""),
    "WEBHOOK_TIMEOUT": env.float("ROUTING_WEBHOOK_TIMEOUT", default=5.0),
    "SWEEP_HOURS": env.int("ROUTING_SWEEP_HOURS", default=24),
    # Entering one of these stages closes the lead's assignment (it stops
    # counting against the rep's max_open_leads).
    "CONVERTED_STAGES": env.list("ROUTING_CONVERTED_STAGES", default=["opportunity", "customer"]),
    "DISQUALIFIED_STAGES": env.list("ROUTING_DISQUALIFIED_STAGES", default=["disqualified", "other"]),
}

# Outbound notifications to the team (martech.notify): webhook timeout when
# the sender gives none, tries when a retry cannot send twice, the first
# wait between them (doubling).
MARTECH_NOTIFY = {
    "TIMEOUT": env.float("MARTECH_NOTIFY_TIMEOUT", default=10.0),
    "ATTEMPTS": env.int("MARTECH_NOTIFY_ATTEMPTS", default=3),
    "RETRY_WAIT": env.float("MARTECH_NOTIFY_RETRY_WAIT", default=0.5),
}
if MARTECH_NOTIFY["TIMEOUT"] <= 0 or MARTECH_NOTIFY["ATTEMPTS"] < 1 or MARTECH_NOTIFY["RETRY_WAIT"] < 0:
    raise ImproperlyConfigured("MARTECH_NOTIFY_TIMEOUT must be positive, MARTECH_NOTIFY_ATTEMPTS at least 1 and "
                               "MARTECH_NOTIFY_RETRY_WAIT not negative")

# Lead scoring, lifecycle automation and the SQL handoff (martech.scoring).
MARTECH_SCORING = {
    "HANDOFF_ENABLED": env.bool("MARTECH_SCORING_HANDOFF_ENABLED", default=True),
    # Username of the default queue owner when routing does not assign one.
    "HANDOFF_DEFAULT_OWNER": env.str("MARTECH_SCORING_HANDOFF_DEFAULT_OWNER", default=""),
    "HANDOFF_NOTIFY_EMAILS": env.list("MARTECH_SCORING_HANDOFF_NOTIFY_EMAILS", default=[]),
    "HANDOFF_WEBHOOK_URL": env.str("MARTECH_SCORING_HANDOFF_WEBHOOK_URL", default=""),
    "HANDOFF_TASK_DUE_HOURS": env.int("MARTECH_SCORING_HANDOFF_TASK_DUE_HOURS", default=24),
    "WEBHOOK_TIMEOUT": env.float("MARTECH_SCORING_WEBHOOK_TIMEOUT", default=10.0),
    # Tries of a handoff's notifications: the first when it starts, the others by the minute's sweep.
    "HANDOFF_NOTIFY_ATTEMPTS": env.int("MARTECH_SCORING_HANDOFF_NOTIFY_ATTEMPTS", default=5),
    "STALE_MQL_DAYS": env.int("MARTECH_SCORING_STALE_MQL_DAYS", default=30),
    # Run scoring tasks inline instead of through the queue (tests, tiny installs).
    "TASKS_SYNC": env.bool("MARTECH_SCORING_TASKS_SYNC", default=False),
}

# CRM sync (martech/crm). Credentials come only from here; the defaults point
# at the local emulators that scripts/run starts, with the emulators' public
# credentials: `check --deploy` refuses them with debug off (martech/crm/checks.py).
_hubspot_port = PORT + HUBSPOT_PORT_OFFSET
_salesforce_port = PORT + SALESFORCE_PORT_OFFSET
MARTECH_CRM = {
    "HUBSPOT_URL": env.str("MARTECH_CRM_HUBSPOT_URL", default=f"http://127.0.0.1:{_hubspot_port}"),
    "HUBSPOT_TOKEN": env.str("MARTECH_CRM_HUBSPOT_TOKEN", default=_CRM_EMULATOR["HUBSPOT_TOKEN"]),
    "HUBSPOT_APP_SECRET": env.str("MARTECH_CRM_HUBSPOT_APP_SECRET", default=_CRM_EMULATOR["HUBSPOT_APP_SECRET"]),
    "HUBSPOT_EMULATOR_PORT": env.int("MARTECH_CRM_HUBSPOT_EMULATOR_PORT", default=_hubspot_port),
    # Calls per window this process makes for one HubSpot connection (all its
    # threads): HubSpot allows a private app 190 per 10 s on Professional and
    # Enterprise, 100 per 10 s otherwise.
    "HUBSPOT_RATE": env.str("MARTECH_CRM_HUBSPOT_RATE", default="190/10s"),
    # Search calls (POST /crm/v3/objects/{type}/search) per window, a limit of
    # their own: HubSpot's CRM search guide says 5 per second per token.
    "HUBSPOT_SEARCH_RATE": env.str("MARTECH_CRM_HUBSPOT_SEARCH_RATE", default="5/1s"),
    # Salesforce: the instance URL and OAuth credentials; the access token is
    # renewed once with the refresh token when it expires.
    "SALESFORCE_URL": env.str("MARTECH_CRM_SALESFORCE_URL", default=f"https://127.0.0.1:{_salesforce_port}"),
    "SALESFORCE_API_VERSION": env.str("MARTECH_CRM_SALESFORCE_API_VERSION", default="59.0"),
    "SALESFORCE_ACCESS_TOKEN": env.str("MARTECH_CRM_SALESFORCE_ACCESS_TOKEN",
                                       default=_CRM_EMULATOR["SALESFORCE_ACCESS_TOKEN"]),
    "SALESFORCE_REFRESH_TOKEN": env.str("MARTECH_CRM_SALESFORCE_REFRESH_TOKEN",
                                        default=_CRM_EMULATOR["SALESFORCE_REFRESH_TOKEN"]),
    "SALESFORCE_CLIENT_ID": env.str("MARTECH_CRM_SALESFORCE_CLIENT_ID", default=_CRM_EMULATOR["SALESFORCE_CLIENT_ID"]),
    "SALESFORCE_CLIENT_SECRET": env.str("MARTECH_CRM_SALESFORCE_CLIENT_SECRET",
                                        default=_CRM_EMULATOR["SALESFORCE_CLIENT_SECRET"]),
    # CA bundle the connector trusts for the instance ("" = the system's); the
    # default is the certificate the local emulator generates.
    "SALESFORCE_CA_CERT": env.str("MARTECH_CRM_SALESFORCE_CA_CERT",
                                  default=str(BASE_DIR / "var" / "crm" / "salesforce-emulator.pem")),
    "SALESFORCE_EMULATOR_CERT_DIR": env.str("MARTECH_CRM_SALESFORCE_EMULATOR_CERT_DIR",
                                            default=str(BASE_DIR / "var" / "crm")),
    "SALESFORCE_EMULATOR_PORT": env.int("MARTECH_CRM_SALESFORCE_EMULATOR_PORT", default=_salesforce_port),
    # New leads go to this sObject; a lead with a Salesforce Contact id (a converted lead) goes to Contact.
    "SALESFORCE_NEW_LEADS_AS": env.str("MARTECH_CRM_SALESFORCE_NEW_LEADS_AS", default="Lead"),
    # A drain batch of more records than this goes through Bulk API 2.0 instead of Collections (200 per call).
    "SALESFORCE_BULK_ABOVE": env.int("MARTECH_CRM_SALESFORCE_BULK_ABOVE", default=2000),
    # A pull whose backlog (the first query page's totalSize) is over this many
    # records, and every full pull, reads through a Bulk API 2.0 query job
    # (one job, CSV result sets of up to 50,000) instead of REST query pages of 2,000.
    "SF_BULK_THRESHOLD": env.int("MARTECH_CRM_SF_BULK_THRESHOLD", default=10_000),
    "TIMEOUT": env.float("MARTECH_CRM_TIMEOUT", default=30.0),
    "RETRIES": env.int("MARTECH_CRM_RETRIES", default=4),
    "BACKOFF_BASE": env.float("MARTECH_CRM_BACKOFF_BASE", default=0.5),
    "BACKOFF_MAX": env.float("MARTECH_CRM_BACKOFF_MAX", default=60.0),
    "MAX_ATTEMPTS": env.int("MARTECH_CRM_MAX_ATTEMPTS", default=5),
    "DRAIN_BATCH": env.int("MARTECH_CRM_DRAIN_BATCH", default=1000),
    # The scheduled pull asks for owners and for deletions (Salesforce Get
    # Deleted) at most once in this many minutes per connection, not every run.
    "SLOW_PULL_MINUTES": env.int("MARTECH_CRM_SLOW_PULL_MINUTES", default=60),
    "SLOWDOWN_AT": env.float("MARTECH_CRM_SLOWDOWN_AT", default=0.9),
    # Seconds the portal's/org's property and field definitions (crm.schema) are
    # trusted before a push or a mapping save reads them again (the check always does).
    "SCHEMA_MAX_AGE": env.int("MARTECH_CRM_SCHEMA_MAX_AGE", default=86400),
    # How long a drain holds the outbox rows it claimed (and a pull the failures
    # it retries): a crashed run's records are pushed again this long after it
    # took them. Above Q_TIMEOUT, so a drain still running (django-q2 kills it
    # at Q_TIMEOUT) is never overtaken by a second one pushing the same records.
    "OUTBOX_LEASE_SECONDS": env.int("MARTECH_CRM_OUTBOX_LEASE_SECONDS", default=Q_CLUSTER["timeout"] + 60),
    # Links from the lead 360 page to the record in the CRM's own UI, with
    # {id} (and {object}: Lead or Contact, for Salesforce) filled in, e.g.
    # https://app.hubspot.com/contacts/<portal id>/record/0-1/{id} and
    # https://<my domain>.lightning.force.com/lightning/r/{object}/{id}/view.
    # Empty (the default: the emulators have no UI) shows the ids only.
    "HUBSPOT_RECORD_URL": env.str("MARTECH_CRM_HUBSPOT_RECORD_URL", default=""),
    "SALESFORCE_RECORD_URL": env.str("MARTECH_CRM_SALESFORCE_RECORD_URL", default=""),
}
for _name in ("HUBSPOT_RECORD_URL", "SALESFORCE_RECORD_URL"):
    if MARTECH_CRM[_name] and ("{id}" not in MARTECH_CRM[_name]
                               or not MARTECH_CRM[_name].startswith(("https://", "http://"))):
        raise ImproperlyConfigured(f"MARTECH_CRM_{_name} must be an http(s) URL containing {{id}} "
                                   f"(got {MARTECH_CRM[_name]!r})")
if MARTECH_CRM["OUTBOX_LEASE_SECONDS"] <= Q_CLUSTER["timeout"]:
    raise ImproperlyConfigured("MARTECH_CRM_OUTBOX_LEASE_SECONDS must be larger than Q_TIMEOUT "
                               f"({Q_CLUSTER['timeout']} s): a shorter lease lets two drains push the same record")

# Nurture workflows (nurture/): caps, quiet hours, batches, channel backends.
MARTECH_NURTURE = {
    # Enrollments one scheduler run takes (and locks) per transaction.
    "BATCH_SIZE": env.int("NURTURE_BATCH_SIZE", default=500),
    # Global frequency cap on marketing email per lead, across workflows.
    "EMAIL_DAILY_CAP": env.int("NURTURE_EMAIL_DAILY_CAP", default=1),
    "EMAIL_WEEKLY_CAP": env.int("NURTURE_EMAIL_WEEKLY_CAP", default=3),
    # No SMS between these local hours (lead's time zone, else DJANGO_TIME_ZONE).
    "QUIET_START_HOUR": env.int("NURTURE_QUIET_START_HOUR", default=21),
    "QUIET_END_HOUR": env.int("NURTURE_QUIET_END_HOUR", default=8),
    # A message a worker took (queued) or started sending and left for this
    # long is taken over by recovery: its worker is dead or stalled. It must
    # exceed the send timeout (a live send is never taken over; check
    # nurture.W002); 120 s is four 30 s send timeouts, and a crash's work
    # resumes within this plus one scheduler tick (about 3 minutes).
    "SENDING_LEASE_SECONDS": env.int("NURTURE_SENDING_LEASE_SECONDS", default=120),
    # Longest wait on one channel call (SMTP socket, webhook POST).
    "SEND_TIMEOUT_SECONDS": env.int("NURTURE_SEND_TIMEOUT_SECONDS", default=30),
    # ConsoleSmsBackend only prints; a site that sends no SMS sets
    # nurture.channels.DisabledSmsBackend (SMS steps then fail, saying why).
    "SMS_BACKEND": env.str("NURTURE_SMS_BACKEND", default="nurture.channels.ConsoleSmsBackend"),
    "TWILIO_ACCOUNT_SID": env.str("TWILIO_ACCOUNT_SID", default=""),
    "TWILIO_AUTH_TOKEN": env.str("TWILIO_AUTH_TOKEN", default=""),
    "TWILIO_FROM": env.str("TWILIO_FROM", default=""),
    "TWILIO_BASE_URL": env.str("TWILIO_BASE_URL", default="https://api.twilio.com"),
    # Retries (same idempotency key) only when Twilio surely did not take it.
    "TWILIO_RETRIES": env.int("TWILIO_RETRIES", default=2),
    "AUDIENCE_ADAPTER": env.str("NURTURE_AUDIENCE_ADAPTER", default="nurture.channels.LogAudienceAdapter"),
    # Absolute base of tracking and unsubscribe links in emails.
    "PUBLIC_BASE_URL": env.str("NURTURE_PUBLIC_BASE_URL", default=f"http://127.0.0.1:{PORT}"),
    # Days the preference page (and one-click unsubscribe) link of an email
    # works; after that it answers 410 (a newer email carries a fresh link).
    # At least 30: senders must honour an unsubscribe for 30 days after a send.
    "PREFERENCE_LINK_DAYS": env.int("NURTURE_PREFERENCE_LINK_DAYS", default=180),
}
if MARTECH_NURTURE["PREFERENCE_LINK_DAYS"] < 30:
    raise ImproperlyConfigured("NURTURE_PREFERENCE_LINK_DAYS must be at least 30: an unsubscribe link must work "
                               "for 30 days after the email was sent")
for _k in ("QUIET_START_HOUR", "QUIET_END_HOUR"):
    if not 0 <= MARTECH_NURTURE[_k] <= 23:
        raise ImproperlyConfigured(f"NURTURE_{_k} must be an hour from 0 to 23")

# Double opt-in (forms with "require double opt-in"): the confirmation link.
MARTECH_CONSENT = {
    # Days the link in a confirmation email works; unconfirmed requests then expire.
    "CONFIRM_DAYS": env.int("CONSENT_CONFIRM_DAYS", default=7),
    # One confirmation email per person and channel in this many minutes, however
    # many times a form is posted with their address (no mail-bombing through a form).
    "CONFIRM_RESEND_MINUTES": env.int("CONSENT_CONFIRM_RESEND_MINUTES", default=60),
    # Absolute base of the link (the site's public address).
    "PUBLIC_BASE_URL": env.str("CONSENT_PUBLIC_BASE_URL", default=MARTECH_NURTURE["PUBLIC_BASE_URL"]),
    "CONFIRM_SUBJECT": env.str("CONSENT_CONFIRM_SUBJECT", default="Please confirm your subscription"),
}
if MARTECH_CONSENT["CONFIRM_DAYS"] < 1:
    raise ImproperlyConfigured("CONSENT_CONFIRM_DAYS must be at least 1")

# Retention (martech/retention.py): days each kind of data is kept; 0 keeps it forever.
MARTECH_RETENTION = {
    "EVENTS_DAYS": env.int("RETENTION_EVENTS_DAYS", default=0),  # raw events (not those behind a touchpoint)
    "MESSAGES_DAYS": env.int("RETENTION_MESSAGES_DAYS", default=0),  # settled nurture messages
    "SYNC_LOGS_DAYS": env.int("RETENTION_SYNC_LOGS_DAYS", default=0),  # CRM sync runs, processed webhooks
    "QUARANTINE_DAYS": env.int("RETENTION_QUARANTINE_DAYS", default=0),  # quarantined (rejected) events
    "DECISIONS_DAYS": env.int("RETENTION_DECISIONS_DAYS", default=0),  # nurture step executions
    "ASSIGNMENTS_DAYS": env.int("RETENTION_ASSIGNMENTS_DAYS", default=0),  # closed routing assignments
    "SCORE_HISTORY_DAYS": env.int("RETENTION_SCORE_HISTORY_DAYS", default=0),  # score changes (each lead's last two kept)
    # django-q2's records of successful tasks (Q_CLUSTER save_limit 0: not pruned by the cluster).
    "TASK_RESULTS_DAYS": env.int("RETENTION_TASK_RESULTS_DAYS", default=2),
    # Rows per delete transaction (short: a batch never holds a hot table's locks for long).
    "BATCH_SIZE": env.int("RETENTION_BATCH_SIZE", default=1000),
    # Batches per kind per run; what is left goes to the next run.
    "MAX_BATCHES": env.int("RETENTION_MAX_BATCHES", default=500),
}
for _k, _v in MARTECH_RETENTION.items():
    if _v < 0 or (_k in ("BATCH_SIZE", "MAX_BATCHES") and _v < 1):
        raise ImproperlyConfigured(f"RETENTION_{_k} must be {'at least 1' if _k in ('BATCH_SIZE', 'MAX_BATCHES') else '0 or more'}")
if 0 < MARTECH_RETENTION["MESSAGES_DAYS"] < 8:
    raise ImproperlyConfigured("RETENTION_MESSAGES_DAYS must be 0 or at least 8: the weekly email cap counts "
                               "the last 7 days of messages")

PHONENUMBER_DEFAULT_REGION = env.str("PHONENUMBER_DEFAULT_REGION", default="US")
PHONENUMBER_DB_FORMAT = "E164"

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
}
