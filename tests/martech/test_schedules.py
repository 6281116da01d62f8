import pytest
from django.core.management import call_command
from django_q.models import Schedule

from martech import schedules
from martech.schedules import Periodic

pytestmark = pytest.mark.django_db


def test_sync_is_idempotent_and_removes_stale(monkeypatch):
    declared = [Periodic(name="a", func="math.floor", minutes=5), Periodic(name="b", func="math.ceil", cron="0 3 * * *")]
    monkeypatch.setattr(schedules, "declared", lambda: declared)
    Schedule.objects.create(name="martech:gone", func="math.fabs", schedule_type=Schedule.MINUTES, minutes=1)
    Schedule.objects.create(name="someone-elses", func="math.fabs", schedule_type=Schedule.MINUTES, minutes=1)
    assert schedules.schedules_sync() == (2, 1)
    assert schedules.schedules_sync() == (2, 0)
    rows = {s.name: (s.func, s.schedule_type, s.minutes, s.cron) for s in Schedule.objects.all()}
    assert rows == {
        "martech:a": ("math.floor", Schedule.MINUTES, 5, None),
        "martech:b": ("math.ceil", Schedule.CRON, None, "0 3 * * *"),
        "someone-elses": ("math.fabs", Schedule.MINUTES, 1, None),
    }


def test_periodic_needs_exactly_one_timing():
    with pytest.raises(ValueError):
        Periodic(name="x", func="math.floor")
    with pytest.raises(ValueError):
        Periodic(name="x", func="math.floor", minutes=1, cron="* * * * *")


def test_command_runs_with_the_apps_declarations():
    call_command("setup_schedules", stdout=open("/dev/null", "w"))
    assert set(Schedule.objects.values_list("name", flat=True)) == {"martech:" + p.name for p in schedules.declared()}
