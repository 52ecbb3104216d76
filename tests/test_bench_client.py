"""bench/keepalive.py, the HTTP client of bench/incidents.py: the bench's loss and duplicate
figures rest on it reading every answer whole, reusing a connection only while the server
keeps it, and leaving no half-read connection behind a timeout or a cut."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from keepalive import Connection, ConnectionFailed  # noqa: E402


async def _serve(reader, writer, seen):
    """Echo each request's body; the body says what else to do: ``close`` (answer with
    Connection: close), ``slow`` (answer after 2 s), ``drop`` (close without an answer),
    ``chunked`` (a chunked answer)."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            body = await reader.readexactly(int(headers.get("content-length", 0)))
            seen.append((lines[0], headers, body))
            if body == b"drop":
                return
            if body == b"slow":
                await asyncio.sleep(2)
            out = b"echo:" + body
            if body == b"chunked":
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nech\r\n4\r\no:ch\r\n0\r\n\r\n")
            else:
                writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n%s\r\n%s"
                             % (len(out), b"Connection: close\r\n" if body == b"close" else b"", out))
            await writer.drain()
            if body == b"close":
                return
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
        return
    finally:
        writer.close()


def _run(scenario):
    async def main():
        seen = []
        server = await asyncio.start_server(lambda r, w: _serve(r, w, seen), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await scenario(port, seen)
        finally:
            server.close()
    return asyncio.run(main())


def test_answers_come_whole_over_one_kept_connection_with_the_headers_sent():
    async def scenario(port, seen):
        conn = Connection("127.0.0.1", port, {"Authorization": "Bearer t"})
        answers = [await conn.request("POST", "/api/x", b"a" * n, {"Idempotency-Key": f"k{n}"})
                   for n in (1, 70_000, 3)]
        answers.append(await conn.request("GET", "/x", b"chunked"))
        conn.close()
        return answers, conn.opened, seen

    answers, opened, seen = _run(scenario)
    assert answers[:3] == [(201, b"echo:" + b"a" * n) for n in (1, 70_000, 3)]
    assert answers[3] == (200, b"echo:ch")
    assert opened == 1
    assert seen[0][0] == "POST /api/x HTTP/1.1"
    assert seen[0][1]["authorization"] == "Bearer t" and seen[0][1]["idempotency-key"] == "k1"
    assert seen[0][1]["host"] == f"127.0.0.1:{seen[0][1]['host'].split(':')[1]}"


def test_connection_close_timeout_and_a_cut_each_leave_the_next_request_a_new_connection():
    async def scenario(port, seen):
        conn = Connection("127.0.0.1", port)
        log = [await conn.request("POST", "/", b"close"), await conn.request("POST", "/", b"b"), conn.opened]
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await conn.request("POST", "/", b"slow")
        log += [await conn.request("POST", "/", b"c"), conn.opened]
        with pytest.raises(ConnectionFailed, match="before the answer"):
            await conn.request("POST", "/", b"drop")
        log += [await conn.request("POST", "/", b"d"), conn.opened]
        conn.close()
        return log

    assert _run(scenario) == [(201, b"echo:close"), (201, b"echo:b"), 2, (201, b"echo:c"), 3, (201, b"echo:d"), 4]


def test_a_port_nobody_listens_on_is_a_connection_failure_naming_it():
    async def scenario(port, seen):
        probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        free = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        with pytest.raises(ConnectionFailed, match=f"127.0.0.1:{free}"):
            await Connection("127.0.0.1", free).request("GET", "/")

    _run(scenario)


def test_an_answer_that_is_not_http_fails_the_request():
    async def scenario(port, seen):
        async def garbage(reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        try:
            with pytest.raises(ConnectionFailed, match="not an HTTP answer"):
                await Connection("127.0.0.1", server.sockets[0].getsockname()[1]).request("GET", "/")
        finally:
            server.close()

    _run(scenario)
