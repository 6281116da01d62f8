"""How segment conditions reach the database: one UPPER() per text column
for = / in (the form the planner statistics of migration 0003 describe), and
those statistics on PostgreSQL."""
from __future__ import annotations

from django.db import connection
from django.db.migrations.recorder import MigrationRecorder

from martech.conditions import matching_leads
from tests.factories import AccountFactory, LeadFactory


def test_in_folds_the_column_once_and_matches_case_insensitively(db):
    a = LeadFactory(country="US", account=AccountFactory(industry="Software"))
    b = LeadFactory(country="de", account=AccountFactory(industry="software"))
    LeadFactory(country="FR", account=AccountFactory(industry="Software"))
    qs = matching_leads('country in ("us", "DE", "gb") and account.industry = "SOFTWARE"')
    sql = str(qs.query)
    assert sql.count('UPPER("martech_lead"."country")') == 1
    assert sorted(qs.values_list("pk", flat=True)) == sorted([a.pk, b.pk])
    assert sorted(matching_leads('not country in ("us", "DE")').values_list("pk", flat=True)) == sorted(
        set(qs.model.objects.values_list("pk", flat=True)) - {a.pk, b.pk})


def test_upper_statistics_exist_on_postgresql(db):
    assert MigrationRecorder.Migration.objects.filter(app="scoring", name="0003_upper_text_statistics").exists()
    if connection.vendor != "postgresql":
        return  # SQLite: the migration has nothing to create and ran without error
    with connection.cursor() as cursor:
        cursor.execute("SELECT stxname FROM pg_statistic_ext WHERE stxname LIKE 'scoring_upper_%%'")
        names = {row[0] for row in cursor.fetchall()}
    assert {"scoring_upper_lead_country", "scoring_upper_lead_first_name", "scoring_upper_account_industry",
            "scoring_upper_lead_job_title"} <= names
