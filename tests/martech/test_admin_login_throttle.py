"""Admin logins are throttled by django-axes (docs/architecture.md, Data rules): after
AXES_FAILURE_LIMIT failures for a username from one address, even the right
password is refused until the cool-off."""
from __future__ import annotations

import pytest
from django.urls import reverse

pytestmark = pytest.mark.django_db

LOGIN = reverse("admin:login")
PASSWORD = "pw-Secret-123"  # tests.factories.UserFactory's


@pytest.fixture
def axes_on(settings):
    settings.AXES_ENABLED = True
    settings.AXES_FAILURE_LIMIT = 5
    from axes.handlers.proxy import AxesProxyHandler

    AxesProxyHandler.implementation = None  # rebuilt from the settings above
    yield
    AxesProxyHandler.implementation = None


def _login(client, username, password):
    return client.post(LOGIN, {"username": username, "password": password, "next": "/admin/"})


def test_right_password_logs_in(client, superuser, axes_on):
    response = _login(client, "root", PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/admin/"


def test_sixth_attempt_is_locked_out_even_with_the_right_password(client, superuser, axes_on):
    statuses = [_login(client, "root", "wrong").status_code for _ in range(5)]
    # The form again for the first four; the fifth failure reaches the limit
    # and axes answers it with the lockout page already.
    assert statuses == [200, 200, 200, 200, 429]
    locked = _login(client, "root", PASSWORD)
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    assert client.get(reverse("admin:index")).status_code == 302  # still sent to the login page


def test_lockout_is_per_username(client, superuser, marketing_ops, axes_on):
    for _ in range(5):
        _login(client, "root", "wrong")
    assert _login(client, "mops", PASSWORD).status_code == 302
