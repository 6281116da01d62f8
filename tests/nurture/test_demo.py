import pytest

from nurture import demo
from nurture.gallery import GALLERY
from nurture.models import Workflow

pytestmark = pytest.mark.django_db


def test_demo_creates_and_publishes_each_journey_together(monkeypatch):
    publish = demo.workflow_publish
    failed = []

    def publish_failing_once(*, workflow, **kwargs):
        if not failed and Workflow.objects.filter(status=Workflow.Status.ACTIVE).exists():
            failed.append(workflow.name)  # the second journey to publish: the worker dies here
            raise RuntimeError("worker died")
        return publish(workflow=workflow, **kwargs)

    monkeypatch.setattr(demo, "workflow_publish", publish_failing_once)
    with pytest.raises(RuntimeError):
        demo.demo_seed()
    assert failed and not Workflow.objects.filter(name=failed[0]).exists()
    assert demo.demo_seed()["nurture workflows"] == len(GALLERY) - 1
    by_name = {wf.name: wf for wf in Workflow.objects.all()}
    assert set(by_name) == {spec["name"] for spec in GALLERY.values()}
    for key, spec in GALLERY.items():
        wf = by_name[spec["name"]]
        assert (wf.status, wf.current_version_id is not None) == (
            (Workflow.Status.DRAFT, False) if key == "winback_180" else (Workflow.Status.ACTIVE, True))
    assert demo.demo_seed()["nurture workflows"] == 0
