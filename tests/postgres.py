"""A clean PostgreSQL schema of its own for each test or benchmark, on the server `.ci/postgres start` runs."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlencode, urlsplit, urlunsplit


def with_search_path(url: str, schema: str) -> str:
    """`url` with its sessions' tables in `schema`: asyncpg passes a URL's unknown query parameters to the server."""
    parts = urlsplit(url)
    query = "&".join(filter(None, [parts.query, urlencode({"search_path": schema})]))
    return urlunsplit(parts._replace(query=query))


@contextlib.asynccontextmanager
async def fresh_schema(server: str) -> AsyncIterator[str]:
    """The URL of an empty schema on `server`, dropped with everything in it afterwards."""
    import asyncpg

    schema = f"test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(server)
    try:
        await admin.execute(f"CREATE SCHEMA {schema}")
        yield with_search_path(server, schema)
    finally:
        await admin.execute(f"DROP SCHEMA {schema} CASCADE")
        await admin.close()
