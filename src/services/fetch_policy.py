"""The fetch policy: every outgoing request the service makes for a user goes through it.

A user's URL may name any host, so a connection is made only after the name was resolved
once and each address classified, and it goes to an address that passed -- never to the
answer of a second lookup (which DNS rebinding would change). Loopback, private, link-local
(the cloud metadata address 169.254.169.254 among them), unique-local, multicast,
unspecified and reserved addresses are refused, unless BULKJOBS_HTTP_FETCH_ALLOW_PRIVATE is
set or BULKJOBS_HTTP_FETCH_ALLOWED_HOSTS names the host, or a network holding the address.
Each redirect hop is a request through the same transport, checked the same way. Only http
and https are spoken, and no proxy from the environment is used (the proxy would be what we
connect to). The Host header and TLS SNI stay on the name the URL gave.

Public API: `FetchPolicy` (built from settings), `fetch_client(policy, timeout)` (an httpx
client whose every connection is checked), `classify_address` and `FetchRefused`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import httpcore
import httpx

from src.services.errors import BulkJobError

if TYPE_CHECKING:
    from src.config import Settings

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: host, port -> the addresses it resolves to, as strings.
Resolver = Callable[[str, int], Awaitable[list[str]]]

SCHEMES = frozenset({"http", "https"})
MAX_REDIRECTS = 10
LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
SHARED_SPACE = ipaddress.ip_network("100.64.0.0/10")
UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
NAT64 = ipaddress.ip_network("64:ff9b::/96")
SETTING = "BULKJOBS_HTTP_FETCH_ALLOWED_HOSTS"


class FetchRefused(BulkJobError):
    """The fetch policy refuses this URL or every address its host resolves to."""


class AddressKind(StrEnum):
    PUBLIC = "public"
    LOOPBACK = "loopback"
    PRIVATE = "private"
    LINK_LOCAL = "link-local"
    UNIQUE_LOCAL = "unique-local"
    MULTICAST = "multicast"
    UNSPECIFIED = "unspecified"
    SHARED = "shared (carrier-grade NAT)"
    RESERVED = "reserved"


def classify_address(address: str | Address) -> AddressKind:
    """What kind of address this is; only PUBLIC ones are fetched by default.

    IPv6 forms that carry an IPv4 address (mapped ::ffff:a.b.c.d, 6to4, NAT64) are judged
    by the IPv4 address they lead to."""
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return classify_address(embedded)
    return _kind(ip)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _kind(ip: Address) -> AddressKind:
    checks: list[tuple[bool, AddressKind]] = [
        (ip.is_unspecified, AddressKind.UNSPECIFIED),
        (ip.is_loopback, AddressKind.LOOPBACK),
        (ip.is_link_local, AddressKind.LINK_LOCAL),
        (ip.is_multicast, AddressKind.MULTICAST),
        (ip.version == 6 and ip in UNIQUE_LOCAL, AddressKind.UNIQUE_LOCAL),
        (ip.version == 4 and ip in SHARED_SPACE, AddressKind.SHARED),
        (ip.is_reserved, AddressKind.RESERVED),
        (ip.is_private, AddressKind.PRIVATE),
        (not ip.is_global, AddressKind.RESERVED),
    ]
    return next((kind for hit, kind in checks if hit), AddressKind.PUBLIC)


def parse_allowed_hosts(text: str) -> tuple[frozenset[str], tuple[Network, ...]]:
    """Comma-separated host names and CIDRs (or single addresses); ValueError naming a bad one."""
    names: set[str] = set()
    networks: list[Network] = []
    for raw in text.split(","):
        entry = raw.strip()
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            continue
        except ValueError:
            pass
        name = _normal_name(entry)
        if not name or any(not label or len(label) > 63 for label in name.split(".")):
            raise ValueError(f"{entry!r} is neither a host name nor a CIDR")
        names.add(name)
    return frozenset(names), tuple(networks)


def _normal_name(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


async def system_resolver(host: str, port: int) -> list[str]:
    """The addresses the system resolver gives for `host`, in its order, without repeats."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class FetchPolicy:
    """Which hosts and addresses outgoing requests may reach."""

    allow_private: bool = False
    allowed_names: frozenset[str] = frozenset()
    allowed_networks: tuple[Network, ...] = ()
    #: None: the system resolver (looked up at call time, so tests can patch it).
    resolver: Resolver | None = None

    @classmethod
    def from_settings(cls, settings: Settings, resolver: Resolver | None = None) -> FetchPolicy:
        names, networks = parse_allowed_hosts(settings.bulkjobs_http_fetch_allowed_hosts)
        return cls(settings.bulkjobs_http_fetch_allow_private, names, networks, resolver)

    def check_url(self, url: httpx.URL) -> None:
        """FetchRefused unless the URL is http(s) with a host."""
        if url.scheme not in SCHEMES:
            raise FetchRefused(f"refused: only http and https URLs are fetched, not {url.scheme}:")
        if not url.host:
            raise FetchRefused("refused: the URL has no host")

    def refusal(self, host: str, address: str) -> str | None:
        """Why `address` (of `host`) may not be fetched, or None if it may."""
        if self.allow_private or _normal_name(host) in self.allowed_names:
            return None
        ip = ipaddress.ip_address(address)
        if any(ip.version == net.version and ip in net for net in self.allowed_networks):
            return None
        kind = classify_address(ip)
        if kind is AddressKind.PUBLIC:
            return None
        shown = address if address == host.strip("[]") else f"{host} resolves to {address}, which"
        return f"refused: {shown} is a {kind} address (allow it with {SETTING})"

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses of `host` that may be fetched, resolved once; FetchRefused if none."""
        found = await self._resolve(host, port)
        allowed = [address for address in found if self.refusal(host, address) is None]
        if not allowed:
            if not found:
                raise httpcore.ConnectError(f"cannot resolve {host}: no addresses")
            raise FetchRefused(str(self.refusal(host, found[0])))
        return allowed

    async def _resolve(self, host: str, port: int) -> list[str]:
        literal = host.strip("[]")
        try:
            return [str(ipaddress.ip_address(literal))]
        except ValueError:
            pass
        return await (self.resolver or system_resolver)(host, port)


class CheckedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the policy between the name and the socket: it
    resolves, checks and connects to a checked address itself."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's backend interface
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await self.policy.addresses(host, port)
        except TimeoutError:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from None
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 -- httpcore's backend interface
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise FetchRefused("refused: unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a connection pool that connects through CheckedBackend, and
    refuses URLs the policy does not speak before any connection."""

    def __init__(
        self,
        policy: FetchPolicy,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = LIMITS,
    ) -> None:
        super().__init__(verify=verify, trust_env=False, limits=limits)
        self.policy = policy
        # httpx has no parameter for httpcore's network backend: build the pool it would
        # have built (no proxy, no unix socket), connecting through the policy.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=CheckedBackend(policy),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.policy.check_url(request.url)
        return await super().handle_async_request(request)


def fetch_client(
    policy: FetchPolicy, timeout: httpx.Timeout | float, verify: ssl.SSLContext | bool = True
) -> httpx.AsyncClient:
    """An httpx client for requests made on a user's behalf: every hop checked, redirects
    followed (at most MAX_REDIRECTS), no environment proxies or netrc."""
    return httpx.AsyncClient(
        transport=CheckedTransport(policy, verify=verify),
        timeout=timeout,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        trust_env=False,
    )
