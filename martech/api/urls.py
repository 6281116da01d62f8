from django.middleware.csrf import CsrfViewMiddleware
from django.urls import get_resolver, include, path
from django.views.decorators.csrf import csrf_exempt

_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


@csrf_exempt  # the view it hands over to decides (DRF views check CSRF for session auth themselves)
def events_by_method(request):
    """``/api/v1/events`` is two views: POST captures events (capture_urls),
    GET lists them (rest_urls). Django resolves a path before looking at the
    method, so this picks the view by method and hands the request over."""
    urlconf = "martech.api.rest_urls" if request.method in _SAFE_METHODS else "martech.api.capture_urls"
    match = get_resolver(urlconf).resolve("/events")
    if not getattr(match.func, "csrf_exempt", False):
        refused = CsrfViewMiddleware(lambda r: None).process_view(request, match.func, match.args, match.kwargs)
        if refused is not None:
            return refused
    return match.func(request, *match.args, **match.kwargs)


urlpatterns = [
    path("events", events_by_method),
    path("scoring/", include("martech.scoring.api.urls")),
    path("", include("martech.api.capture_urls")),
    path("", include("martech.api.rest_urls")),
    path("routing/", include("routing.api.urls")),
    path("", include("attribution.api.urls")),
    path("", include("martech.crm.api.urls")),
    path("nurture/", include("nurture.api.urls")),
    path("privacy/", include("martech.privacy.api.urls")),
]
