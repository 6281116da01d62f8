"""A small TLS-terminating reverse proxy for the deploy smoke test: what an
operator's nginx, load balancer or Caddy does in front of gunicorn.

    python tls_proxy.py --listen 127.0.0.1:8443 --upstream 127.0.0.1:8000 --cert c.pem --key k.pem

It serves TLS with the given certificate, and forwards each request to the
upstream over plain HTTP with ``X-Forwarded-Proto: https`` and
``X-Forwarded-For: <client address>`` (any such headers the client sent are
dropped, as a proxy must), one request per connection (``Connection:
close``, as gunicorn's sync workers answer anyway). Standard library only.
"""
from __future__ import annotations

import argparse
import asyncio
import signal
import ssl
import sys

MAX_HEAD = 64 * 1024
DROPPED = {b"x-forwarded-proto", b"x-forwarded-for", b"x-forwarded-host", b"forwarded", b"connection",
           b"keep-alive", b"proxy-connection"}


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
        pass
    finally:
        try:
            if writer.can_write_eof():
                writer.write_eof()
        except (OSError, RuntimeError):
            pass


def rewrite_head(head: bytes, client_ip: str) -> bytes:
    """The request line and headers, minus hop-by-hop and client-supplied
    forwarding headers, plus the proxy's own."""
    lines = head.split(b"\r\n")
    kept = [lines[0]] + [h for h in lines[1:] if h and h.split(b":", 1)[0].strip().lower() not in DROPPED]
    kept += [b"X-Forwarded-Proto: https", b"X-Forwarded-For: " + client_ip.encode(), b"Connection: close"]
    return b"\r\n".join(kept) + b"\r\n\r\n"


async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter, upstream: tuple[str, int]) -> None:
    try:
        peer = client_w.get_extra_info("peername") or ("unknown", 0)
        try:
            head = await client_r.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if exc.partial:  # a browser's unused preconnection closes with nothing sent: not worth a line
                log(f"{peer[0]}:{peer[1]} closed mid-request ({len(exc.partial)} bytes)")
            return
        except (asyncio.LimitOverrunError, ConnectionError, ssl.SSLError) as exc:
            log(f"{peer[0]}:{peer[1]} no request read: {exc!r}")
            return
        try:
            up_r, up_w = await asyncio.open_connection(*upstream)
        except OSError as exc:
            log(f"upstream {upstream[0]}:{upstream[1]} refused {head.split(b' ', 2)[:2]}: {exc!r}")
            client_w.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            return
        up_w.write(rewrite_head(head[:-4], peer[0]))
        await up_w.drain()
        # The request body (if any) upstream, the response back, until the upstream closes.
        to_upstream = asyncio.ensure_future(_pipe(client_r, up_w))
        await _pipe(up_r, client_w)
        to_upstream.cancel()
        up_w.close()
    except OSError as exc:
        log(f"connection error: {exc!r}")
    finally:
        client_w.close()


def log(text: str) -> None:
    print(f"tls_proxy: {text}", file=sys.stderr, flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port to serve TLS on")
    parser.add_argument("--upstream", required=True, help="host:port of gunicorn")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
    # No session tickets: every connection makes a full handshake, so no
    # client ever offers resumed 0-RTT early data, which this proxy does not take.
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    upstream = _address(args.upstream)
    host, port = _address(args.listen)
    server = await asyncio.start_server(lambda r, w: handle(r, w, upstream), host, port, ssl=context,
                                        limit=MAX_HEAD)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"tls_proxy: https://{host}:{port} -> http://{upstream[0]}:{upstream[1]}", flush=True)
    async with server:
        await stop.wait()


if __name__ == "__main__":
    asyncio.run(main())
