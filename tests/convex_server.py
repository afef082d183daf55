"""Start and stop the test-only Convex HTTP server (tests/convex-server/server.ts)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
TSX = ROOT / "node_modules" / ".bin" / "tsx"
ADMIN_KEY = "test-admin-key"
LISTENING = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


@dataclass
class ConvexTestServer:
    url: str
    admin_key: str
    process: subprocess.Popen[bytes]

    def reset(self) -> None:
        httpx.post(f"{self.url}/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_convex_server(log_path: Path) -> ConvexTestServer:
    """Start the server and wait for its `listening` line; a clear error if it cannot run."""
    if not TSX.exists():
        raise RuntimeError(
            "node_modules is missing: run `make test` (or `npm ci`) so that the Convex"
            " test server can start"
        )
    with log_path.open("wb") as log:  # the child keeps its own copy of the descriptor
        process = subprocess.Popen(
            [
                str(TSX),
                "tests/convex-server/server.ts",
                "--port",
                "0",  # a free port, named in the `listening` line
                "--admin-key",
                ADMIN_KEY,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "NODE_NO_WARNINGS": "1"},
        )
    deadline = time.monotonic() + 60
    while (found := LISTENING.search(log_path.read_text())) is None:
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the Convex test server did not start:\n{log_path.read_text()}")
        time.sleep(0.1)
    return ConvexTestServer(found.group(1), ADMIN_KEY, process)
