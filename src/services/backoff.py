"""The one back-off rule of the service: every retrying path (store calls, claims after store
errors, launch retries, failed attempts of claimed items) waits `backoff(attempt)` seconds,
and every claimed item's failed attempt is handed back through one `AttemptPolicy`."""

from __future__ import annotations

import random
from dataclasses import dataclass

from src.services.domain import DEFAULT_MAX_ATTEMPTS, Failure

#: Longest wait between two tries, unless a caller gives its own cap.
MAX_BACKOFF_S = 30.0


def backoff(attempt: int, base_s: float = 0.1, cap_s: float = MAX_BACKOFF_S) -> float:
    """Seconds to wait before try number `attempt + 1`: `base_s * 2**attempt`, capped, with
    "equal jitter" (half of it fixed, half random), so many workers do not retry in step and
    a retry never comes at once."""
    step = min(cap_s, base_s * 2.0 ** min(max(attempt, 0), 32))
    return step / 2 + random.uniform(0, step / 2)


@dataclass(frozen=True)
class AttemptPolicy:
    """How a runner or processor treats a failed attempt of a claimed item."""

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    #: Back-off before the next attempt: backoff(attempt - 1, retry_base_s).
    retry_base_s: float = 0.5

    def failure(self, attempts: int, error: str) -> Failure:
        """The failure to hand back after attempt number `attempts` failed with `error`."""
        delay = backoff(max(0, attempts - 1), self.retry_base_s)
        return Failure(error=error, retry_in_s=delay, max_attempts=self.max_attempts)
