"""Template filters that show routing codes as words (see routing.labels)."""
from __future__ import annotations

from django import template

from routing import labels

register = template.Library()

register.filter("skip_label", labels.skip_label)
register.filter("method_label", labels.method_label)
register.filter("step_label", labels.step_label)
