"""The HTTP service under load from a second process, at 16 and 64 connections.

Starts `bulkjobs serve` in a subprocess on a free loopback port with its own temporary store,
then drives it from this process with a small keep-alive HTTP/1.1 client on asyncio streams
(wrk is used instead when it is installed). Prints req/s and p50/p99 for
`GET /bulk-jobs/{id}/status` and `POST /bulk-jobs`.

    python bench/api.py [--seconds S]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BODY = b'{"job_type": "sample", "job_data": {"items": 1, "delay_ms": 0}}'


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(root: Path, port: int) -> tuple[subprocess.Popen[bytes], str]:
    env = {
        **os.environ,
        "BULKJOBS_DB_PATH": str(root / "bench.db"),
        "BULK_EXPORT_PATH": str(root / "exports"),
        "BULK_RATE_LIMIT_MAX_JOBS": "100000000",
        "BULKJOBS_PORT": str(port),
    }
    token = subprocess.run(
        [sys.executable, "-m", "src.cli", "token", "create", "--user", "bench"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "--factory",
            "src.app:create_app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            "--no-access-log",
        ],
        env=env,
    )
    return server, token


def wait_until_up(port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("server did not start")


def request_bytes(method: str, path: str, token: str, body: bytes = b"") -> bytes:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def connection(port: int, raw: bytes, until: float, latencies: list[float]) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    errors = 0
    while time.perf_counter() < until:
        started = time.perf_counter()
        writer.write(raw)
        status = await read_response(reader)
        latencies.append(time.perf_counter() - started)
        errors += status >= 400
    writer.close()
    return errors


async def load(
    port: int, raw: bytes, connections: int, seconds: float
) -> tuple[float, float, float, int]:
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    errors = await asyncio.gather(
        *(connection(port, raw, until, latencies) for _ in range(connections))
    )
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    return len(latencies) / seconds, statistics.median(latencies), p99, sum(errors)


async def create_one(port: int, token: str) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes("POST", "/bulk-jobs", token, BODY))
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(
        next(
            line.split(b":", 1)[1]
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
    )
    body = await reader.readexactly(length)
    writer.close()
    if b"job_id" not in body:
        raise SystemExit(f"create failed: {body.decode()}")
    return body.split(b'"job_id":"', 1)[1].split(b'"', 1)[0].decode()


def wrk_load(
    port: int,
    path: str,
    token: str,
    connections: int,
    seconds: float,
    body: bytes | None,
    tmp: Path,
) -> tuple[float, float, float, int]:
    """Drive the server with wrk (one thread, so the server keeps most of the CPU)."""
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{int(seconds)}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {token}",
        f"http://127.0.0.1:{port}{path}",
    ]
    if body is not None:
        script = tmp / "post.lua"
        script.write_text(
            'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
            f"wrk.body = [[{body.decode()}]]\n"
        )
        command[1:1] = ["-s", str(script)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return _parse_wrk(output)


def _parse_wrk(output: str) -> tuple[float, float, float, int]:
    def millis(text: str) -> float:
        for unit, scale in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
            if text.endswith(unit):
                return float(text[: -len(unit)]) * scale
        return float(text)

    figures: dict[str, float] = {"errors": 0}
    for line in output.splitlines():
        parts = line.split()
        if line.startswith("Requests/sec:"):
            figures["rps"] = float(parts[1])
        elif len(parts) == 2 and parts[0] in ("50%", "99%"):
            figures[parts[0]] = millis(parts[1]) / 1000
        elif "Non-2xx" in line:
            figures["errors"] = int(parts[-1])
    return figures["rps"], figures["50%"], figures["99%"], int(figures["errors"])


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--python-client", action="store_true", help="do not use wrk")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        server, token = start_server(Path(tmp), port)
        try:
            wait_until_up(port)
            job_id = await create_one(port, token)
            status_path = f"/bulk-jobs/{job_id}/status"
            read = request_bytes("GET", status_path, token)
            write = request_bytes("POST", "/bulk-jobs", token, BODY)
            use_wrk = shutil.which("wrk") is not None and not args.python_client
            print(f"load from {'wrk' if use_wrk else 'the asyncio client'} in a second process")
            cases = (
                ("GET status", read, status_path, None),
                ("POST create", write, "/bulk-jobs", BODY),
            )
            for name, raw, path, body in cases:
                for connections in (16, 64):
                    if use_wrk:
                        rps, p50, p99, errors = wrk_load(
                            port, path, token, connections, args.seconds, body, Path(tmp)
                        )
                    else:
                        rps, p50, p99, errors = await load(port, raw, connections, args.seconds)
                    print(
                        f"{name:12} c={connections:3}: {rps:8,.0f} req/s  p50 {p50 * 1000:6.1f} ms"
                        f"  p99 {p99 * 1000:6.1f} ms  errors {errors}"
                    )
        finally:
            server.terminate()
            server.wait(timeout=10)
    print(
        "targets at 16 connections: reads >= 1,500 req/s p99 <= 25 ms;"
        " creates >= 1,000 req/s p99 <= 50 ms"
    )


if __name__ == "__main__":
    asyncio.run(main())
