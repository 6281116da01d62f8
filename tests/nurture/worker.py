"""A worker process for the exactly-once tests: ``python -m tests.nurture.worker BATCH``
advances due enrollments until none is left, with the journal email backend."""
import os
import sys

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "martech.settings")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

settings.EMAIL_BACKEND = "tests.nurture.backends.JournalEmailBackend"
settings.MARTECH_NURTURE = {**settings.MARTECH_NURTURE, "SENDING_LEASE_SECONDS": int(os.environ.get("LEASE", "600"))}

from nurture.engine import enrollments_advance_due  # noqa: E402

print(enrollments_advance_due(batch_size=int(sys.argv[1])), flush=True)
