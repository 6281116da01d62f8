"""An erasure racing a form post or a CRM pull of the same person
(PostgreSQL: real concurrent transactions)."""
from __future__ import annotations

import threading

import pytest
from django.db import close_old_connections, connection, transaction

from martech.models import Lead
from martech.privacy.services import subject_erase
from martech.services.leads import SubjectErased, lead_upsert

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres_only]


def _in_thread(fn, results, key):
    def run():
        try:
            results[key] = fn()
        except Exception as exc:  # noqa: BLE001 - the test reads what each side got
            results[key] = exc
        finally:
            close_old_connections()
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


@pytest.mark.parametrize("existing", [True, False])
def test_a_create_waiting_on_an_erasure_meets_the_tombstone(reference_data, existing):
    email = "race@example.org"
    if existing:
        Lead.objects.create(email=email, first_name="Race")
    results: dict = {}
    erasure_holds = threading.Event()
    release = threading.Event()

    def erase():
        # The erasure's transaction stays open (holding its locks) until the upsert is waiting on it.
        with transaction.atomic():
            receipt = subject_erase(email=email, source="test", crm_delete=False)
            erasure_holds.set()
            release.wait(5)
            return receipt

    def upsert():
        erasure_holds.wait(5)
        return lead_upsert(data={"email": email, "first_name": "Again"}, source="form:x", public=True)

    t1 = _in_thread(erase, results, "erase")
    t2 = _in_thread(upsert, results, "upsert")
    erasure_holds.wait(5)
    # Give the upsert time to reach the lock it waits on, then let the erasure commit.
    t2.join(0.5)
    release.set()
    t1.join(10)
    t2.join(10)
    assert not isinstance(results["erase"], Exception), results["erase"]
    assert isinstance(results["upsert"], SubjectErased), results["upsert"]
    assert not Lead.objects.filter(email=email).exists()
