"""Shared knobs and serving for the CRM emulators (tests, bench, scripts/run).

An emulator is a WSGI app keeping state in memory. Knobs:
``latency`` (seconds per request), ``burst_429`` (the next N requests answer
429 in the provider's shape: HubSpot's without ``Retry-After``, as HubSpot
documents; Salesforce's with ``Retry-After: retry_after``), ``error_rate``
(share of requests answering 503), seeded so a test run is repeatable.
``limit_refusal`` (per provider) answers the limits the provider documents
(HubSpot's rolling window and daily limit, Salesforce's org allowance) and
``decorate`` adds the limit headers to every answer. ``calls`` counts
requests by ``(method, path)``, ``statuses`` answers by HTTP status.
"""
from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response


class EmulatorBase:
    def __init__(self, *, latency: float = 0.0, error_rate: float = 0.0, seed: int = 7):
        self.latency = latency
        self.error_rate = error_rate
        self.burst_429 = 0
        self.retry_after: int | None = 1  # None: 429s carry no Retry-After
        self.calls: Counter = Counter()
        self.statuses: Counter = Counter()
        self.lock = threading.Lock()
        self._random = random.Random(seed)

    def write_calls(self) -> int:
        return sum(n for (method, path), n in self.calls.items() if method != "GET" and not path.endswith("/search"))

    def __call__(self, environ, start_response):
        request = Request(environ)
        with self.lock:
            self.calls[(request.method, request.path)] += 1
            throttle = self.burst_429 > 0
            if throttle:
                self.burst_429 -= 1
            fail = not throttle and self.error_rate and self._random.random() < self.error_rate
            refused = None if throttle or fail else self.limit_refusal(request)
        if self.latency:
            time.sleep(self.latency)
        if throttle:
            response = self.rate_limited()
            if self.retry_after is not None:
                response.headers["Retry-After"] = str(self.retry_after)
        elif fail:
            response = self.unavailable()
        elif refused is not None:
            response = refused
        else:
            try:
                with self.lock:
                    response = self.dispatch(request)
            except Exception as exc:  # an emulator bug must show as a 500, not kill the thread
                response = self.json({"message": f"emulator error: {exc!r}"}, status=500)
        with self.lock:
            self.decorate(request, response)
            self.statuses[response.status_code] += 1
        return response(environ, start_response)

    def limit_refusal(self, request: Request) -> Response | None:
        """The provider's limit answer for this request, or None (it counts
        against the limits then). Called under the lock."""
        return None

    def decorate(self, request: Request, response: Response) -> None:
        """Add the provider's limit headers to an answer. Called under the lock."""

    def dispatch(self, request: Request) -> Response:
        raise NotImplementedError

    # The error bodies of the 429 and 5xx knobs, in the provider's own shape.
    def rate_limited(self) -> Response:
        return self.json({"status": "error", "message": "You have reached your secondly limit.",
                          "category": "RATE_LIMITS", "correlationId": "emu", "errors": [], "context": {},
                          "links": {}}, status=429)

    def unavailable(self) -> Response:
        return self.json({"status": "error", "message": "Service unavailable (emulated)",
                          "category": "SERVER_ERROR", "correlationId": "emu", "errors": [], "context": {},
                          "links": {}}, status=503)

    @staticmethod
    def json(data, status: int = 200) -> Response:
        return Response(json.dumps(data), status=status, content_type="application/json")


class Served:
    """A running emulator on a loopback port (0 = a free one)."""

    def __init__(self, app: EmulatorBase, *, port: int = 0, ssl_context=None):
        self.app = app
        self.server: BaseWSGIServer = make_server("127.0.0.1", port, app, threaded=True, ssl_context=ssl_context)
        self.port = self.server.server_port
        scheme = "https" if ssl_context else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "Served":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
