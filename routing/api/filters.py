"""Query filters of the routing lists (django-filter, as martech.api.filters)."""
from __future__ import annotations

import django_filters as df

from martech.api.filters import DateTimeFilter, IntegerFilter
from routing.models import Assignment, OutOfOffice


class AssignmentFilter(df.FilterSet):
    rep = IntegerFilter(field_name="rep_id")
    team = IntegerFilter(field_name="team_id")
    lead = IntegerFilter(field_name="lead_id")
    status = df.ChoiceFilter(field_name="status", choices=Assignment.Status.choices)
    lifecycle = df.ChoiceFilter(field_name="lifecycle", choices=Assignment.Lifecycle.choices)
    is_current = df.BooleanFilter(field_name="is_current")
    created_at_after = DateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_at_before = DateTimeFilter(field_name="created_at", lookup_expr="lte")

    class Meta:
        model = Assignment
        fields = []


class AbsenceFilter(df.FilterSet):
    rep = IntegerFilter(field_name="rep_id")
    ends_at_after = DateTimeFilter(field_name="ends_at", lookup_expr="gte", help_text="Absences not over by then.")

    class Meta:
        model = OutOfOffice
        fields = []
