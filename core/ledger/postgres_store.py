"""`PostgresStore`: the `Store` in the ledger's PostgreSQL database, shared by every replica.

`PostgresLedger.open` builds it on the ledger's connection pool and hands it out as `ledger.store`.
Each operation is one statement (or one function call): one round trip, atomic whatever other replicas do.

* Claims, followed threads and settings are rows, as in the SQLite store: a claim is one upsert that
  writes only when the key is new or its claim has expired, so of any number of callers on any number
  of replicas exactly one sees a row written. Each claim or follow also deletes a few expired rows.
* Request rates are rows too, since a person's requests may reach any replica: `iobot_take_request`
  runs the generic cell rate algorithm of core/ratelimit.py on the person's one number (when their
  allowance is whole again) under the row's lock, on the wall clock all replicas share.
* A replica that serves requests remembers the settings it read (every chat request reads two),
  while it hears of every change: each write announces itself (`NOTIFY iobot_settings`) in its own
  transaction, and the replica listens on the connection that marks it alive. Another replica's
  change reaches it a few milliseconds after the write; a read that a change overtook is not
  remembered; when that connection drops, the replica forgets them all and reads the table again
  until it listens anew.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import asyncpg

from ..ratelimit import TOLERANCE, WINDOW_SECONDS
from ..settings import mask_passwords
from .protocol import LedgerError
from .store import CLAIM_SECONDS

PRUNE_PER_WRITE = 2  # expired rows deleted per claim, follow or request: more than each adds, so the tables shrink
THREAD_RETENTION = timedelta(days=90)  # a thread nobody followed for this long is forgotten

# The schema, appended to the ledger's migrations (postgres.py): one migration, never edited.
MIGRATION = """
    -- keys a replica took first (events, deliveries), each until it may be taken again (a claim's own key is
    -- never among the expired rows it deletes: the upsert takes it over instead)
    CREATE TABLE claims (key text PRIMARY KEY, expires_at double precision NOT NULL);
    CREATE INDEX claims_by_expiry ON claims (expires_at);
    CREATE TABLE followed_threads (thread text PRIMARY KEY, followed_at double precision NOT NULL);
    CREATE INDEX followed_threads_by_age ON followed_threads (followed_at);
    CREATE TABLE settings (scope text NOT NULL, name text NOT NULL, value text NOT NULL, PRIMARY KEY (scope, name));
    -- per person and rate: when their allowance is whole again (core/ratelimit.py), on the wall clock
    CREATE TABLE request_rates (person text NOT NULL, per_minute integer NOT NULL, whole_at double precision NOT NULL,
                                PRIMARY KEY (person, per_minute));
    CREATE INDEX request_rates_by_time ON request_rates (whole_at);

    -- 0 if the person may make a request now (and counts it), else the seconds until they may (not counted).
    CREATE FUNCTION iobot_take_request(p_person text, p_per_minute integer, p_now double precision,
                                       p_window double precision, p_tolerance double precision, p_prune integer)
    RETURNS double precision LANGUAGE plpgsql AS $$
    DECLARE
        slot double precision := p_window / p_per_minute;
        new_whole_at double precision;
        wait double precision;
    BEGIN
        DELETE FROM request_rates WHERE (person, per_minute) IN (
            SELECT person, per_minute FROM request_rates WHERE request_rates.whole_at <= p_now
            ORDER BY request_rates.whole_at LIMIT p_prune FOR UPDATE SKIP LOCKED);
        INSERT INTO request_rates (person, per_minute, whole_at) VALUES (p_person, p_per_minute, p_now)
        ON CONFLICT DO NOTHING;
        SELECT GREATEST(rate.whole_at, p_now) + slot INTO new_whole_at
        FROM request_rates rate WHERE person = p_person AND per_minute = p_per_minute FOR UPDATE;
        wait := new_whole_at - p_now - p_window;
        IF wait > p_tolerance THEN
            RETURN wait;
        END IF;
        UPDATE request_rates SET whole_at = new_whole_at WHERE person = p_person AND per_minute = p_per_minute;
        RETURN 0.0;
    END $$;
"""

# A later migration of the ledger's database: requests refused per day and reason, for the dashboard.
REFUSALS_MIGRATION = """
    CREATE TABLE refusals (day date NOT NULL, reason text NOT NULL, requests bigint NOT NULL, PRIMARY KEY (day, reason));
"""

CLAIM = """
    WITH forgotten AS (
        DELETE FROM claims WHERE key IN (
            SELECT key FROM claims WHERE expires_at <= $3 AND key <> $1 ORDER BY expires_at LIMIT $4 FOR UPDATE SKIP LOCKED)
    )
    INSERT INTO claims AS taken (key, expires_at) VALUES ($1, $2)
    ON CONFLICT (key) DO UPDATE SET expires_at = excluded.expires_at WHERE taken.expires_at <= $3
    RETURNING 1
"""
FOLLOW = """
    WITH forgotten AS (
        DELETE FROM followed_threads WHERE thread IN (
            SELECT thread FROM followed_threads WHERE followed_at <= $3 AND thread <> $1 ORDER BY followed_at LIMIT $4 FOR UPDATE SKIP LOCKED)
    )
    INSERT INTO followed_threads (thread, followed_at) VALUES ($1, $2)
    ON CONFLICT (thread) DO UPDATE SET followed_at = excluded.followed_at
"""
FOLLOWS = "SELECT 1 FROM followed_threads WHERE thread = $1 AND followed_at > $2"
TAKE_REQUEST = "SELECT iobot_take_request($1, $2, $3, $4, $5, $6)"
SETTING = "SELECT value FROM settings WHERE scope = $1 AND name = $2"
SETTINGS_CHANNEL = "iobot_settings"  # each write's NOTIFY: its scope and name, SEPARATOR between
SEPARATOR = "\x1f"
SETTINGS_CACHED = 20_000  # settings (set or not) a serving replica remembers, the least recently read dropped first
SET_SETTING = f"""
    WITH written AS (
        INSERT INTO settings (scope, name, value) VALUES ($1, $2, $3)
        ON CONFLICT (scope, name) DO UPDATE SET value = excluded.value RETURNING 1
    )
    SELECT pg_notify('{SETTINGS_CHANNEL}', $1 || chr(31) || $2)
"""
REMOVE_SETTING = f"""
    WITH removed AS (DELETE FROM settings WHERE scope = $1 AND name = $2 RETURNING 1)
    SELECT pg_notify('{SETTINGS_CHANNEL}', $1 || chr(31) || $2)
"""
COUNT_REFUSAL = (
    "INSERT INTO refusals AS counted (day, reason, requests) VALUES ($1, $2, 1)"
    " ON CONFLICT (day, reason) DO UPDATE SET requests = counted.requests + 1"
)
REFUSALS = "SELECT reason, requests FROM refusals WHERE day = $1 ORDER BY reason"


class PostgresStore:
    """The `Store` on the ledger's pool; build it through `PostgresLedger.open` (see the module docstring)."""

    def __init__(self, pool: asyncpg.Pool, *, clock: Callable[[], datetime], check_open: Callable[[], None]) -> None:
        self._pool = pool
        self._clock = clock  # wall time: shared by the replicas, and claims and threads outlive them
        self._check_open = check_open
        self._settings: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self._listening = False
        self._changes = 0  # changes heard of: a read during which one was heard is not remembered

    async def listen(self, connection: asyncpg.Connection) -> None:
        """Remember settings from now on, hearing of every change on `connection` until it closes."""
        await connection.add_listener(SETTINGS_CHANNEL, self._changed)
        connection.add_termination_listener(self._deaf)
        self._listening = True

    def _changed(self, connection: object, pid: int, channel: str, payload: str) -> None:
        scope, _, name = payload.partition(SEPARATOR)
        self._changes += 1
        self._settings.pop((scope, name), None)

    def _deaf(self, connection: object) -> None:
        self._listening = False
        self._changes += 1
        self._settings.clear()

    async def claim(self, key: str, *, ttl: float = CLAIM_SECONDS) -> bool:
        now = self._clock().timestamp()
        return await self._fetchval(CLAIM, key, now + ttl, now, PRUNE_PER_WRITE) is not None

    async def follow_thread(self, thread: str) -> None:
        now = self._clock()
        await self._fetchval(FOLLOW, thread, now.timestamp(), (now - THREAD_RETENTION).timestamp(), PRUNE_PER_WRITE)

    async def follows_thread(self, thread: str) -> bool:
        cutoff = (self._clock() - THREAD_RETENTION).timestamp()
        return await self._fetchval(FOLLOWS, thread, cutoff) is not None

    async def take_request(self, person: str, per_minute: int) -> float:
        now = self._clock().timestamp()
        return await self._fetchval(TAKE_REQUEST, person, per_minute, now, WINDOW_SECONDS, TOLERANCE, PRUNE_PER_WRITE)

    async def setting(self, scope: str, name: str) -> str | None:
        self._check_open()
        if (scope, name) in self._settings:
            self._settings.move_to_end((scope, name))
            return self._settings[scope, name]
        changes = self._changes
        value = await self._fetchval(SETTING, scope, name)
        if self._listening and changes == self._changes:
            self._settings[scope, name] = value
            if len(self._settings) > SETTINGS_CACHED:
                self._settings.popitem(last=False)
        return value

    async def set_setting(self, scope: str, name: str, value: str | None) -> None:
        self._changes += 1  # a read of it under way must not be remembered: it may have read the old value
        self._settings.pop((scope, name), None)
        if value is None:
            await self._fetchval(REMOVE_SETTING, scope, name)
        else:
            await self._fetchval(SET_SETTING, scope, name, value)

    async def record_refusal(self, day: date, reason: str) -> None:
        await self._fetchval(COUNT_REFUSAL, day, reason)

    async def refusals(self, day: date) -> dict[str, int]:
        self._check_open()
        try:
            rows = await self._pool.fetch(REFUSALS, day)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerError(mask_passwords(f"the store could not read the database: {type(exc).__name__}: {exc}")) from None
        return {reason: requests for reason, requests in rows}

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        """One statement's first value (None without a row); a database error becomes a `LedgerError`."""
        self._check_open()
        try:
            return await self._pool.fetchval(sql, *args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerError(
                mask_passwords(f"the store could not read or write the database: {type(exc).__name__}: {exc}")
            ) from None
