import pytest

from martech.models import Lead, LifecycleStage, SalesTask
from martech.scoring.demo import demo_seed
from martech.scoring.models import ScoreHistory
from martech.services.demo import demo_seed as core_demo_seed

pytestmark = pytest.mark.django_db


def test_demo_scores_only_leads_never_scored():
    core_demo_seed(leads=20, progress=False)
    earlier = Lead.objects.order_by("pk").first()  # as if the system had scored it already
    Lead.objects.filter(pk=earlier.pk).update(fit_score=1, engagement_score=2, total_score=3)
    ScoreHistory.objects.create(lead=earlier, fit_score=1, engagement_score=2, total_score=3, old_total=0,
                                reason="earlier", breakdown=[])
    first = demo_seed()
    assert first["leads scored"] == ScoreHistory.objects.exclude(lead=earlier).count() > 0
    assert Lead.objects.filter(pk=earlier.pk).values_list("fit_score", "engagement_score", "total_score").get() == (1, 2, 3)
    assert earlier.score_history.count() == 1
    history = list(ScoreHistory.objects.order_by("pk").values())
    assert demo_seed()["leads scored"] == 0
    assert list(ScoreHistory.objects.order_by("pk").values()) == history


def test_demo_follow_up_tasks_are_made_once():
    core_demo_seed(leads=20, progress=False)
    assert demo_seed()["sales tasks"] > 0
    tasks = set(SalesTask.objects.values_list("key", flat=True))
    # Which leads are SQLs moves as the system works them: a new first SQL
    # gets no demo task on a later run.
    newcomer = Lead.objects.exclude(lifecycle_stage__key__in=["sql", "opportunity"]).order_by("pk").first()
    Lead.objects.filter(pk=newcomer.pk).update(lifecycle_stage=LifecycleStage.objects.get(key="sql"))
    assert demo_seed()["sales tasks"] == 0
    assert set(SalesTask.objects.values_list("key", flat=True)) == tasks
