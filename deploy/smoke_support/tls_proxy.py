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
        try:
            head = await client_r.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError, ssl.SSLError):
            return
        peer = client_w.get_extra_info("peername") or ("unknown", 0)
        up_r, up_w = await asyncio.open_connection(*upstream)
        up_w.write(rewrite_head(head[:-4], peer[0]))
        await up_w.drain()
        # The request body (if any) upstream, the response back, until the upstream closes.
        to_upstream = asyncio.ensure_future(_pipe(client_r, up_w))
        await _pipe(up_r, client_w)
        to_upstream.cancel()
        up_w.close()
    except OSError:
        pass
    finally:
        client_w.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", required=True, help="host:port to serve TLS on")
    parser.add_argument("--upstream", required=True, help="host:port of gunicorn")
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    args = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(args.cert, args.key)
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
