"""The fetch policy's verdicts, with no traffic: the address classifier, the allow-list and
the refusal of every address a name resolves to (through a resolver that answers here)."""

from __future__ import annotations

import re

import httpx
import pytest

from src.config import ConfigError, load_settings
from src.services.fetch_policy import (
    AddressKind,
    FetchPolicy,
    FetchRefused,
    classify_address,
    parse_allowed_hosts,
)

VERDICTS = [
    ("127.0.0.1", AddressKind.LOOPBACK),
    ("127.8.9.10", AddressKind.LOOPBACK),
    ("::1", AddressKind.LOOPBACK),
    ("10.1.2.3", AddressKind.PRIVATE),
    ("172.16.0.1", AddressKind.PRIVATE),
    ("192.168.1.1", AddressKind.PRIVATE),
    ("169.254.169.254", AddressKind.LINK_LOCAL),  # the cloud metadata service
    ("169.254.0.1", AddressKind.LINK_LOCAL),
    ("fe80::1", AddressKind.LINK_LOCAL),
    ("fd00:ec2::254", AddressKind.UNIQUE_LOCAL),  # the IPv6 metadata service
    ("fc00::1", AddressKind.UNIQUE_LOCAL),
    ("224.0.0.1", AddressKind.MULTICAST),
    ("ff02::1", AddressKind.MULTICAST),
    ("0.0.0.0", AddressKind.UNSPECIFIED),
    ("::", AddressKind.UNSPECIFIED),
    ("100.64.0.1", AddressKind.SHARED),
    ("240.0.0.1", AddressKind.RESERVED),
    ("192.0.2.1", AddressKind.PRIVATE),  # documentation (TEST-NET-1)
    ("::ffff:127.0.0.1", AddressKind.LOOPBACK),  # IPv4-mapped
    ("::ffff:169.254.169.254", AddressKind.LINK_LOCAL),
    ("2002:7f00:1::", AddressKind.LOOPBACK),  # 6to4 of 127.0.0.1
    ("64:ff9b::a00:1", AddressKind.PRIVATE),  # NAT64 of 10.0.0.1
    ("8.8.8.8", AddressKind.PUBLIC),
    ("2606:4700:4700::1111", AddressKind.PUBLIC),
    ("64:ff9b::808:808", AddressKind.PUBLIC),  # NAT64 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "kind"), VERDICTS)
def test_classifier(address: str, kind: AddressKind) -> None:
    assert classify_address(address) is kind


def resolving_to(*addresses: str) -> FetchPolicy:
    async def resolver(host: str, port: int) -> list[str]:
        return list(addresses)

    return FetchPolicy(resolver=resolver)


async def test_a_name_is_refused_when_every_address_is_refused() -> None:
    for address in ("127.0.0.1", "10.0.0.7", "169.254.169.254", "fd00::1", "::ffff:10.0.0.1"):
        with pytest.raises(FetchRefused, match=re.escape(f"internal.test resolves to {address}")):
            await resolving_to(address).addresses("internal.test", 80)


async def test_only_the_allowed_addresses_of_a_mixed_answer_are_kept() -> None:
    policy = resolving_to("10.0.0.1", "8.8.8.8", "127.0.0.1", "2606:4700:4700::1111")
    assert await policy.addresses("mixed.test", 80) == ["8.8.8.8", "2606:4700:4700::1111"]


async def test_address_literals_are_checked_without_a_lookup() -> None:
    async def no_lookup(host: str, port: int) -> list[str]:
        raise AssertionError("a literal needs no lookup")

    policy = FetchPolicy(resolver=no_lookup)
    with pytest.raises(FetchRefused, match=re.escape("169.254.169.254 is a link-local address")):
        await policy.addresses("169.254.169.254", 80)
    with pytest.raises(FetchRefused, match="::1 is a loopback address"):
        await policy.addresses("[::1]", 80)
    assert await policy.addresses("8.8.8.8", 80) == ["8.8.8.8"]


async def test_the_allow_list_takes_names_and_networks() -> None:
    names, networks = parse_allowed_hosts(" Intranet.Test., 10.0.0.0/8, 127.0.0.1, [::1] ")
    assert names == {"intranet.test"}
    policy = FetchPolicy(allowed_names=names, allowed_networks=networks)
    assert policy.refusal("intranet.test", "192.168.5.5") is None  # the name: any address
    assert policy.refusal("other.test", "10.9.9.9") is None
    assert policy.refusal("127.0.0.1", "127.0.0.1") is None
    assert policy.refusal("::1", "::1") is None
    assert policy.refusal("other.test", "192.168.5.5") is not None
    assert policy.refusal("other.test", "127.0.0.2") is not None
    assert FetchPolicy(allow_private=True).refusal("x.test", "169.254.169.254") is None


def test_a_bad_allow_list_stops_start_up_naming_the_setting() -> None:
    with pytest.raises(ConfigError, match="BULKJOBS_HTTP_FETCH_ALLOWED_HOSTS"):
        load_settings(bulkjobs_http_fetch_allowed_hosts="ok.test, bad..name")
    settings = load_settings(bulkjobs_http_fetch_allowed_hosts="ok.test,10.0.0.0/8")
    policy = FetchPolicy.from_settings(settings)
    assert policy.allowed_names == {"ok.test"} and not policy.allow_private


@pytest.mark.parametrize("url", ["ftp://example.test/x", "file:///etc/passwd", "gopher://x.test"])
def test_only_http_and_https_are_spoken(url: str) -> None:
    with pytest.raises(FetchRefused, match="only http and https"):
        FetchPolicy().check_url(httpx.URL(url))
