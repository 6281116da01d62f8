"""Bearer-token authentication for API clients (``Authorization: Bearer <token>``)."""
from __future__ import annotations

from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from martech.models import ApiClient


class ApiClientUser:
    """Stands in for request.user when an API client calls: authenticated,
    never staff, with no Django permissions (scopes decide)."""

    is_authenticated = True
    is_active = True
    is_staff = False
    is_superuser = False
    is_anonymous = False

    def __init__(self, client: ApiClient):
        self.client = client
        self.pk = None
        self.id = None

    def __str__(self) -> str:
        return f"api:{self.client.name}"

    def get_username(self) -> str:
        return str(self)

    def has_perm(self, perm, obj=None) -> bool:
        return False


class ApiClientTokenAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode().lower() != self.keyword.lower():
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Bearer <token>'.")
        token = header[1].decode(errors="replace")
        try:
            client = ApiClient.objects.get(token_hash=ApiClient.hash_token(token), is_active=True)
        except ApiClient.DoesNotExist:
            raise exceptions.AuthenticationFailed("Invalid or inactive API token.") from None
        now = timezone.now()
        # Touch last_used_at at most once a minute: no write per request.
        if client.last_used_at is None or (now - client.last_used_at).total_seconds() > 60:
            ApiClient.objects.filter(pk=client.pk).update(last_used_at=now)
        return ApiClientUser(client), client

    def authenticate_header(self, request):
        return self.keyword


class ApiClientTokenScheme(OpenApiAuthenticationExtension):
    target_class = "martech.api.auth.ApiClientTokenAuthentication"
    name = "ApiClientToken"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "Token printed by `manage.py create_api_client`."}
