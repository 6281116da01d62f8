"""Public tracking endpoints: open pixel, click redirect, unsubscribe page
with RFC 8058 one-click POST. Links are signed (django.core.signing), so a
forged or edited token answers 404 and records nothing."""
from __future__ import annotations

import base64
import logging

from django.core import signing
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from nurture import channels
from nurture.models import Message
from nurture.services import message_track, message_unsubscribe

log = logging.getLogger(__name__)
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _message(token: str) -> tuple[Message, dict]:
    try:
        data = channels.unsign(token)
    except signing.BadSignature:
        raise Http404("Unknown link.") from None
    msg = Message.objects.select_related("lead").filter(pk=data.get("m")).first()
    if msg is None:
        raise Http404("Unknown link.")
    return msg, data


def open_pixel(request, token: str):
    msg, _ = _message(token)
    message_track(message=msg, kind="open")
    return HttpResponse(PIXEL, content_type="image/gif", headers={"Cache-Control": "no-store"})


def click(request, token: str):
    msg, data = _message(token)
    url = data.get("u", "")
    if not url.startswith(("http://", "https://")):
        raise Http404("Unknown link.")
    message_track(message=msg, kind="click", url=url)
    return HttpResponseRedirect(url)


@csrf_exempt  # RFC 8058: the mail client POSTs "List-Unsubscribe=One-Click" with no session
@require_http_methods(["GET", "POST"])
def unsubscribe(request, token: str):
    msg, _ = _message(token)
    if request.method == "POST":
        message_unsubscribe(message=msg, source="nurture:unsubscribe")
        return render(request, "nurture/unsubscribe.html", {"done": True, "email": msg.to})
    return render(request, "nurture/unsubscribe.html", {"done": False, "email": msg.to})
