"""/healthz: database, broker (real: ORM on SQLite, Redis when REDIS_URL is
set) and the qcluster heartbeat."""
import uuid
from datetime import timedelta
from unittest import mock

import pytest
from django.core.cache import caches
from django.utils import timezone
from django_q.brokers import get_broker
from django_q.signing import SignedPackage
from django_q.status import Stat, Status

pytestmark = pytest.mark.django_db


def _status(age_seconds: float = 0) -> Status:
    status = Status(pid=1234, cluster_id=str(uuid.uuid4()))
    status.timestamp = timezone.now() - timedelta(seconds=age_seconds)
    status.status = "Idle"
    return status


@pytest.fixture
def private_cache(settings):
    # The ORM broker keeps cluster stats in the default cache, a file cache
    # under var/ shared with a developer's runserver: use a private one here.
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "healthz"}}
    yield
    caches["default"].clear()


def test_healthy_with_a_real_heartbeat(client, settings, private_cache):
    # A stat saved through the configured broker exactly as a running cluster
    # saves it (Redis key or cache entry), read back by Stat.get_all.
    status = _status()
    broker = get_broker()
    broker.set_stat(Stat.get_key(status.cluster_id), SignedPackage.dumps(status, True), 30)
    try:
        response = client.get("/healthz")
    finally:
        if settings.Q_CLUSTER.get("redis"):
            broker.connection.delete(Stat.get_key(status.cluster_id))
    body = response.json()
    assert response.status_code == 200, body
    assert body["status"] == "ok"
    assert set(body["checks"]) == {"database", "broker", "cluster"}
    assert all(c["ok"] for c in body["checks"].values())
    assert body["checks"]["cluster"]["clusters"] >= 1
    assert body["checks"]["cluster"]["last_seen_seconds"] < 30
    assert response["Cache-Control"].startswith("max-age=0")


def test_broker_is_the_configured_one(client, settings):
    with mock.patch("django_q.status.Stat.get_all", return_value=[_status()]):
        body = client.get("/healthz").json()
    expected = "Redis" if settings.Q_CLUSTER.get("redis") else "ORM"
    assert body["checks"]["broker"]["broker"].startswith(expected)
    assert body["checks"]["broker"]["queued"] >= 0


def test_no_cluster_fails(client):
    with mock.patch("django_q.status.Stat.get_all", return_value=[]):
        response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert body["status"] == "fail"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert not body["checks"]["cluster"]["ok"]
    assert "qcluster" in body["checks"]["cluster"]["error"]


def test_stale_cluster_fails(client, settings):
    settings.MARTECH = {**settings.MARTECH, "HEALTHZ_CLUSTER_MAX_AGE": 10}
    with mock.patch("django_q.status.Stat.get_all", return_value=[_status(age_seconds=60)]):
        response = client.get("/healthz")
    cluster = response.json()["checks"]["cluster"]
    assert response.status_code == 503
    assert not cluster["ok"] and cluster["max_age_seconds"] == 10 and cluster["last_seen_seconds"] >= 60


def test_broker_down_fails(client):
    class DeadBroker:
        def ping(self):
            raise ConnectionError("connection refused")

    with (
        mock.patch("django_q.status.Stat.get_all", return_value=[_status()]),
        mock.patch("django_q.brokers.get_broker", return_value=DeadBroker()),
    ):
        response = client.get("/healthz")
    body = response.json()
    assert response.status_code == 503
    assert not body["checks"]["broker"]["ok"]
    assert "connection refused" in body["checks"]["broker"]["error"]
    assert body["checks"]["database"]["ok"]


def test_database_down_fails(client):
    from django.db import OperationalError

    down = mock.Mock(side_effect=OperationalError("server closed the connection"))
    with (
        mock.patch("django_q.status.Stat.get_all", return_value=[_status()]),
        mock.patch.dict("martech.views.CHECKS", {"database": down}),
    ):
        response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["checks"]["database"] == {
        "ok": False, "error": "OperationalError: server closed the connection", "ms": mock.ANY
    }


def test_only_get_and_head(client):
    assert client.post("/healthz").status_code == 405
