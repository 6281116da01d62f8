"""Rate limits of the capture endpoints (rates in REST_FRAMEWORK's
DEFAULT_THROTTLE_RATES; counters in the shared cache, so every process sees
them)."""
from __future__ import annotations

from rest_framework.settings import api_settings
from rest_framework.throttling import SimpleRateThrottle

from martech.models import ApiClient


class _SettingsRateMixin:
    def get_rate(self):
        # DRF binds THROTTLE_RATES when the module is imported; reading the
        # setting here lets a deployment (and a test) change it at run time.
        return api_settings.DEFAULT_THROTTLE_RATES.get(self.scope)


class FormCaptureThrottle(_SettingsRateMixin, SimpleRateThrottle):
    """Per client IP (behind DJANGO_PROXY_COUNT proxies, see NUM_PROXIES):
    the public form endpoint takes no credentials, so the IP is the key."""

    scope = "form_capture"

    def get_cache_key(self, request, view):
        return self.cache_format % {"scope": self.scope, "ident": self.get_ident(request)}


class TrackerThrottle(FormCaptureThrottle):
    """Per client IP, for the website tracker's public endpoint. Counted per
    request (a batch), not per event; its own rate, since every page view of
    a visitor calls it while a form is posted once."""

    scope = "tracker"


class ClientRateThrottle(_SettingsRateMixin, SimpleRateThrottle):
    """Per API client (or per staff user), not per IP: one sender's backlog
    replay must not slow another that shares its egress address."""

    scope = "user"

    def get_cache_key(self, request, view):
        if isinstance(request.auth, ApiClient):
            ident = f"client-{request.auth.pk}"
        elif request.user and request.user.is_authenticated:
            ident = f"user-{request.user.pk}"
        else:
            ident = f"ip-{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}


# The name the capture view was first written against.
ApiClientRateThrottle = ClientRateThrottle
