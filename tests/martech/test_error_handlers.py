import pytest
from django.test import Client, RequestFactory


@pytest.mark.django_db
def test_unknown_api_path_is_json_404(settings):
    settings.DEBUG = False
    response = Client().get("/api/v1/no-such-thing")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.django_db
def test_unhandled_api_error_is_json_500():
    from martech.api import errors

    response = errors.server_error(RequestFactory().get("/api/v1/leads"))
    assert response.status_code == 500
    assert b'"code": "server_error"' in response.content
    html = errors.server_error(RequestFactory().get("/admin/"))
    assert html.status_code == 500 and b"<h1>" in html.content
