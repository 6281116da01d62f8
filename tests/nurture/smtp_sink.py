"""A loopback SMTP sink for the nurture tests (the stdlib's socketserver, one
thread per connection): it records every message it takes (its
``X-Nurture-Key``, recipients and the moment its final "." arrived) and can
be told to misbehave at the protocol's point of no return:

- ``reply_delay``: seconds before each "250" answer to the final "." (slows
  a worker so a test can act during its sends);
- ``hold_at``: the number of the message (1-based) whose "." is recorded and
  then left unanswered until ``release`` is set; ``holding`` is set meanwhile
  (a test kills the worker right there: the message went out, the worker
  never heard it);
- ``refuse_rcpt``: addresses answered 550 at RCPT;
- ``drop_after_dot``: addresses whose "." is recorded and answered by closing
  the connection (the answer is lost)."""
from __future__ import annotations

import socketserver
import threading
import time
from email import message_from_bytes


class SmtpSink:
    def __init__(self, *, reply_delay: float = 0.0, hold_at: int | None = None):
        self.received: list[dict] = []
        self.reply_delay = reply_delay
        self.hold_at = hold_at
        self.holding = threading.Event()
        self.release = threading.Event()
        self.refuse_rcpt: set[str] = set()
        self.drop_after_dot: set[str] = set()
        self.lock = threading.Lock()
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                self.wfile.write(b"220 sink ESMTP\r\n")
                rcpts: list[str] = []
                while True:
                    line = self.rfile.readline()
                    if not line:
                        return
                    cmd = line.decode("ascii", "replace").strip()
                    verb = cmd.split(" ", 1)[0].upper()
                    if verb in ("EHLO", "HELO"):
                        self.wfile.write(b"250 sink\r\n")
                    elif verb == "MAIL":
                        rcpts = []
                        self.wfile.write(b"250 OK\r\n")
                    elif verb == "RCPT":
                        addr = cmd.split(":", 1)[1].strip().strip("<>").lower()
                        if addr in sink.refuse_rcpt:
                            self.wfile.write(b"550 no such user\r\n")
                        else:
                            rcpts.append(addr)
                            self.wfile.write(b"250 OK\r\n")
                    elif verb == "DATA":
                        self.wfile.write(b"354 go ahead\r\n")
                        chunks = []
                        while True:
                            data = self.rfile.readline()
                            if not data:
                                return  # the client died before the ".": nothing taken
                            if data == b".\r\n":
                                break
                            chunks.append(data[1:] if data.startswith(b"..") else data)
                        at = time.time()
                        msg = message_from_bytes(b"".join(chunks))
                        with sink.lock:
                            sink.received.append({"key": msg["X-Nurture-Key"], "to": rcpts, "at": at})
                            number = len(sink.received)
                        if any(r in sink.drop_after_dot for r in rcpts):
                            return
                        if sink.hold_at is not None and number == sink.hold_at:
                            sink.holding.set()
                            sink.release.wait(60)
                            return
                        if sink.reply_delay:
                            time.sleep(sink.reply_delay)
                        self.wfile.write(b"250 queued\r\n")
                    elif verb == "RSET" or verb == "NOOP":
                        self.wfile.write(b"250 OK\r\n")
                    elif verb == "QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:
                        self.wfile.write(b"502 unknown\r\n")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SmtpSink:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()

    def keys(self) -> list[str]:
        with self.lock:
            return [r["key"] for r in self.received]
