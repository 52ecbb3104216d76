"""A lean HTTP/1.1 client for load generators: one keep-alive connection, one request at a time,
on asyncio, with httptools' parser (llhttp, the parser of Node.js and uvicorn).

The clients of a bench share the machine's cores with the server they measure; every
millisecond of CPU a client spends is one the server does not get. aiohttp's client, which the
benches used before, spent 0.43–0.45 ms of CPU per report here (session cookies, header
multidicts, tracing hooks, a response object per request), this one 0.18–0.21 ms (0.16 on
uvloop): it does only what a phone does, write a request and read the status and the body.

    conn = Connection("127.0.0.1", 8000, {"Authorization": "Bearer …"})
    async with asyncio.timeout(5):
        status, body = await conn.request("POST", "/api/incidents", b'{…}', {"Idempotency-Key": k})
    conn.close()

A request that raises (a timeout, :class:`ConnectionFailed`) leaves the connection closed: the
next request opens a new one, as a phone would after a lost answer. So does an answer the
server marked ``Connection: close``.
"""
from __future__ import annotations

import asyncio

import httptools


class ConnectionFailed(Exception):
    """The connection could not be opened, or broke or was closed before the whole answer came;
    or the answer was not HTTP."""


class _Protocol(asyncio.Protocol):
    def __init__(self):
        self.transport = None
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future | None = None
        self.body: list[bytes] = []
        self.keep_alive = True

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(ConnectionFailed(f"not an HTTP answer: {e}"))
            self.transport.close()

    # httptools' callbacks (on_message_begin, on_header, … are optional and not needed)
    def on_body(self, body: bytes):
        self.body.append(body)

    def on_message_complete(self):
        self.keep_alive = self.parser.should_keep_alive()
        body, self.body = b"".join(self.body), []
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), body))

    def connection_lost(self, exc):
        self.keep_alive = False
        self._fail(ConnectionFailed(f"connection lost before the answer: {exc or 'closed by the server'}"))

    def _fail(self, exc: Exception):
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)


class Connection:
    """One keep-alive connection to ``host:port``; ``headers`` go with every request."""

    def __init__(self, host: str, port: int, headers: dict[str, str] | None = None):
        self.host, self.port = host, port
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": f"{host}:{port}", **(headers or {})}.items())
        self._proto: _Protocol | None = None
        self.opened = 0         # connections opened so far (1 for a client never cut off)

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        """Send one request, wait for the whole answer: ``(status, body)``. Raises
        :class:`ConnectionFailed`; a cancellation (a timeout around it) closes the connection."""
        proto = self._proto
        if proto is None or not proto.keep_alive or proto.transport.is_closing():
            proto = await self._open()
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items()) if headers else ""
        head = f"{method} {path} HTTP/1.1\r\n{self._fixed}{extra}Content-Length: {len(body)}\r\n\r\n"
        proto.waiter = waiter = asyncio.get_running_loop().create_future()
        proto.transport.write(head.encode("latin-1") + body)
        try:
            return await waiter
        except BaseException:
            self.close()
            raise
        finally:
            proto.waiter = None

    async def _open(self) -> _Protocol:
        self.close()
        try:
            _, proto = await asyncio.get_running_loop().create_connection(_Protocol, self.host, self.port)
        except OSError as e:
            raise ConnectionFailed(f"cannot connect to {self.host}:{self.port}: {e}") from e
        self._proto = proto
        self.opened += 1
        return proto

    def close(self) -> None:
        if self._proto is not None:
            if self._proto.transport is not None:
                self._proto.transport.close()
            self._proto = None
