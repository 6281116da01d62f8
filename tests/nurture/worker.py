"""A worker process for the exactly-once tests: ``python -m tests.nurture.worker BATCH``
advances due enrollments until none is left, with the journal email backend,
or with SMTP to a loopback sink when ``NURTURE_SMTP_PORT`` is set (a backend
that cannot say whether a message went out)."""
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

if os.environ.get("NURTURE_SMTP_PORT"):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT = "127.0.0.1", int(os.environ["NURTURE_SMTP_PORT"])
    settings.EMAIL_HOST_USER = settings.EMAIL_HOST_PASSWORD = ""
    settings.EMAIL_USE_TLS = settings.EMAIL_USE_SSL = False
else:
    settings.EMAIL_BACKEND = "tests.nurture.backends.JournalEmailBackend"
settings.MARTECH_NURTURE = {**settings.MARTECH_NURTURE, "SENDING_LEASE_SECONDS": int(os.environ.get("LEASE", "600"))}

from nurture.engine import enrollments_advance_due  # noqa: E402

print(enrollments_advance_due(batch_size=int(sys.argv[1])), flush=True)
