"""The condition editor: a textarea that shows, as you type, how many leads
the condition matches or the column and reason why it is invalid (styled as
an error, not as help text). Saving an invalid condition is refused with
the reason as the field's form error (the model field's validator)."""
from __future__ import annotations

import json

from django import forms
from django.contrib.admin.views.decorators import staff_member_required
from django.http import JsonResponse
from django.urls import reverse
from django.utils.html import format_html
from django.utils.safestring import mark_safe

from martech.conditions import ConditionError, matching_leads, parse

_SCRIPT = """<script>(function(){var t=document.getElementById(%s),o=document.getElementById(%s),h;
function p(){fetch(%s+'?'+new URLSearchParams({condition:t.value,kind:%s})).then(function(r){return r.json()})
.then(function(d){o.textContent=d.error?d.error.message:('matches '+d.count+' leads');
o.className=d.error?'errornote':'help';t.setAttribute('aria-invalid',d.error?'true':'false')})}
t.addEventListener('input',function(){clearTimeout(h);h=setTimeout(p,400)});if(t.value)p();})();</script>"""


class ConditionWidget(forms.Textarea):
    def __init__(self, kind: str = "lead", attrs=None):
        self.kind = kind
        super().__init__(attrs={"rows": 2, "cols": 80, "style": "font-family: monospace", **(attrs or {})})

    def render(self, name, value, attrs=None, renderer=None):
        html = super().render(name, value, attrs, renderer)
        field_id = (attrs or {}).get("id") or f"id_{name}"
        out_id = f"{field_id}_preview"
        script = _SCRIPT % tuple(
            # JSON literals with "<" escaped cannot close the <script> element.
            json.dumps(v).replace("<", "\\u003c")
            for v in (field_id, out_id, reverse("admin:scoring_condition_preview"), self.kind)
        )
        return format_html('{}<div class="help" id="{}" aria-live="polite"></div>{}', html, out_id,
                           mark_safe(script))  # noqa: S308 - built only from escaped JSON literals


@staff_member_required
def condition_preview(request):
    """``GET ?condition=...`` -> ``{"count": N}`` or the error shape."""
    text = request.GET.get("condition", "")
    if request.GET.get("kind") == "event":
        try:
            cond = parse(text)
        except ConditionError as exc:
            return JsonResponse({"error": {"code": "invalid_condition", "message": exc.messages[0],
                                           "fields": {"condition": exc.messages}}}, status=400)
        return JsonResponse({"count": None, "fields": sorted(cond.fields)})
    try:
        count = matching_leads(text).count()
    except ConditionError as exc:
        return JsonResponse({"error": {"code": "invalid_condition", "message": exc.messages[0],
                                       "fields": {"condition": exc.messages}}}, status=400)
    return JsonResponse({"count": count})
