"""Shared knobs and serving for the CRM emulators (tests, bench, scripts/run).

An emulator is a WSGI app keeping state in memory. Knobs:
``latency`` (seconds per request), ``burst_429`` (the next N requests answer
429 with ``Retry-After``), ``error_rate`` (share of requests answering 503),
seeded so a test run is repeatable. ``calls`` counts requests by
``(method, path)``.
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
        self.retry_after = 1
        self.calls: Counter = Counter()
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
        if self.latency:
            time.sleep(self.latency)
        if throttle:
            response = self.rate_limited()
            response.headers["Retry-After"] = str(self.retry_after)
        elif fail:
            response = self.unavailable()
        else:
            try:
                with self.lock:
                    response = self.dispatch(request)
            except Exception as exc:  # an emulator bug must show as a 500, not kill the thread
                response = self.json({"message": f"emulator error: {exc!r}"}, status=500)
        return response(environ, start_response)

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
