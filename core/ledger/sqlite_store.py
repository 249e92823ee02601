"""`SQLiteStore`: the `Store` in the ledger's SQLite file, opened and closed with the ledger.

`SQLiteLedger.open` builds it on the ledger's own connection and hands it out as `ledger.store`, so
the composition root gets the ledger and the store from one open, with one file, one owner lock and
one close. Its statements take turns with the ledger's batches on that connection.

* Claims, followed threads and settings are rows: they outlive a restart. A claim is one upsert that
  writes only when the key is new or its claim has expired, so of any number of callers exactly one
  sees a row written. Each claim also deletes a few expired claims (PRUNE_PER_WRITE), oldest first
  through an index: the table stays about as large as the live claims, and no call pays for a backlog.
  Followed threads are forgotten the same way once nobody has followed them for THREAD_RETENTION.
* Request rates stay in memory. Only the process that owns the file serves requests (see sqlite.py),
  so every request passes through its memory, which therefore is the shared state; a restart forgets
  at most a minute of rate. A store shared by replicas (PostgreSQL) keeps them in a table instead.
* The owner reads settings through a memory of the last SETTINGS_CACHED. Every chat request reads two
  (the person's model, the channel's instructions), which otherwise cost two trips to the SQLite
  thread. It remembers what it writes, and a setting written by another process bumps the ledger's
  change counter, which the owner reads before each look in its memory (a few microseconds), so the
  memory is never stale.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import date, datetime, timedelta

import aiosqlite

from ..ratelimit import RateLimit
from .protocol import LedgerError
from .store import CLAIM_SECONDS

PRUNE_PER_WRITE = 2  # expired rows deleted per claim or follow: more than each adds, so the tables shrink
SETTINGS_CACHED = 20_000  # settings (set or not) the owner keeps in memory, the least recently read dropped first
THREAD_RETENTION = timedelta(days=90)  # a thread nobody followed for this long is forgotten

# The schema, appended to the ledger's migrations (sqlite.py): one migration, never edited.
MIGRATION = """
    -- keys a replica took first (events, deliveries), each until it may be taken again
    CREATE TABLE claims (key TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID;
    CREATE INDEX claims_by_expiry ON claims (expires_at);
    CREATE TABLE followed_threads (thread TEXT PRIMARY KEY, followed_at REAL NOT NULL) WITHOUT ROWID;
    CREATE INDEX followed_threads_by_age ON followed_threads (followed_at);
    CREATE TABLE settings (scope TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL,
                           PRIMARY KEY (scope, name)) WITHOUT ROWID;
"""

# A later migration of the ledger's file: requests refused per day and reason, for the dashboard.
REFUSALS_MIGRATION = """
    CREATE TABLE refusals (day TEXT NOT NULL, reason TEXT NOT NULL, requests INTEGER NOT NULL,
                           PRIMARY KEY (day, reason)) WITHOUT ROWID;
"""

# Named so that a test can check with EXPLAIN QUERY PLAN that they use the indexes.
CLAIM = (
    "INSERT INTO claims (key, expires_at) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at WHERE claims.expires_at <= ?"
)
FORGET_CLAIMS = "DELETE FROM claims WHERE key IN (SELECT key FROM claims WHERE expires_at <= ? ORDER BY expires_at LIMIT ?)"
FOLLOW = (
    "INSERT INTO followed_threads (thread, followed_at) VALUES (?, ?)"
    " ON CONFLICT (thread) DO UPDATE SET followed_at = excluded.followed_at"
)
FOLLOWS = "SELECT 1 FROM followed_threads WHERE thread = ? AND followed_at > ?"
FORGET_THREADS = (
    "DELETE FROM followed_threads WHERE thread IN"
    " (SELECT thread FROM followed_threads WHERE followed_at <= ? ORDER BY followed_at LIMIT ?)"
)
SETTING = "SELECT value FROM settings WHERE scope = ? AND name = ?"
SET_SETTING = (
    "INSERT INTO settings (scope, name, value) VALUES (?, ?, ?) ON CONFLICT (scope, name) DO UPDATE SET value = excluded.value"
)
REMOVE_SETTING = "DELETE FROM settings WHERE scope = ? AND name = ?"
BUMP_VERSION = "UPDATE limits_version SET version = version + 1"  # the ledger's change counter (sqlite.py)
COUNT_REFUSAL = (
    "INSERT INTO refusals (day, reason, requests) VALUES (?, ?, 1)"
    " ON CONFLICT (day, reason) DO UPDATE SET requests = requests + 1"
)
REFUSALS = "SELECT reason, requests FROM refusals WHERE day = ? ORDER BY reason"


class SQLiteStore:
    """The `Store` on the ledger's connection; build it through `SQLiteLedger.open` (see the module docstring)."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        db_lock: asyncio.Lock,
        *,
        clock: Callable[[], datetime],
        owner: bool,
        check_open: Callable[[], None],
        refresh: Callable[[], None],
    ) -> None:
        self._db = db
        self._db_lock = db_lock  # the ledger's: one statement or transaction at a time on the connection
        self._clock = clock  # wall time: claims and threads outlive the process
        self._owner = owner
        self._check_open = check_open
        self._refresh = refresh  # the ledger's look at what other processes changed: may call `forget_settings`
        self._rates: dict[int, RateLimit] = {}  # per_minute -> the owner's windows, on the monotonic clock
        # The owner's memory of settings (see the module docstring): every chat request reads two.
        self._settings: OrderedDict[tuple[str, str], str | None] = OrderedDict()

    async def claim(self, key: str, *, ttl: float = CLAIM_SECONDS) -> bool:
        now = self._clock().timestamp()
        async with self._turn() as db:
            await db.execute(FORGET_CLAIMS, (now, PRUNE_PER_WRITE))
            cursor = await db.execute(CLAIM, (key, now + ttl, now))
            return cursor.rowcount == 1  # 0 when the key was claimed and its claim has not expired

    async def follow_thread(self, thread: str) -> None:
        now = self._clock()
        async with self._turn() as db:
            await db.execute(FORGET_THREADS, ((now - THREAD_RETENTION).timestamp(), PRUNE_PER_WRITE))
            await db.execute(FOLLOW, (thread, now.timestamp()))

    async def follows_thread(self, thread: str) -> bool:
        cutoff = (self._clock() - THREAD_RETENTION).timestamp()
        async with self._turn() as db:
            rows = await db.execute_fetchall(FOLLOWS, (thread, cutoff))
        return bool(rows)

    async def take_request(self, person: str, per_minute: int) -> float:
        self._check_open()
        if not self._owner:
            raise LedgerError("request rates are counted by the process serving requests, which owns the ledger")
        if per_minute not in self._rates:
            self._rates[per_minute] = RateLimit(per_minute, clock=time.monotonic)
        return self._rates[per_minute].wait_needed(person)

    async def setting(self, scope: str, name: str) -> str | None:
        self._check_open()
        self._refresh()
        if (scope, name) in self._settings:
            self._settings.move_to_end((scope, name))
            return self._settings[scope, name]
        async with self._turn() as db:
            rows = list(await db.execute_fetchall(SETTING, (scope, name)))
            value = rows[0][0] if rows else None
            self._remember_setting(scope, name, value)  # under the lock: no write can come between
        return value

    async def set_setting(self, scope: str, name: str, value: str | None) -> None:
        async with self._turn() as db:
            if self._owner:
                await self._write_setting(db, scope, name, value)
                self._remember_setting(scope, name, value)
                return
            await db.execute("BEGIN IMMEDIATE")  # beside the owner: tell it, in the same transaction
            try:
                await self._write_setting(db, scope, name, value)
                await db.execute(BUMP_VERSION)
                await db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    await db.execute("ROLLBACK")
                raise

    @staticmethod
    async def _write_setting(db: aiosqlite.Connection, scope: str, name: str, value: str | None) -> None:
        if value is None:
            await db.execute(REMOVE_SETTING, (scope, name))
        else:
            await db.execute(SET_SETTING, (scope, name, value))

    def forget_settings(self) -> None:
        """Drop the remembered settings: another process wrote one."""
        self._settings.clear()

    def _remember_setting(self, scope: str, name: str, value: str | None) -> None:
        if not self._owner:
            return
        self._settings[scope, name] = value
        self._settings.move_to_end((scope, name))
        if len(self._settings) > SETTINGS_CACHED:
            self._settings.popitem(last=False)

    async def record_refusal(self, day: date, reason: str) -> None:
        async with self._turn() as db:
            await db.execute(COUNT_REFUSAL, (day.isoformat(), reason))

    async def refusals(self, day: date) -> dict[str, int]:
        async with self._turn() as db:
            rows = await db.execute_fetchall(REFUSALS, (day.isoformat(),))
        return {reason: requests for reason, requests in rows}

    @asynccontextmanager
    async def _turn(self) -> AsyncIterator[aiosqlite.Connection]:
        """The connection for one turn between the ledger's batches; a SQLite error becomes a `LedgerError`."""
        self._check_open()
        async with self._db_lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise LedgerError(f"the store could not read or write the ledger file: {exc}") from exc
