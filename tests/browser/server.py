"""`bulkjobs serve` in a subprocess on a free port with its own SQLite file, as `make run`."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

BULKJOBS = Path(sys.executable).with_name("bulkjobs")


@dataclass
class Server:
    base: str
    #: The URL `bulkjobs serve` printed for the first admin: it signs in by itself.
    login_url: str
    admin_token: str
    env: dict[str, str]
    process: subprocess.Popen[bytes]

    def token(self, user: str) -> str:
        """A fresh token for `user`, made with the CLI as an operator would."""
        command = [str(BULKJOBS), "token", "create", "--user", user]
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, check=True)
        return result.stdout.strip().splitlines()[-1]

    def api(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, headers={"Authorization": f"Bearer {token}"})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def serve(data: Path, admin_token: str | None = None, **env: str) -> Iterator[Server]:
    """The server until the block ends; then SIGINT, and it must be gone within 15 s. With
    `admin_token` it is a restart on the same data (no first token is printed then)."""
    port = free_port()
    full_env = {
        **os.environ,
        "BULKJOBS_DB_PATH": str(data / "bulkjobs.db"),
        "BULK_EXPORT_PATH": str(data / "exports"),
        "BULKJOBS_EMBEDDED_WORKER": "true",
        "BULKJOBS_STORE": "local",
        "BULK_PROGRESS_INTERVAL_MS": "100",
        "BULKJOBS_LOCAL_WORK_DIR": str(data / "work"),
        **env,
    }
    log_path = data / "server.log"
    command = [str(BULKJOBS), "serve", "--host", "127.0.0.1", "--port", str(port)]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    try:
        login_url = _wait_until_serving(process, log_path, admin_token)
        token = login_url.split("token=", 1)[1]
        yield Server(f"http://127.0.0.1:{port}", login_url, token, full_env, process)
    finally:
        stop(process, log_path)


def stop(process: subprocess.Popen[bytes], log: Path) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"the server ignored SIGINT for 15 s:\n{log.read_text()}") from None


def _wait_until_serving(
    process: subprocess.Popen[bytes], log: Path, admin_token: str | None
) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text()
        printed = re.search(r"Open: (\S+\?token=\S+)", text)
        if admin_token is not None and "Application startup complete" in text:
            return f"/?token={admin_token}"
        if printed and "Application startup complete" in text:
            return printed.group(1)
        if process.poll() is not None:
            raise AssertionError(f"bulkjobs serve exited:\n{text}")
        time.sleep(0.1)
    raise AssertionError(f"bulkjobs serve did not start:\n{log.read_text()}")
