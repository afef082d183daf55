"""Shortened ids in the embedded store: the ids of a table that start with a prefix (the
SQL of `get_job_ids_by_prefix` and `container_get_ids_by_prefix`)."""

from __future__ import annotations

import re
import sqlite3
from typing import Literal

MAX_IDS = 200
#: GLOB's wildcards; each is matched literally when written inside brackets.
GLOB_SPECIAL = re.compile(r"([*?\[])")

Table = Literal["jobs", "container_jobs"]
OwnerColumn = Literal["user_id", "created_by"]


def ids_by_prefix(
    conn: sqlite3.Connection,
    table: Table,
    owner_column: OwnerColumn,
    prefix: str,
    owner: str | None,
    limit: int,
) -> list[str]:
    """Ids of `table` starting with `prefix` (only `owner`'s when given), in id order.

    GLOB with a literal prefix is answered from the id index (SQLite's LIKE optimisation
    applies to GLOB on BINARY-collated columns), so it reads only the matching rows.
    """
    pattern = GLOB_SPECIAL.sub(r"[\1]", prefix) + "*"
    sql = f"SELECT id FROM {table} WHERE id GLOB ?"  # table and column are literals
    params: list[object] = [pattern]
    if owner is not None:
        sql += f" AND {owner_column} = ?"
        params.append(owner)
    params.append(max(1, min(limit, MAX_IDS)))
    return [row[0] for row in conn.execute(sql + " ORDER BY id LIMIT ?", params)]
