"""Shortened ids: listings and the dashboard show ids shortened, so every command and route
that takes a bulk job or container job id also accepts a unique prefix of one. The stores
answer the prefix lookups (`get_job_ids_by_prefix`, `container_get_ids_by_prefix`)."""

from __future__ import annotations

from src.services.errors import AmbiguousId, NotFound

#: Matches a lookup reads at most; an ambiguous prefix reports "more than" this many.
MAX_MATCHES = 50


def unique_match(field: str, given: str, matches: list[str], what: str) -> str:
    """The one id in `matches`; NotFound when there is none, AmbiguousId (naming how many)
    when there are several. `matches` holds up to MAX_MATCHES + 1 ids."""
    if not matches:
        raise NotFound(f"{what} {given} not found")
    if len(matches) > 1:
        count = f"more than {MAX_MATCHES}" if len(matches) > MAX_MATCHES else str(len(matches))
        raise AmbiguousId(field, given, count, what)
    return matches[0]


def can_be_prefix(given: str) -> bool:
    """Whether a lookup by prefix makes sense: not empty, and storable text (a lone
    surrogate from an undecodable command-line argument is not)."""
    try:
        given.encode()
    except UnicodeEncodeError:
        return False
    return bool(given)
