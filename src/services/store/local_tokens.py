"""The API token half of LocalStore: hashed tokens, their expiry and revocation.

A token's id is the start of its hash (TOKEN_ID_CHARS characters): lists and revocations
name a token by it, so neither ever needs the secret or the whole hash.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from src.services.domain import TOKEN_ID_CHARS, ApiToken, from_epoch, to_datetime
from src.services.errors import Conflict, NotFound

T = TypeVar("T")

TOKEN_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    is_admin INTEGER NOT NULL,
    name TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS api_tokens_by_user ON api_tokens(user_id, created_at);
"""

#: Columns added to api_tokens after its first release (see local.ADDED_COLUMNS).
TOKEN_COLUMNS = [("api_tokens", "expires_at", "REAL"), ("api_tokens", "revoked_at", "REAL")]


class LocalTokenOps:
    """Mixed into LocalStore; `_run` (writes) and `_read` (reads) are LocalStore's."""

    _clock: Callable[[], float]

    if TYPE_CHECKING:  # LocalStore provides these two

        async def _run(self, fn: Callable[..., T], *args: Any) -> T: ...

        async def _read(self, fn: Callable[..., T], *args: Any) -> T: ...

    async def create_token(
        self,
        token_hash: str,
        user_id: str,
        is_admin: bool,
        name: str,
        expires_at: datetime | None = None,
    ) -> None:
        expiry = None if expires_at is None else expires_at.timestamp()
        await self._run(self._create_token, token_hash, user_id, is_admin, name, expiry)

    def _create_token(
        self,
        conn: sqlite3.Connection,
        token_hash: str,
        user_id: str,
        is_admin: bool,
        name: str,
        expires_at: float | None,
    ) -> None:
        try:
            conn.execute(
                "INSERT INTO api_tokens (token_hash, user_id, is_admin, name, created_at,"
                " expires_at) VALUES (?, ?, ?, ?, ?, ?)",
                (token_hash, user_id, int(is_admin), name, self._clock(), expires_at),
            )
        except sqlite3.IntegrityError:
            raise Conflict("a token with this hash already exists") from None

    async def get_token(self, token_hash: str) -> ApiToken | None:
        rows = await self._read(_rows, "token_hash = ?", (token_hash,), 1)
        return _token(rows[0]) if rows else None

    async def list_tokens(self, user_id: str | None = None, limit: int = 100) -> list[ApiToken]:
        limit = max(1, min(limit, 200))
        where, values = ("user_id = ?", (user_id,)) if user_id is not None else ("1", ())
        return [_token(row) for row in await self._read(_rows, where, values, limit)]

    async def revoke_token(self, token_id: str) -> ApiToken:
        return _token(await self._run(self._revoke_token, token_id))

    def _revoke_token(self, conn: sqlite3.Connection, token_id: str) -> sqlite3.Row:
        rows = _rows(conn, "substr(token_hash, 1, ?) = ?", (TOKEN_ID_CHARS, token_id), 2)
        if len(token_id) != TOKEN_ID_CHARS or not rows:
            raise NotFound(f"token {token_id} not found")
        if len(rows) > 1:  # 48 bits of a hash: never seen, but never a guess either
            raise Conflict(f"token id {token_id} names more than one token")
        conn.execute(
            "UPDATE api_tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE token_hash = ?",
            (self._clock(), rows[0]["token_hash"]),
        )
        return _rows(conn, "token_hash = ?", (rows[0]["token_hash"],), 1)[0]

    async def count_tokens(self) -> int:
        return await self._run(
            lambda conn: int(conn.execute("SELECT COUNT(*) FROM api_tokens").fetchone()[0])
        )


def _rows(
    conn: sqlite3.Connection, where: str, values: tuple[Any, ...], limit: int
) -> list[sqlite3.Row]:
    return conn.execute(
        f"SELECT * FROM api_tokens WHERE {where}"  # callers pass fixed clauses, values bound
        " ORDER BY created_at DESC, rowid DESC LIMIT ?",
        (*values, limit),
    ).fetchall()


def _token(row: sqlite3.Row) -> ApiToken:
    return ApiToken(
        user_id=row["user_id"],
        is_admin=bool(row["is_admin"]),
        name=row["name"],
        created_at=from_epoch(row["created_at"]),
        token_id=row["token_hash"][:TOKEN_ID_CHARS],
        expires_at=to_datetime(row["expires_at"]),
        revoked_at=to_datetime(row["revoked_at"]),
    )
