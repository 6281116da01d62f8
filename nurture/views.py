"""Public tracking endpoints: open pixel, click redirect, and the preference
page behind the unsubscribe link, with RFC 8058 one-click POST. Links are
signed (django.core.signing), so a forged or edited token answers 404 and
records nothing; the preference page's link also expires
(NURTURE_PREFERENCE_LINK_DAYS) and then answers 410."""
from __future__ import annotations

import base64
import logging

from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.http import Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_http_methods

from martech.api.throttling import FormCaptureThrottle
from martech.db import run_in_transaction
from martech.models import ConsentChannel
from martech.selectors import lead_preferences
from nurture import channels
from nurture.models import Message
from nurture.services import message_preferences_save, message_track, message_unsubscribe, message_unsubscribe_all

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


# What the preference page calls each consent channel.
CHANNEL_WORDS = {
    ConsentChannel.EMAIL: "Marketing email",
    ConsentChannel.SMS: "Text messages (SMS)",
    ConsentChannel.ADS: "Personalised ads",
    ConsentChannel.PHONE: "Phone calls",
}


def masked(address: str) -> str:
    """``ann@example.com`` -> ``a**@example.com``: enough for the person to
    recognise their address, not a list of addresses for whoever holds a
    forwarded link."""
    local, at, domain = (address or "").partition("@")
    return f"{local[:1]}{'*' * max(len(local) - 1, 2)}{at}{domain}" if at else "your address"


def _evidence(request) -> dict:
    return {"page": "preference center", "ip": FormCaptureThrottle().get_ident(request),
            "user_agent": request.META.get("HTTP_USER_AGENT", "")[:500]}


def _page(request, msg: Message, *, done: str = "", status: int = 200):
    prefs = lead_preferences(lead=msg.lead)
    channels_shown = [{"key": c, "label": CHANNEL_WORDS.get(c, label), "on": prefs.channels.get(c) == "granted"}
                      for c, label in ConsentChannel.choices]
    return render(request, "nurture/unsubscribe.html", {
        "done": done, "email": masked(msg.to), "channels": channels_shown,
        "topics": [{"key": t.topic.key, "name": t.topic.name, "description": t.topic.description, "on": t.subscribed}
                   for t in prefs.topics if t.topic.channel == ConsentChannel.EMAIL],
    }, status=status)


@csrf_exempt  # RFC 8058: the mail client POSTs "List-Unsubscribe=One-Click" with no session
@require_http_methods(["GET", "POST"])
def unsubscribe(request, token: str):
    """The preference page (GET), its choices (POST action=save), "unsubscribe
    from all" (action=unsubscribe_all) and, for any other POST, the RFC 8058
    one-click unsubscribe from marketing email. The signed link is the only
    credential: the page shows the person's own choices and a masked address."""
    try:
        channels.unsign(token, max_age=timedelta(days=settings.MARTECH_NURTURE["PREFERENCE_LINK_DAYS"]))
    except signing.SignatureExpired:
        return render(request, "nurture/unsubscribe.html", {"expired": True}, status=410)
    except signing.BadSignature:
        raise Http404("Unknown link.") from None
    msg, _ = _message(token)
    if request.method == "GET":
        return _page(request, msg)
    action = request.POST.get("action", "")
    if action == "save":
        chosen = {c: f"channel_{c}" in request.POST for c in ConsentChannel.values}
        topics = {t.topic.key: f"topic_{t.topic.key}" in request.POST for t in lead_preferences(lead=msg.lead).topics
                  if t.topic.channel == ConsentChannel.EMAIL}
        # This view is the transaction boundary: a deadlock or serialization failure reruns the change.
        run_in_transaction(lambda: message_preferences_save(message=msg, channels=chosen, topics=topics,
                                                            evidence=_evidence(request)))
        return _page(request, msg, done="saved")
    if action == "unsubscribe_all":
        run_in_transaction(lambda: message_unsubscribe_all(message=msg, evidence=_evidence(request)))
        return _page(request, msg, done="all")
    run_in_transaction(lambda: message_unsubscribe(message=msg, source="nurture:unsubscribe",
                                                   evidence=_evidence(request)))
    return _page(request, msg, done="email")
