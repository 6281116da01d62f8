"""A test email backend standing in for an ESP that can be asked whether a
message went out: it appends each message's idempotency key to a journal file
(fsynced before returning, like an ESP's accepted response) and answers
``was_sent(key)`` from it. ``NURTURE_JOURNAL`` names the file;
``NURTURE_JOURNAL_DELAY`` (seconds) slows each send so a test can kill the
worker mid-batch."""
from __future__ import annotations

import os
import time
import uuid

from django.core.mail.backends.base import BaseEmailBackend

from anymail.backends.test import EmailBackend as AnymailTestBackend


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


class EspEmailBackend(AnymailTestBackend):
    """anymail's test backend (messages land in django.core.mail.outbox)
    answering an ESP-style message id per message, as Mailgun's, Brevo's or
    Postmark's API does; ``issued`` lists them in order."""

    issued: list[str] = []

    def get_esp_message_id(self, message) -> str:
        message_id = f"<{uuid.uuid4().hex}@esp.example.com>"
        EspEmailBackend.issued.append(message_id)
        return message_id
