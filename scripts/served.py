"""`bulkjobs serve` in a subprocess on 127.0.0.1 with its own temporary store, for the
scripts that measure a real server (attack_rerun.py, pending_cpu.py)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
BULKJOBS = [sys.executable, "-m", "src.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Served:
    """The server process, an admin token (`admin`) and a user's (`alice`); `env` is what
    the server and the CLI calls run with."""

    def __init__(self, env: dict[str, str], prefix: str = "bulkjobs-") -> None:
        self.root = Path(tempfile.mkdtemp(prefix=prefix))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "BULKJOBS_DB_PATH": str(self.root / "db.sqlite"),
            "BULK_EXPORT_PATH": str(self.root / "exports"),
            "BULKJOBS_PORT": str(self.port),
            "BULKJOBS_LOG_LEVEL": "WARNING",
            **env,
        }
        self.admin = self.token("root", admin=True)
        self.alice = self.token("alice")
        self.process = subprocess.Popen(
            [*BULKJOBS, "serve"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.ps = psutil.Process(self.process.pid)
        self._wait_until_healthy()

    def _wait_until_healthy(self) -> None:
        for _ in range(300):  # 30 s at most
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the server did not start")

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*BULKJOBS, *args], cwd=ROOT, env=self.env, capture_output=True, text=True
        )

    def token(self, user: str, admin: bool = False) -> str:
        return self.cli(
            "token", "create", "--user", user, *(["--admin"] if admin else [])
        ).stdout.strip()

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        shutil.rmtree(self.root, ignore_errors=True)
