"""The working-hours editor: per weekday, from/to time inputs instead of
typing ``{"mon": [["09:00", "17:00"]]}``. It reads and writes exactly the
JSON the engine reads (``Rep.working_hours``), so the model's validation
still decides what is valid and says why."""
from __future__ import annotations

import json

from django import forms
from django.utils.html import format_html, format_html_join

from routing.models import WEEKDAYS

DAY_NAMES = dict(zip(WEEKDAYS, ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")))
# Empty from/to pairs shown per day beyond those already set (a split shift
# needs two).
SLOTS = 2
# Pairs read back per day at most (a form cannot grow rows; a generous bound).
MAX_PAIRS = 8


def _parse(value) -> dict:
    if isinstance(value, dict):
        return value
    if not value:
        return {}
    try:
        parsed = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


class WorkingHoursWidget(forms.Widget):
    """Posts ``<name>_<day>_<n>_from`` / ``_to`` (HH:MM, the browser's time
    inputs). A pair with both times empty is no interval; a pair with one
    time is kept as typed, so the model's validation names the day and the
    pair rather than the widget dropping it. Every day empty is ``{}``:
    always on, as the engine reads it. A post without the day inputs (a
    script sending the JSON itself) is taken as it is."""

    def value_from_datadict(self, data, files, name):
        if not any(f"{name}_{day}_0_from" in data for day in WEEKDAYS):
            return data.get(name)
        hours: dict[str, list[list[str]]] = {}
        for day in WEEKDAYS:
            for n in range(MAX_PAIRS):
                start = (data.get(f"{name}_{day}_{n}_from") or "").strip()
                end = (data.get(f"{name}_{day}_{n}_to") or "").strip()
                if start or end:
                    hours.setdefault(day, []).append([start[:5], end[:5]])
        return json.dumps(hours)

    def value_omitted_from_data(self, data, files, name):
        return name not in data and f"{name}_mon_0_from" not in data

    def render(self, name, value, attrs=None, renderer=None):
        hours = _parse(value)
        rows = []
        for day in WEEKDAYS:
            pairs = [p for p in hours.get(day, []) if isinstance(p, (list, tuple)) and len(p) == 2]
            cells = format_html_join(
                " ", '<span class="wh-pair"><input type="time" name="{0}_{1}_{2}_from" value="{3}" '
                'aria-label="{4} from"> – <input type="time" name="{0}_{1}_{2}_to" value="{5}" aria-label="{4} to"></span>',
                ((name, day, n, start, DAY_NAMES[day], end)
                 for n, (start, end) in enumerate([*pairs, *[("", "")] * max(SLOTS - len(pairs), 1)])),
            )
            rows.append(format_html('<tr><th scope="row">{}</th><td>{}</td></tr>', DAY_NAMES[day], cells))
        return format_html(
            '<table class="working-hours" id="{}"><tbody>{}</tbody></table>'
            '<div class="help">Local times in the rep\'s time zone; a "to" before the "from" runs past midnight '
            "(a night shift). Leave a day empty for a day off; leave every day empty for always on.</div>",
            (attrs or {}).get("id") or f"id_{name}", format_html_join("", "{}", ((r,) for r in rows)),
        )
