"""martech.configcache: per-process configuration caches that stay current
across transactions and processes, and the hot paths that use them (scoring
rules, nurture's trigger workflows, the CRM outbox's push mappings)."""
from __future__ import annotations

import pytest
from django.db import transaction

from martech import configcache
from martech.crm.models import Connection, FieldMapping, OutboxItem
from martech.models import ConfigVersion
from martech.services.leads import lead_upsert
from tests.factories import LeadFactory

pytestmark = pytest.mark.django_db


class Loader:
    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return f"value {self.calls}"


def test_a_value_is_reused_until_its_token_changes():
    load = Loader()
    assert configcache.cached("t.key", load) == "value 1"
    assert configcache.cached("t.key", load) == "value 1"
    configcache.bump("t.key")
    assert configcache.cached("t.key", load) == "value 2"
    assert configcache.cached("t.key", load) == "value 2"
    assert load.calls == 2


def test_a_rolled_back_change_leaves_no_value_behind():
    load = Loader()
    configcache.bump("t.rollback")
    assert configcache.cached("t.rollback", load) == "value 1"
    with pytest.raises(RuntimeError), transaction.atomic():
        configcache.bump("t.rollback")
        # Loaded inside the transaction that changed the configuration ...
        assert configcache.cached("t.rollback", load) == "value 2"
        raise RuntimeError("rolled back")
    # ... and not used once that transaction rolled back (the token went back).
    assert configcache.cached("t.rollback", load) == "value 3"


def test_a_change_committed_by_another_process_is_seen():
    load = Loader()
    configcache.bump("t.other")
    assert configcache.cached("t.other", load) == "value 1"
    # Another process's commit: a new token in the table, nothing in this process's memory.
    ConfigVersion.objects.filter(key="t.other").update(token=12345)
    assert configcache.cached("t.other", load) == "value 2"


def test_a_snapshot_reads_every_token_with_one_query(django_assert_num_queries):
    loads = {key: Loader() for key in ("t.a", "t.b", "t.c")}
    configcache.bump(*loads)
    for key, load in loads.items():
        configcache.cached(key, load)
    with django_assert_num_queries(1), configcache.snapshot():
        with configcache.snapshot():  # nested: the outer one's read holds
            for key, load in loads.items():
                assert configcache.cached(key, load) == "value 1"
    # A change made inside a snapshot is seen inside it.
    with configcache.snapshot():
        configcache.bump("t.b")
        assert configcache.cached("t.b", loads["t.b"]) == "value 2"


def test_outside_a_snapshot_each_read_is_one_query(django_assert_num_queries):
    load = Loader()
    configcache.cached("t.one", load)
    with django_assert_num_queries(1):
        configcache.cached("t.one", load)


# --- the users ------------------------------------------------------------------


@pytest.fixture
def hubspot_push(db):
    conn = Connection.objects.create(provider="hubspot", name="HubSpot")
    FieldMapping.objects.create(connection=conn, local_field="job_title", remote_field="jobtitle")
    return conn


def _queued(conn, lead):
    return OutboxItem.objects.filter(connection=conn, local_id=lead.pk).count()


def _change_title(lead, title):
    lead_upsert(data={"email": lead.email, "job_title": title}, source="test", overwrite=True)


def test_outbox_follows_mapping_and_connection_changes(hubspot_push):
    lead = LeadFactory()
    _change_title(lead, "CTO")  # warms the mappings cache
    assert _queued(hubspot_push, lead) == 1
    OutboxItem.objects.all().delete()
    mapping = hubspot_push.mappings.get()
    mapping.direction = FieldMapping.Direction.PULL
    mapping.save()
    _change_title(lead, "CEO")
    assert _queued(hubspot_push, lead) == 0  # a pull-only mapping queues nothing
    mapping.direction = FieldMapping.Direction.BOTH
    mapping.save()
    hubspot_push.is_active = False
    hubspot_push.save()
    _change_title(lead, "CFO")
    assert _queued(hubspot_push, lead) == 0  # an inactive connection queues nothing
    hubspot_push.is_active = True
    hubspot_push.save()
    _change_title(lead, "COO")
    assert _queued(hubspot_push, lead) == 1
    OutboxItem.objects.all().delete()
    mapping.delete()
    _change_title(lead, "CMO")
    assert _queued(hubspot_push, lead) == 0


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("reference_data")
def test_incremental_rescore_task_reads_its_configuration_once(django_assert_num_queries, hubspot_push):
    """The whole unit of work in autocommit, as a worker runs it: the rules,
    the outbox's mappings (a push mapping exists) and the score-trigger
    workflows (one exists) come from the caches after one token query."""
    from martech.models import EventType
    from martech.scoring import services
    from martech.scoring.models import EngagementRule, ScoringModel
    from nurture.models import Workflow
    from nurture.services import workflow_publish
    from tests.factories import EventFactory

    model = ScoringModel.objects.create(name="Q", is_active=True)
    view = EventType.objects.get_or_create(name="page_view")[0]
    EngagementRule.objects.create(model=model, name="Views", event_type=view, points=5)
    FieldMapping.objects.create(connection=hubspot_push, local_field="total_score", remote_field="hubspotscore",
                                kind="number", direction="push")
    wf = Workflow.objects.create(name="High", definition={"start": "end", "steps": {"end": {"type": "end"}}},
                                 trigger="score",
                                 trigger_config={"threshold": 1000})
    workflow_publish(workflow=wf)
    lead = LeadFactory()
    EventFactory(lead=lead, event_type=view, client_event_id="q-1")
    services.scores_recompute(lead_ids=[lead.pk], reason="warm")
    EventFactory(lead=lead, event_type=view, client_event_id="q-2")
    # tokens, BEGIN, lead (locked), events, UPDATE, INSERT history, INSERT outbox, COMMIT;
    # nurture's receiver runs after the commit and needs no query (no crossing).
    with django_assert_num_queries(8) as ctx:
        assert services.scores_recompute(lead_ids=[lead.pk], reason="event") == 1
    sqls = [q["sql"] for q in ctx.captured_queries]
    assert sum("crm_fieldmapping" in s or "nurture_workflow" in s or "scoring_fitrule" in s for s in sqls) == 0
    assert OutboxItem.objects.filter(connection=hubspot_push, local_id=lead.pk).exists()
