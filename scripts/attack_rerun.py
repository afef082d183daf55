"""Rerun issue 14's attacks against a real `bulkjobs serve` on loopback and print figures.

    .venv/bin/python scripts/attack_rerun.py [--big-mb 50] [--slow 300]

Each phase starts its own server (a subprocess, temporary store and export folder) and
measures the server process: RSS and open descriptors before, at peak and after, requests
sent and how they ended. All traffic goes to 127.0.0.1; every loop is bounded in count and
time. Phases: ssrf (loopback targets, default policy), big (16 bodies of --big-mb MB from a
loopback server, allowed through BULKJOBS_HTTP_FETCH_ALLOWED_HOSTS), input (NaN, Infinity,
surrogates, deep nesting, unsafe ZIP names, a 9 MB field), slow (stalled headers and
bodies), race (downloads while cleanup removes exports), users (empty user ids), hosts
(a bad executor_config), escape (setsid under the local executor).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psutil
from served import Served


class Bodies(BaseHTTPRequestHandler):
    """The loopback target: /big/<mb> streams that many MB, /secret.txt a secret."""

    def do_GET(self) -> None:
        if self.path.startswith("/big/"):
            size = int(self.path.split("/")[2]) * 1024 * 1024
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = b"x" * (1024 * 1024)
            for _ in range(size // len(block)):
                try:
                    self.wfile.write(block)
                except (BrokenPipeError, ConnectionResetError):  # the fetcher gave up
                    return
        else:
            body = b"top secret\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return None


@contextmanager
def target() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Bodies)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


class Service(Served):
    """`bulkjobs serve` with its own store, tokens for it, and its peak RSS and FDs."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__({"BULK_RATE_LIMIT_MAX_JOBS": "100000", **env}, "bulkjobs-attack-")
        self.peak = Peak(self.ps)

    def headers(self, token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    def figures(self) -> dict[str, float]:
        return {"rss_mb": round(self.ps.memory_info().rss / 2**20, 1), "fds": self.ps.num_fds()}

    def disk_mb(self) -> float:
        files = (self.root / "exports").rglob("*")
        return round(sum(p.stat().st_size for p in files if p.is_file()) / 2**20, 1)

    def stop(self) -> None:
        self.peak.stop()
        super().stop()


class Peak:
    """The server's largest RSS and descriptor count, sampled every 50 ms."""

    def __init__(self, ps: psutil.Process) -> None:
        self.ps, self.rss, self.fds = ps, 0, 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            try:
                self.rss = max(self.rss, self.ps.memory_info().rss)
                self.fds = max(self.fds, self.ps.num_fds())
            except psutil.Error:
                return

    def reset(self) -> None:
        self.rss = self.fds = 0

    def figures(self) -> dict[str, float]:
        return {"rss_mb": round(self.rss / 2**20, 1), "fds": self.fds}

    def stop(self) -> None:
        self._stop.set()


def wait_job(service: Service, job_id: str, timeout_s: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job: dict[str, Any] = httpx.get(
            f"{service.url}/bulk-jobs/{job_id}", headers=service.headers(service.alice)
        ).json()
        if job["status"] in ("completed", "failed", "cancelled"):
            return job
        time.sleep(0.2)
    raise TimeoutError(job_id)


def fetch_rows(service: Service, urls: list[str], fmt: str = "json") -> list[dict[str, Any]]:
    body = {"job_type": "http_fetch", "job_data": {"urls": urls, "export_format": fmt}}
    created = httpx.post(
        f"{service.url}/bulk-jobs", json=body, headers=service.headers(service.alice), timeout=30
    )
    job = wait_job(service, created.json()["job_id"])
    export = job["exports"][0]
    download = httpx.get(
        f"{service.url}/bulk-jobs/{job['job_id']}/export/{export['export_id']}",
        headers=service.headers(service.alice),
        timeout=60,
    )
    if fmt == "json":
        rows: list[dict[str, Any]] = download.json()
        return rows
    return [{"zip_bytes": len(download.content)}]


def phase_ssrf() -> dict[str, Any]:
    service = Service({})
    try:
        with target() as loopback:
            port = loopback.rsplit(":", 1)[1]
            urls = [
                f"{service.url}/metrics",
                f"{loopback}/secret.txt",
                f"http://localhost:{port}/secret.txt",
                f"http://[::1]:{port}/secret.txt",
                f"http://127.1:{port}/secret.txt",
                f"http://2130706433:{port}/secret.txt",
            ]
            rows = fetch_rows(service, urls)
        return {
            "requests": len(urls),
            "refused": sum(1 for row in rows if (row["error"] or "").startswith("refused")),
            "fetched": sum(1 for row in rows if row["status"] is not None),
            "errors": sorted({(row["error"] or "fetched").split(" (")[0] for row in rows}),
        }
    finally:
        service.stop()


def phase_big(big_mb: int, per_body_mb: int | None) -> dict[str, Any]:
    env = {
        "BULKJOBS_HTTP_FETCH_ALLOWED_HOSTS": "127.0.0.1/32",
        "BULK_EXPORT_RETENTION_HOURS": "0.0005",
    }
    if per_body_mb:
        env["BULKJOBS_HTTP_FETCH_MAX_BODY_BYTES"] = str(per_body_mb * 2**20)
    service = Service(env)
    try:
        before = service.figures()
        service.peak.reset()
        with target() as loopback:
            rows = fetch_rows(service, [f"{loopback}/big/{big_mb}"] * 16, fmt="zip")
        result = {
            "requests": 16,
            "body_mb": big_mb,
            "before": before,
            "peak": service.peak.figures(),
            "after": service.figures(),
            "zip_mb": round(rows[0]["zip_bytes"] / 2**20, 1),
            "disk_after_job_mb": service.disk_mb(),
        }
        time.sleep(2)  # the export expires (BULK_EXPORT_RETENTION_HOURS=0.0005)
        cleaned = service.cli("cleanup", "--grace", "0")
        result["cleanup"] = cleaned.stdout.strip().replace("\n", "; ")
        result["disk_after_cleanup_mb"] = service.disk_mb()
        return result
    finally:
        service.stop()


def field_of(response: httpx.Response) -> Any:
    try:
        return response.json().get("field")
    except ValueError:  # not JSON (a bare "Internal Server Error")
        return None


def phase_input() -> dict[str, Any]:
    service = Service({})
    try:
        alice, admin = service.headers(service.alice), service.headers(service.admin)
        job = httpx.post(
            f"{service.url}/bulk-jobs", json={"job_type": "sample"}, headers=alice
        ).json()["job_id"]
        deep: Any = 1
        for _ in range(300):
            deep = {"a": deep}
        exports = f"/bulk-jobs/{job}/exports"
        sends = [
            ("/bulk-jobs", alice, '{"job_type": "sample", "estimated_duration_minutes": NaN}'),
            ("/bulk-jobs", alice, '{"job_type": "sample", "estimated_duration_minutes": 1e999}'),
            ("/bulk-jobs", alice, '{"job_type": "\\ud800"}'),
            ("/container-jobs", admin, '{"image": "x", "cpu_limit": Infinity}'),
            ("/container-jobs", admin, json.dumps({"image": "x", "network_configuration": [deep]})),
            ("/hosts", admin, '{"name": "h", "executor_type": "mock", "cost_per_hour": -Infinity}'),
            ("/container-jobs/bulk/cleanup", admin, '{"days_old": NaN}'),
            (exports, alice, '{"export_format": "zip", "data": {"../x": "a"}}'),
            (exports, alice, '{"export_format": "zip", "data": {"/etc/x": "a"}}'),
            (exports, alice, '{"export_format": "csv", "data": [{"\\ud800": 1}]}'),
            (exports, alice, '{"export_format": "json", "expires_in_hours": NaN, "data": []}'),
            ("/bulk-jobs", alice, '{"job_type": "' + "x" * 9_000_000 + '"}'),
        ]
        results = []
        for path, headers, body in sends:
            response = httpx.post(
                f"{service.url}{path}",
                content=body.encode(),
                headers=headers | {"content-type": "application/json"},
                timeout=60,
            )
            results.append((response.status_code, len(response.content), field_of(response)))
        return {
            "requests": len(sends),
            "statuses": sorted({status for status, _, _ in results}),
            "server_errors": sum(1 for status, _, _ in results if status >= 500),
            "largest_error_body_bytes": max(size for _, size, _ in results),
            "fields": [field for _, _, field in results],
        }
    finally:
        service.stop()


async def phase_slow(count: int) -> dict[str, Any]:
    env = {"BULKJOBS_HEADER_TIMEOUT_S": "2", "BULKJOBS_BODY_TIMEOUT_S": "2"}
    service = Service(env)
    try:
        before = service.figures()
        service.peak.reset()
        started = time.monotonic()
        stall = (
            b"POST /bulk-jobs HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n{"
        )
        connections = []
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
            writer.write(stall)
            connections.append((reader, writer))

        async def outcome(reader: asyncio.StreamReader) -> tuple[bytes, float]:
            try:
                text = await asyncio.wait_for(reader.read(), 30)
            except TimeoutError:
                text = b"still open"
            except ConnectionError:  # refused at once: the unread request makes it a reset
                text = b"reset"
            return text[:12] or b"closed", time.monotonic() - started

        outcomes = await asyncio.gather(*(outcome(reader) for reader, _ in connections))
        during = service.peak.figures()
        for _, writer in connections:
            writer.close()
        await asyncio.sleep(0.5)
        by_status: dict[str, int] = {}
        for text, _ in outcomes:
            key = text.decode(errors="replace")
            by_status[key] = by_status.get(key, 0) + 1
        return {
            "connections": count,
            "answers": by_status,
            "all_closed_within_s": round(max(seconds for _, seconds in outcomes), 1),
            "before": before,
            "peak": during,
            "after": service.figures(),
        }
    finally:
        service.stop()


async def phase_race(downloads: int) -> dict[str, Any]:
    env = {"BULKJOBS_CLEANUP_INTERVAL_S": "0.2"}
    service = Service(env)
    try:
        alice = service.headers(service.alice)
        exports = []
        async with httpx.AsyncClient(base_url=service.url, headers=alice, timeout=30) as client:
            for _ in range(20):
                job = (await client.post("/bulk-jobs", json={"job_type": "sample"})).json()[
                    "job_id"
                ]
                data = [{"i": i, "pad": "x" * 200} for i in range(2000)]
                body = {"export_format": "json", "data": data, "expires_in_hours": 0.003}
                export = await client.post(f"/bulk-jobs/{job}/exports", json=body)
                exports.append((job, export.json()["export_id"]))
            counts = {"complete": 0, "404": 0, "broken": 0}
            gate = asyncio.Semaphore(16)

            async def download(job: str, export_id: str) -> None:
                async with gate:
                    try:
                        response = await client.get(f"/bulk-jobs/{job}/export/{export_id}")
                    except httpx.HTTPError:
                        counts["broken"] += 1
                        return
                    if response.status_code == 404:
                        counts["404"] += 1
                    elif len(response.content) == int(response.headers["content-length"]):
                        counts["complete"] += 1
                    else:
                        counts["broken"] += 1

            await asyncio.gather(*(download(*exports[i % len(exports)]) for i in range(downloads)))
        return {"downloads": downloads, **counts}
    finally:
        service.stop()


def phase_users() -> dict[str, Any]:
    service = Service({})
    try:
        results = {
            user or "(empty)": service.cli("token", "create", "--user", user).returncode
            for user in ("", "   ")
        }
        return {"token_create_exit_codes": results}
    finally:
        service.stop()


def phase_hosts() -> dict[str, Any]:
    service = Service({})
    try:
        admin, alice = service.headers(service.admin), service.headers(service.alice)
        bad = {"name": "bad", "executor_type": "mock", "executor_config": {"max_memory_mb": "abc"}}
        created = httpx.post(f"{service.url}/hosts", json=bad, headers=admin)
        good = {"name": "mock", "executor_type": "mock", "weight": 1}
        httpx.post(f"{service.url}/hosts", json=good, headers=admin)
        job = {"image": "busybox", "command": "true", "executor_type": "mock"}
        routed = [
            httpx.post(f"{service.url}/container-jobs", json=job, headers=alice).status_code
            for _ in range(5)
        ]
        return {"bad_host": created.status_code, "field": field_of(created), "routed": routed}
    finally:
        service.stop()


def phase_escape() -> dict[str, Any]:
    service = Service({})
    try:
        admin = service.headers(service.admin)
        job = {
            "image": "local",
            "executor_type": "local",
            "command": "setsid sleep 1000 & echo $!; sleep 1000",
            "timeout_seconds": 2,
        }
        created = httpx.post(f"{service.url}/container-jobs", json=job, headers=admin).json()
        for _ in range(300):
            state = httpx.get(f"{service.url}/container-jobs/{created['id']}", headers=admin).json()
            if state["status"] in ("completed", "failed", "timeout", "cancelled"):
                break
            time.sleep(0.1)
        logs = httpx.get(f"{service.url}/container-jobs/{created['id']}/logs", headers=admin).json()
        pid = int(logs["stdout"].split()[0])
        survived = psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        if survived:
            psutil.Process(pid).kill()
        return {"status": state["status"], "escapee_pid": pid, "escapee_survived": survived}
    finally:
        service.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big-mb", type=int, default=50)
    parser.add_argument("--slow", type=int, default=300)
    parser.add_argument("--downloads", type=int, default=2000)
    parser.add_argument("--only", nargs="*", default=None)
    args = parser.parse_args()
    phases: dict[str, Any] = {
        "ssrf": phase_ssrf,
        "big (default caps)": lambda: phase_big(args.big_mb, None),
        "big (64 MiB per body, default job budget)": lambda: phase_big(args.big_mb, 64),
        "input": phase_input,
        "slow": lambda: asyncio.run(phase_slow(args.slow)),
        "race": lambda: asyncio.run(phase_race(args.downloads)),
        "users": phase_users,
        "hosts": phase_hosts,
        "escape": phase_escape,
    }
    for name, phase in phases.items():
        if args.only and not any(name.startswith(only) for only in args.only):
            continue
        print(json.dumps({name: phase()}), flush=True)


if __name__ == "__main__":
    main()
