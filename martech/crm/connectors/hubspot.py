"""HubSpot through hubspot-api-client: contacts <-> leads, owners.

The base URL and the private-app token come from settings (environment);
``HubSpot(access_token=..., host=...)`` is the only way the host sticks
(STACK.md).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterator

from django.conf import settings
from hubspot import HubSpot
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInputUpsert,
    Filter,
    FilterGroup,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInputUpsert,
)
from urllib3.exceptions import HTTPError as Urllib3Error

from .base import AuthError, CallStats, PermanentError, Pulled, PushRecord, PushResult, TransientError, with_retries

PAGE = 100


def _translate(exc: Exception) -> Exception:
    status = getattr(exc, "status", None)
    # Each hubspot.crm.* package has its own ApiException (and subclasses such
    # as ServiceException), so they are recognised by name along the MRO.
    if status is not None and any(c.__name__ == "ApiException" for c in type(exc).__mro__):
        if status == 401:
            return AuthError(f"HubSpot refused the token (401): {exc.body}")
        if status == 429:
            headers = getattr(exc, "headers", None) or {}
            raw = headers.get("Retry-After")
            try:
                retry_after = float(raw) if raw is not None else None
            except ValueError:
                retry_after = None
            return TransientError(f"HubSpot 429: {exc.body}", retry_after=retry_after)
        if status >= 500:
            return TransientError(f"HubSpot {status}: {exc.body}")
        return PermanentError(f"HubSpot {status}: {exc.body}")
    if isinstance(exc, (Urllib3Error, TimeoutError, ConnectionError)):
        return TransientError(f"HubSpot unreachable: {exc}")
    return exc


class HubSpotConnector:
    provider = "hubspot"

    def __init__(self, connection, *, sleep=None):
        conf = settings.MARTECH_CRM
        self.connection = connection
        self.client = HubSpot(access_token=conf["HUBSPOT_TOKEN"], host=conf["HUBSPOT_URL"])
        self.timeout = conf["TIMEOUT"]
        self.stats = CallStats()
        # Looked up at call time so tests can stub time.sleep.
        self.sleep = sleep or (lambda seconds: time.sleep(seconds))

    def _call(self, fn, *args, **kwargs):
        def once():
            try:
                return fn(*args, _request_timeout=self.timeout, **kwargs)
            except Exception as exc:
                translated = _translate(exc)
                if translated is exc:
                    raise
                raise translated from exc

        return with_retries(once, self.stats, sleep=self.sleep)

    def push_batch(self, obj: str, records: list[PushRecord]) -> list[PushResult]:
        if obj != "contact":
            raise NotImplementedError(f"HubSpot push of {obj} is not implemented")
        results: list[PushResult] = []
        for start in range(0, len(records), PAGE):
            chunk = records[start:start + PAGE]
            body = BatchInputSimplePublicObjectBatchInputUpsert(inputs=[
                SimplePublicObjectBatchInputUpsert(id=r.key, id_property="email", properties=r.properties)
                for r in chunk
            ])
            response = self._call(self.client.crm.contacts.batch_api.upsert,
                                  batch_input_simple_public_object_batch_input_upsert=body)
            by_key = {r.key.lower(): r for r in chunk}
            done: dict[str, str] = {}
            for item in response.results or []:
                done[(item.properties.get("email") or "").lower()] = item.id
            failed: dict[str, str] = {}
            for err in getattr(response, "errors", None) or []:
                for key in (err.context or {}).get("ids", []):
                    failed[key.lower()] = err.message
            for key, record in by_key.items():
                if key in done:
                    results.append(PushResult(record.local_id, remote_id=done[key]))
                else:
                    # Nothing silently dropped: a record neither done nor named gets an error too.
                    results.append(PushResult(record.local_id, error=failed.get(key, "not in HubSpot's answer")))
        return results

    def pull_since(self, obj: str, cursor: str, properties: list[str]) -> Iterator[Pulled]:
        if obj != "contact":
            raise NotImplementedError(f"HubSpot pull of {obj} is not implemented")
        after = None
        while True:
            filters = [Filter(property_name="lastmodifieddate", operator="GT", value=cursor)] if cursor else []
            request = PublicObjectSearchRequest(
                filter_groups=[FilterGroup(filters=filters)] if filters else [],
                sorts=["lastmodifieddate"], properties=sorted({*properties, "email", "lastmodifieddate"}),
                limit=PAGE, after=after or "0",
            )
            page = self._call(self.client.crm.contacts.search_api.do_search, public_object_search_request=request)
            for item in page.results:
                yield Pulled(str(item.id), dict(item.properties or {}),
                             item.properties.get("lastmodifieddate") or item.updated_at.isoformat())
            nxt = page.paging.next.after if page.paging and page.paging.next else None
            if not nxt:
                return
            after = nxt

    def fetch_one(self, obj: str, remote_id: str, properties: list[str]) -> Pulled | None:
        try:
            item = self._call(self.client.crm.contacts.basic_api.get_by_id, contact_id=remote_id,
                              properties=properties)
        except PermanentError as exc:
            if "404" in str(exc):
                return None
            raise
        return Pulled(str(item.id), dict(item.properties or {}), item.properties.get("lastmodifieddate", ""))

    def owners(self) -> list[dict[str, str]]:
        page = self._call(self.client.crm.owners.owners_api.get_page, limit=500)
        return [{"remote_id": str(o.id), "email": o.email or "", "first_name": o.first_name or "",
                 "last_name": o.last_name or "", "is_active": not o.archived} for o in page.results]

    def verify_webhook(self, *, method: str, uri: str, body: bytes, headers: dict[str, str]) -> bool:
        return verify_v3_signature(secret=settings.MARTECH_CRM["HUBSPOT_APP_SECRET"], method=method, uri=uri,
                                   body=body, headers=headers)


def sign_v3(*, secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    message = f"{method}{uri}".encode() + body + timestamp.encode()
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def verify_v3_signature(*, secret: str, method: str, uri: str, body: bytes, headers: dict[str, str],
                        now: float | None = None, max_age: int = 300) -> bool:
    """HubSpot v3: base64(HMAC-SHA256(secret, method + uri + body + timestamp)),
    timestamp in milliseconds no older than five minutes."""
    signature = headers.get("X-HubSpot-Signature-v3") or ""
    timestamp = headers.get("X-HubSpot-Request-Timestamp") or ""
    if not secret or not signature or not timestamp.isdigit():
        return False
    now_ms = (now if now is not None else time.time()) * 1000
    if abs(now_ms - int(timestamp)) > max_age * 1000:
        return False
    expected = sign_v3(secret=secret, method=method, uri=uri, body=body, timestamp=timestamp)
    return hmac.compare_digest(expected, signature)
