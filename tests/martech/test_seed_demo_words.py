"""seed_demo shows the product: about a fifth of the demo leads meet the
demo's MQL rule, and the command prints a line per stage, not a line per
queued task."""
from __future__ import annotations

import logging

import pytest
from django.core.management import call_command

from martech.conditions import matching_leads
from martech.management.commands.seed_demo import TASK_QUEUE_LOGGER, quiet_task_queue
from martech.models import Lead
from martech.scoring import demo as scoring_demo
from martech.scoring.models import LifecycleRule
from martech.services.demo import demo_seed

pytestmark = pytest.mark.django_db


def test_a_fifth_of_the_demo_leads_meet_the_mql_rule():
    demo_seed(leads=400)
    scoring_demo.demo_seed()
    rule = LifecycleRule.objects.get(name="Qualified by score")
    assert rule.condition == scoring_demo.MQL_CONDITION
    share = matching_leads(rule.condition, queryset=Lead.objects.all()).count() / Lead.objects.count()
    assert 0.15 <= share <= 0.25, share


def test_task_queue_chatter_is_counted_not_printed(caplog):
    logger = logging.getLogger(TASK_QUEUE_LOGGER)
    with caplog.at_level(logging.INFO, logger=TASK_QUEUE_LOGGER):
        with quiet_task_queue() as queue:
            logger.info("Enqueued [django_q:martech:q] 1")
            logger.info("Enqueued [django_q:martech:q] 2")
            logger.warning("Broker unreachable")
        logger.info("Enqueued [django_q:martech:q] 3")  # after seeding: logged again
    assert queue.enqueued == 2
    assert [r.getMessage() for r in caplog.records] == ["Broker unreachable", "Enqueued [django_q:martech:q] 3"]


def test_command_prints_one_line_per_stage(capsys):
    call_command("seed_demo", "--leads", "20", "--no-progress")
    out = capsys.readouterr().out
    assert "Enqueued" not in out
    lines = [line for line in out.splitlines() if line.startswith("  ")]
    stages = [line.split(":")[0].strip() for line in lines]
    assert stages[0] == "leads and history"
    assert {"martech.scoring", "routing", "nurture", "attribution"} <= set(stages)
    assert len(stages) == len(set(stages))
    assert "Demo data ready (20 leads)" in out


def test_other_output_is_held_back_and_counted(capsys, monkeypatch):
    from nurture import demo as nurture_demo

    def noisy(*, progress):
        print("Subject: Your ebook\n\nHere is your copy")  # as the console email backend does
        return {"nurture workflows": 0}

    monkeypatch.setattr(nurture_demo, "demo_seed", noisy)
    call_command("seed_demo", "--leads", "5", "--no-progress")
    out = capsys.readouterr().out
    assert "Here is your copy" not in out
    assert "(3 line(s) of other output held back" in out
    call_command("seed_demo", "--leads", "5", "--no-progress", "--verbosity", "2")
    assert "Here is your copy" in capsys.readouterr().out
