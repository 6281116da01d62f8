"""A small Twilio Messages API on loopback, for the TwilioSmsBackend tests.

POST /2010-04-01/Accounts/<sid>/Messages.json with basic auth and form
fields To, From, Body, answered the way Twilio answers: 201 with the message
resource, or an error body ``{"code", "message", "more_info", "status"}``
(20003 bad credentials, 21211 invalid To, 21604 missing Body). A request
repeating an ``I-Twilio-Idempotency-Token`` gets the first answer again and
creates nothing. ``script`` holds status codes to answer the next requests
with (429, 500) before normal service resumes."""
from __future__ import annotations

import base64
import http.server
import itertools
import json
import threading
from urllib.parse import parse_qs

_SIDS = itertools.count(1)


class TwilioEmulator:
    def __init__(self, *, account_sid: str, auth_token: str, invalid_numbers=()):
        self.account_sid, self.auth_token = account_sid, auth_token
        self.invalid_numbers = set(invalid_numbers)
        self.requests: list[dict] = []  # every request, as received
        self.messages: dict[str, dict] = {}  # created messages by sid
        self.by_token: dict[str, dict] = {}
        self.script: list[int] = []
        emulator = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode()).items()}
                emulator.requests.append({"path": self.path, "form": form, "auth": self.headers.get("Authorization", ""),
                                          "token": self.headers.get("I-Twilio-Idempotency-Token", "")})
                status, payload = emulator.answer(self.path, self.headers, form)
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def error(status: int, code: int, message: str) -> tuple[int, dict]:
        return status, {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
                        "status": status}

    def answer(self, path: str, headers, form: dict) -> tuple[int, dict]:
        expected = "Basic " + base64.b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        if headers.get("Authorization") != expected or path != f"/2010-04-01/Accounts/{self.account_sid}/Messages.json":
            return self.error(401, 20003, "Authenticate")
        if self.script:
            status = self.script.pop(0)
            if status == 429:
                return self.error(429, 20429, "Too Many Requests")
            return self.error(status, 20500, "Internal Server Error")
        token = headers.get("I-Twilio-Idempotency-Token", "")
        if token and token in self.by_token:
            return 201, self.by_token[token]
        if form.get("To") in self.invalid_numbers or not form.get("To", "").startswith("+"):
            return self.error(400, 21211, f"The 'To' number {form.get('To')} is not a valid phone number.")
        if not form.get("Body"):
            return self.error(400, 21604, "A 'Body' or 'MediaUrl' is required.")
        sid = f"SM{next(_SIDS):032x}"
        resource = {"sid": sid, "account_sid": self.account_sid, "to": form["To"], "from": form.get("From"),
                    "body": form["Body"], "status": "queued", "error_code": None}
        self.messages[sid] = resource
        if token:
            self.by_token[token] = resource
        return 201, resource
