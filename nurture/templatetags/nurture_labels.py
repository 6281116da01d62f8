"""Template filters that show nurture codes as words (see nurture.labels)."""
from __future__ import annotations

from django import template

from nurture import labels

register = template.Library()

register.filter("step_type_label", labels.step_type_label)
register.filter("outcome_label", labels.outcome_label)
register.filter("detail_text", labels.detail_text)
