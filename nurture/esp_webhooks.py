"""The ESPs' tracking webhooks, mounted at /anymail/<esp>/tracking/ (the
paths anymail documents), feeding nurture.anymail_hooks.

Only the tracking views of the ESPs in martech.email_config.ESPS are
mounted, not all of ``anymail.urls``: its inbound views and the other ESPs'
views would accept unauthenticated posts on a site that never configured
them. And anymail's basic-auth views accept any post when no secret is set
(they only warn), so each view here refuses with 403, naming the variable,
until its secret is configured; with one, anymail checks the basic auth or
Mailgun's HMAC signature and answers a bad one with 400."""
from __future__ import annotations

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseForbidden
from django.urls import path
from django.views.decorators.csrf import csrf_exempt

from anymail.webhooks.amazon_ses import AmazonSESTrackingWebhookView
from anymail.webhooks.brevo import BrevoTrackingWebhookView
from anymail.webhooks.mailgun import MailgunTrackingWebhookView
from anymail.webhooks.postmark import PostmarkTrackingWebhookView
from anymail.webhooks.sendgrid import SendGridTrackingWebhookView
from martech.email_config import ESPS, Esp, webhook_secret_missing

VIEWS = {
    "amazonses": AmazonSESTrackingWebhookView,
    "sendgrid": SendGridTrackingWebhookView,
    "mailgun": MailgunTrackingWebhookView,
    "postmark": PostmarkTrackingWebhookView,
    "brevo": BrevoTrackingWebhookView,
}


def _secured(esp: Esp):
    view = VIEWS[esp.key].as_view()

    @csrf_exempt  # the ESP posts without a CSRF token; the secret authenticates it
    def secured(request: HttpRequest, *args, **kwargs) -> HttpResponse:
        # Read per request (not at import) so a changed setting applies, and
        # before anymail's view is built: a Mailgun view without a signing
        # key would fail with a 500, a basic-auth one would accept anything.
        missing = webhook_secret_missing(esp, getattr(settings, "ANYMAIL", {}))
        if missing:
            return HttpResponseForbidden(f"The {esp.name} tracking webhook is not configured: set {missing}.",
                                         content_type="text/plain")
        return view(request, *args, **kwargs)

    return secured


app_name = "esp"
urlpatterns = [path(esp.webhook, _secured(esp), name=f"{esp.key}_tracking") for esp in ESPS.values()]
