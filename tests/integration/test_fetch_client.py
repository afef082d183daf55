"""The checked httpx client against real servers on 127.0.0.1: it connects to the address it
checked (resolved once, by the policy's resolver), while the Host header, TLS SNI and the
certificate check stay on the name from the URL."""

from __future__ import annotations

import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from src.services.fetch_policy import FetchPolicy, FetchRefused, fetch_client, parse_allowed_hosts
from tests.loopback_http import QuietHandler


class Handler(QuietHandler):
    hosts: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        Handler.hosts.append(self.headers.get("Host", ""))
        self.reply(200, b"hello", content_type=None)


@dataclass
class Server:
    port: int
    #: Server names the TLS clients asked for (SNI).
    server_names: list[str | None] = field(default_factory=list)


def serve(httpd: ThreadingHTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def plain() -> Iterator[Server]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    for _ in serve(httpd):
        yield Server(httpd.server_address[1])


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip(reason="openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subject = ["-days", "1", "-subj", "/CN=svc.test", "-addext", "subjectAltName=DNS:svc.test"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", *subject, *files],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls(certificate: tuple[Path, Path]) -> Iterator[Server]:
    server = Server(0)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    context.sni_callback = lambda sock, name, ctx: server.server_names.append(name)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    server.port = httpd.server_address[1]
    for _ in serve(httpd):
        yield server


class Resolver:
    """Answers for svc.test from a script (a rebinding DNS server would change its answer)."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return [self.answers[min(len(self.asked), len(self.answers)) - 1]]


def policy(resolver: Resolver, allowed: str = "127.0.0.1/32") -> FetchPolicy:
    names, networks = parse_allowed_hosts(allowed)
    return FetchPolicy(allowed_names=names, allowed_networks=networks, resolver=resolver)


async def test_it_connects_to_the_checked_address_with_the_name_as_host(plain: Server) -> None:
    Handler.hosts.clear()
    # svc.test resolves nowhere but here: the request can only reach 127.0.0.1 through the
    # address the policy checked.
    resolver = Resolver("127.0.0.1", "127.0.0.9")
    async with fetch_client(policy(resolver), timeout=5) as client:
        response = await client.get(f"http://svc.test:{plain.port}/x")
    assert response.status_code == 200 and response.text == "hello"
    assert resolver.asked == ["svc.test"]
    assert Handler.hosts == [f"svc.test:{plain.port}"]


async def test_a_rebound_answer_is_checked_again(plain: Server) -> None:
    Handler.hosts.clear()
    resolver = Resolver("127.0.0.1", "127.0.0.9")
    async with fetch_client(policy(resolver), timeout=5) as client:
        assert (
            await client.get(f"http://svc.test:{plain.port}/", headers={"Connection": "close"})
        ).status_code == 200
        with pytest.raises(FetchRefused, match=r"svc\.test resolves to 127\.0\.0\.9"):
            await client.get(f"http://svc.test:{plain.port}/")
    assert resolver.asked == ["svc.test", "svc.test"]
    assert len(Handler.hosts) == 1


async def test_tls_keeps_sni_and_the_certificate_check_on_the_name(
    tls: Server, certificate: tuple[Path, Path]
) -> None:
    Handler.hosts.clear()
    trust = ssl.create_default_context(cafile=str(certificate[0]))
    resolver = Resolver("127.0.0.1")
    async with fetch_client(policy(resolver), timeout=5, verify=trust) as client:
        response = await client.get(f"https://svc.test:{tls.port}/")
    assert response.status_code == 200
    assert tls.server_names == ["svc.test"]
    assert Handler.hosts == [f"svc.test:{tls.port}"]


async def test_refused_before_any_connection(plain: Server) -> None:
    Handler.hosts.clear()
    async with fetch_client(FetchPolicy(), timeout=5) as client:
        for url in (f"http://127.0.0.1:{plain.port}/", f"http://[::ffff:127.0.0.1]:{plain.port}/"):
            with pytest.raises(FetchRefused):
                await client.get(url)
        with pytest.raises(FetchRefused, match="only http and https"):
            await client.get("ftp://127.0.0.1/")
    assert Handler.hosts == []
