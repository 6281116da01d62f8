"""The pull's read-ahead (``services._ReadAhead``): records come in their
order, the reader's error is raised where it happened (after the records
read before it), and closing stops a reader that is ahead."""
from __future__ import annotations

import pytest

from martech.crm.services import _ReadAhead


class Boom(Exception):
    pass


def test_records_in_order_then_the_readers_error_where_it_happened():
    def records():
        yield from range(5)
        raise Boom("the sixth read failed")

    got = []
    with pytest.raises(Boom):
        for record in _ReadAhead(records(), depth=2):
            got.append(record)
    assert got == [0, 1, 2, 3, 4]


def test_every_record_then_the_end():
    reader = _ReadAhead(iter(range(1_000)), depth=7)
    assert list(reader) == list(range(1_000))
    reader.close()


def test_close_stops_a_reader_that_is_ahead_and_reads_no_further():
    read = []

    def records():
        for n in range(10_000):
            read.append(n)
            yield n

    reader = _ReadAhead(records(), depth=3)
    iterator = iter(reader)
    assert next(iterator) == 0
    reader.close()
    assert not reader._thread.is_alive()
    # At most the queue's depth and the one in hand beyond what was consumed.
    assert len(read) <= 1 + 3 + 1


@pytest.mark.django_db
def test_a_full_import_reads_its_next_list_page_while_it_writes_one(connection, hubspot, monkeypatch):
    import time

    from martech.crm.services import pull as pull_module
    from martech.crm.services import pull_changes
    from martech.models import Lead

    for i in range(250):
        hubspot.put_contact({"email": f"r{i}@example.org", "firstname": f"R{i}"})
    real = pull_module.pulled_apply_page
    seen_while_writing: list[int] = []

    def lists() -> int:
        return sum(1 for m, p, _ in hubspot.requests if m == "GET" and p == "/crm/v3/objects/contacts")

    def apply_page(**kwargs):
        if not seen_while_writing:
            # The first page is being written: the second page's call goes out meanwhile.
            deadline = time.monotonic() + 5
            while lists() < 2 and time.monotonic() < deadline:
                time.sleep(0.01)
        seen_while_writing.append(lists())
        return real(**kwargs)

    monkeypatch.setattr(pull_module, "pulled_apply_page", apply_page)
    run = pull_changes(connection=connection, full=True)
    assert (run.pulled, run.error, run.api_calls) == (250, "", 3)
    assert seen_while_writing[0] >= 2
    assert Lead.objects.filter(email__startswith="r").count() == 250
