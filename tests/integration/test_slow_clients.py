"""Slow and greedy clients against the real uvicorn server `bulkjobs serve` runs, over real
sockets on 127.0.0.1: stalled headers and bodies are cut off at their deadlines, huge
headers are refused, and one address cannot hold more than its share of connections.
Bounded: at most a few dozen connections, each read under a timeout."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import uvicorn

from src.app import create_app
from src.config import Settings
from src.server import server_options

DEADLINE_S = 0.5
#: Far past every deadline above: a connection still open then was not cut off.
PATIENCE_S = 8.0


@dataclass
class Server:
    port: int

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[Server]:
    settings = settings.model_copy(
        update={
            "bulkjobs_header_timeout_s": DEADLINE_S,
            "bulkjobs_body_timeout_s": DEADLINE_S,
            "bulkjobs_max_connections_per_client": 30,
        }
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        create_app(settings), log_config=None, lifespan="on", **server_options(settings)
    )
    running = uvicorn.Server(config)
    task = asyncio.create_task(running.serve(sockets=[sock]))
    for _ in range(500):
        if running.started:
            break
        await asyncio.sleep(0.01)
    assert running.started
    try:
        yield Server(sock.getsockname()[1])
    finally:
        running.should_exit = True
        await asyncio.wait_for(task, 30)
        sock.close()


async def answer(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (bounded in time)."""
    return await asyncio.wait_for(reader.read(), PATIENCE_S)


async def healthy(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert (await answer(reader)).startswith(b"HTTP/1.1 200")
    writer.close()
    await writer.wait_closed()


def open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_stalled_headers_and_bodies_are_cut_off(server: Server) -> None:
    await healthy(server)
    before = open_descriptors()
    stalls = [
        b"GET /healthz HTTP/1.1\r\nHost: t\r\n",  # headers never finished
        b"POST /bulk-jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{",  # a body that never arrives
        b"",  # connected, nothing sent
    ]
    clients = [await server.connect() for _ in range(8) for _ in stalls]
    for (_, writer), stall in zip(clients, stalls * 8, strict=True):
        writer.write(stall)
    answers = await asyncio.gather(*(answer(reader) for reader, _ in clients))
    assert all(text.startswith(b"HTTP/1.1 408") for text in answers), answers[:3]
    assert b"BULKJOBS_HEADER_TIMEOUT_S" in answers[0]
    assert b"BULKJOBS_BODY_TIMEOUT_S" in answers[1]
    for _, writer in clients:
        writer.close()
        await writer.wait_closed()
    await healthy(server)
    assert open_descriptors() <= before


async def test_trickling_does_not_extend_the_deadline(server: Server) -> None:
    reader, writer = await server.connect()
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 100

    async def trickle() -> None:
        for byte in request:  # one byte every 20 ms: 2 s in all, past the deadline
            writer.write(bytes([byte]))
            await asyncio.sleep(0.02)

    sender = asyncio.create_task(trickle())
    text = await answer(reader)
    sender.cancel()
    assert text.startswith(b"HTTP/1.1 408")
    writer.close()


async def test_a_refused_client_still_sending_reads_its_answer(server: Server) -> None:
    # Headers far past the cap, in one write: the server answers 431 while most of them are
    # still arriving. Closing the socket outright with input unread sends a reset, which
    # destroys the unread answer on the client's side; the lingering close keeps it.
    reader, writer = await server.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Pad: " + b"a" * 4_000_000)
    assert (await answer(reader)).startswith(b"HTTP/1.1 431")
    writer.close()


async def test_huge_headers_are_431(server: Server) -> None:
    reader, writer = await server.connect()
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + b"X-Pad: " + b"a" * 70_000 + b"\r\n")
    assert (await answer(reader)).startswith(b"HTTP/1.1 431")
    writer.close()


async def test_one_address_holds_at_most_its_share(server: Server) -> None:
    held = [await server.connect() for _ in range(30)]
    reader, writer = await server.connect()
    assert (await answer(reader)).startswith(b"HTTP/1.1 503")
    writer.close()
    for _, each in held:
        each.close()
        await each.wait_closed()
    await asyncio.sleep(0.1)  # the server notices the closed connections
    await healthy(server)


async def response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One response on a kept-alive connection: its status line and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), PATIENCE_S)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.lower().split(b"\r\n")
        if line.startswith(b"content-length:")
    )
    body = await asyncio.wait_for(reader.readexactly(length), PATIENCE_S)
    return head.split(b"\r\n", 1)[0], body


async def test_kept_alive_requests_each_get_a_fresh_deadline(server: Server) -> None:
    reader, writer = await server.connect()
    for _ in range(3):  # 3 x 0.3 s on one connection: longer than one deadline in all
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _ = await response(reader)
        assert status == b"HTTP/1.1 200 OK"
        await asyncio.sleep(DEADLINE_S * 0.6)
    writer.close()
    await writer.wait_closed()
