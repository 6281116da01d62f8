"""A test email backend standing in for an ESP that can be asked whether a
message went out: it appends each message's idempotency key to a journal file
(fsynced before returning, like an ESP's accepted response) and answers
``was_sent(key)`` from it. ``NURTURE_JOURNAL`` names the file;
``NURTURE_JOURNAL_DELAY`` (seconds) slows each send so a test can kill the
worker mid-batch."""
from __future__ import annotations

import os
import time

from django.core.mail.backends.base import BaseEmailBackend


class JournalEmailBackend(BaseEmailBackend):
    def send_messages(self, messages):
        path = os.environ["NURTURE_JOURNAL"]
        delay = float(os.environ.get("NURTURE_JOURNAL_DELAY", "0"))
        with open(path, "a") as f:
            for m in messages:
                if delay:
                    time.sleep(delay)
                f.write(m.extra_headers["X-Nurture-Key"] + "\n")
                f.flush()
                os.fsync(f.fileno())
        return len(messages)

    def was_sent(self, key: str) -> bool:
        try:
            with open(os.environ["NURTURE_JOURNAL"]) as f:
                return key in {line.strip() for line in f}
        except FileNotFoundError:
            return False


def journal(path) -> list[str]:
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []
