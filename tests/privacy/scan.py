"""Every text column of every model, searched for strings that must be gone."""
from __future__ import annotations

from functools import reduce
from operator import or_

from django.apps import apps
from django.db import models
from django.db.models import Q, TextField
from django.db.models.functions import Cast

TEXT_FIELDS = (models.CharField, models.TextField, models.JSONField)


def text_columns() -> list[tuple[type[models.Model], str]]:
    out = []
    for model in apps.get_models():
        opts = model._meta
        if opts.proxy or not opts.managed:
            continue
        out += [(model, f.attname) for f in opts.concrete_fields if isinstance(f, TEXT_FIELDS)]
    return out


def rows_holding(needles: list[str]) -> dict[str, int]:
    """{"app.Model.column": rows} for every column where any needle occurs (case-insensitive)."""
    found = {}
    for model, column in text_columns():
        cast = f"_scan_{column}"
        qs = model._base_manager.annotate(**{cast: Cast(column, TextField())}).filter(
            reduce(or_, (Q(**{f"{cast}__icontains": n}) for n in needles)))
        n = qs.count()
        if n:
            found[f"{model._meta.label}.{column}"] = n
    return found
