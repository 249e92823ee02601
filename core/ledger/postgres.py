"""`PostgresLedger`: the ledger (protocol.py) in a PostgreSQL database that several replicas share.

The same database holds the rest of the shared state, `PostgresStore` (postgres_store.py), reached as
`ledger.store`, like `SQLiteLedger`'s. Where the SQLite ledger keeps exact totals in its one owner's
memory, here no process owns anything: every check happens in the database, so that any number of
`iobot run` replicas hold the same limits together.

* Each limit is a counter row per UTC day (`person_day`, `model_day`: settled + reserved tokens, the
  model's also interrupted calls). `reserve` is one call of the `iobot_reserve` function (one round trip):
  it adds to the person's counter with `UPDATE ... WHERE used + tokens <= budget`, reading the budget
  (an override, else the default) in the same transaction, then to the model's counter the same way,
  and undoes the first when the second refuses. Row locks make concurrent reservations, from any
  replica, take turns on a counter: none can pass a limit, and a budget set by another process applies
  to the next reservation.
* An idempotency key is a row, inserted by the reservation that spends it: a platform's retry that
  reaches another replica finds it and is refused as a duplicate, so the event is run and charged once.
  A refused reservation deletes its key in the same transaction, leaving it free for a fallback model.
* Every transaction takes rows in one order (key, reservation, person counters sorted, model counters
  sorted, usage), so that replicas never deadlock.
* A replica that serves requests (`owner=True`) registers in `instances` and holds a session advisory
  lock on its row through a connection of its own for as long as it runs; the database drops the lock
  when the replica dies. Its open reservations are then those of calls cut off by a crash: the next
  replica to look (at open, and then at a reservation once a minute) charges them to their models at their
  estimate (`interrupted_tokens`), never to the people, and frees their keys so that redelivered events
  are answered. Reservations older than the TTL expire as with SQLite.
* The schema is created and migrated at open under a transaction-level advisory lock, so replicas that
  start together migrate once; `iobot_migrations` records the versions applied.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from ..settings import mask_passwords
from .latency import Histogram, bucket_of
from .postgres_store import MIGRATION as STORE_MIGRATION
from .postgres_store import REFUSALS_MIGRATION, PostgresStore
from .protocol import (
    USAGE_FIELDS,
    BudgetExceeded,
    DuplicateRequest,
    LedgerError,
    ModelQuotaExceeded,
    PersonTotal,
    Reservation,
    UsageRow,
    as_utc,
)
from .usage_table import UsageTable, table_of

log = logging.getLogger("iobot.ledger")

KEY_RETENTION = timedelta(days=2)  # an idempotency key is remembered at least this long
PRUNE_PER_KEY = 2  # expired keys deleted by each reservation with a key: more than it adds, so the table shrinks
MIGRATION_LOCK = 0x10B0_0001  # the pg_advisory_xact_lock key held while migrating
INSTANCE_LOCKS = 0x10B0  # first half of the (namespace, instance id) advisory lock a live replica holds
CONNECT_TIMEOUT = 10.0  # seconds to reach the server before giving up
PING_TIMEOUT = 2.0  # /healthz waits no longer than this for the database
RECOVERY_INTERVAL = 60.0  # seconds between two looks for replicas that died, made by each serving replica


def _utc_now() -> datetime:
    return datetime.now(UTC)


# Each migration takes the schema from version n to n + 1 (a row in iobot_migrations). Append, never edit.
LEDGER_MIGRATION = """
    CREATE TABLE usage (
        day date NOT NULL,
        person text NOT NULL,
        model text NOT NULL,
        prompt_tokens bigint NOT NULL DEFAULT 0,
        completion_tokens bigint NOT NULL DEFAULT 0,
        total_tokens bigint NOT NULL DEFAULT 0,
        requests bigint NOT NULL DEFAULT 0,
        estimated_tokens bigint NOT NULL DEFAULT 0,
        interrupted_tokens bigint NOT NULL DEFAULT 0,
        interrupted_requests bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (day, person, model)
    );
    -- settled + reserved tokens per day: the counters every reservation checks and adds to
    CREATE TABLE person_day (day date NOT NULL, person text NOT NULL, used bigint NOT NULL, PRIMARY KEY (day, person));
    CREATE TABLE model_day (day date NOT NULL, model text NOT NULL, used bigint NOT NULL, PRIMARY KEY (day, model));
    -- the replicas that serve requests; each holds the advisory lock (INSTANCE_LOCKS, id) while it lives
    CREATE TABLE instances (id serial PRIMARY KEY, pid integer NOT NULL, host text NOT NULL,
                            started_at double precision NOT NULL);
    CREATE TABLE reservations (
        id bigserial PRIMARY KEY,
        person text NOT NULL,
        model text NOT NULL,
        day date NOT NULL,
        tokens bigint NOT NULL,
        created_at double precision NOT NULL,
        idempotency_key text,
        instance integer NOT NULL
    );
    CREATE INDEX reservations_by_age ON reservations (created_at);
    CREATE INDEX reservations_by_instance ON reservations (instance);
    CREATE TABLE user_limits (person text PRIMARY KEY, tokens bigint NOT NULL);
    CREATE TABLE idempotency (key text PRIMARY KEY, created_at double precision NOT NULL);
    CREATE INDEX idempotency_by_age ON idempotency (created_at);

    -- Free reservations created at or before p_stale_before; those another transaction holds are left to it.
    CREATE FUNCTION iobot_expire(p_stale_before double precision) RETURNS integer LANGUAGE plpgsql AS $$
    DECLARE
        ids bigint[];
        r record;
    BEGIN
        SELECT COALESCE(array_agg(id ORDER BY id), '{}') INTO ids
        FROM (SELECT id FROM reservations WHERE created_at <= p_stale_before ORDER BY id FOR UPDATE SKIP LOCKED) stale;
        IF cardinality(ids) = 0 THEN
            RETURN 0;
        END IF;
        FOR r IN SELECT day, person, SUM(tokens) AS tokens FROM reservations WHERE id = ANY(ids)
                 GROUP BY day, person ORDER BY day, person LOOP
            UPDATE person_day SET used = used - r.tokens WHERE day = r.day AND person = r.person;
        END LOOP;
        FOR r IN SELECT day, model, SUM(tokens) AS tokens FROM reservations WHERE id = ANY(ids)
                 GROUP BY day, model ORDER BY day, model LOOP
            UPDATE model_day SET used = used - r.tokens WHERE day = r.day AND model = r.model;
        END LOOP;
        DELETE FROM reservations WHERE id = ANY(ids);
        RETURN cardinality(ids);
    END $$;

    -- Reserve, or say why not: outcome 'ok' (with the reservation's id), 'duplicate', 'budget' or 'model'
    -- (with what was used and the limit). One call, one transaction.
    CREATE FUNCTION iobot_reserve(
        p_person text, p_model text, p_day date, p_tokens bigint, p_model_limit bigint, p_key text,
        p_default_budget bigint, p_now double precision, p_stale_before double precision,
        p_key_cutoff double precision, p_prune integer, p_instance integer,
        OUT outcome text, OUT reservation_id bigint, OUT used bigint, OUT limit_tokens bigint
    ) LANGUAGE plpgsql AS $$
    BEGIN
        IF EXISTS (SELECT 1 FROM reservations WHERE created_at <= p_stale_before) THEN
            PERFORM iobot_expire(p_stale_before);
        END IF;
        IF p_key IS NOT NULL THEN
            -- Keys older than the cutoff are forgotten: a few deleted by each new one (the table stays about as
            -- large as the keys of KEY_RETENTION), and one that comes again taken as if new.
            DELETE FROM idempotency WHERE key IN (
                SELECT key FROM idempotency WHERE created_at < p_key_cutoff AND key <> p_key
                ORDER BY created_at LIMIT p_prune FOR UPDATE SKIP LOCKED);
            INSERT INTO idempotency AS spent (key, created_at) VALUES (p_key, p_now)
            ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at WHERE spent.created_at < p_key_cutoff;
            IF NOT FOUND THEN
                outcome := 'duplicate';
                RETURN;
            END IF;
        END IF;

        limit_tokens := COALESCE((SELECT tokens FROM user_limits WHERE person = p_person), p_default_budget);
        -- A first row is written only when it fits; an existing one is added to only when the sum fits.
        IF p_tokens <= limit_tokens THEN
            INSERT INTO person_day AS counter (day, person, used) VALUES (p_day, p_person, p_tokens)
            ON CONFLICT (day, person) DO UPDATE SET used = counter.used + excluded.used
            WHERE counter.used + excluded.used <= limit_tokens;
        END IF;
        IF p_tokens > limit_tokens OR NOT FOUND THEN
            outcome := 'budget';
            used := COALESCE((SELECT person_day.used FROM person_day WHERE day = p_day AND person = p_person), 0);
            DELETE FROM idempotency WHERE key = p_key;
            RETURN;
        END IF;

        IF p_model_limit IS NULL OR p_tokens <= p_model_limit THEN
            INSERT INTO model_day AS counter (day, model, used) VALUES (p_day, p_model, p_tokens)
            ON CONFLICT (day, model) DO UPDATE SET used = counter.used + excluded.used
            WHERE p_model_limit IS NULL OR counter.used + excluded.used <= p_model_limit;
        END IF;
        IF p_tokens > p_model_limit OR NOT FOUND THEN
            outcome := 'model';
            used := COALESCE((SELECT model_day.used FROM model_day WHERE day = p_day AND model = p_model), 0);
            limit_tokens := p_model_limit;
            UPDATE person_day SET used = person_day.used - p_tokens WHERE day = p_day AND person = p_person;
            DELETE FROM idempotency WHERE key = p_key;
            RETURN;
        END IF;

        INSERT INTO reservations (person, model, day, tokens, created_at, idempotency_key, instance)
        VALUES (p_person, p_model, p_day, p_tokens, p_now, p_key, p_instance)
        RETURNING id INTO reservation_id;
        outcome := 'ok';
    END $$;

    -- Charge what a call used (which may exceed its reservation) and free the reservation if still open.
    CREATE FUNCTION iobot_settle(
        p_id bigint, p_person text, p_model text, p_day date, p_prompt bigint, p_completion bigint, p_estimated boolean
    ) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        held bigint;
        total bigint := p_prompt + p_completion;
    BEGIN
        DELETE FROM reservations WHERE id = p_id RETURNING tokens INTO held;
        held := COALESCE(held, 0);  -- expired meanwhile: the call ran all the same, so it is charged in full
        INSERT INTO person_day AS counter (day, person, used) VALUES (p_day, p_person, total - held)
        ON CONFLICT (day, person) DO UPDATE SET used = counter.used + excluded.used;
        INSERT INTO model_day AS counter (day, model, used) VALUES (p_day, p_model, total - held)
        ON CONFLICT (day, model) DO UPDATE SET used = counter.used + excluded.used;
        INSERT INTO usage AS row (day, person, model, prompt_tokens, completion_tokens, total_tokens, requests,
                                  estimated_tokens)
        VALUES (p_day, p_person, p_model, p_prompt, p_completion, total, 1, CASE WHEN p_estimated THEN total ELSE 0 END)
        ON CONFLICT (day, person, model) DO UPDATE SET
            prompt_tokens = row.prompt_tokens + excluded.prompt_tokens,
            completion_tokens = row.completion_tokens + excluded.completion_tokens,
            total_tokens = row.total_tokens + excluded.total_tokens,
            requests = row.requests + 1,
            estimated_tokens = row.estimated_tokens + excluded.estimated_tokens;
    END $$;

    -- Free an open reservation (its call failed); nothing when it was settled, released or expired already.
    CREATE FUNCTION iobot_release(p_id bigint) RETURNS void LANGUAGE plpgsql AS $$
    DECLARE
        freed reservations;
    BEGIN
        DELETE FROM reservations WHERE id = p_id RETURNING * INTO freed;
        IF FOUND THEN
            UPDATE person_day SET used = used - freed.tokens WHERE day = freed.day AND person = freed.person;
            UPDATE model_day SET used = used - freed.tokens WHERE day = freed.day AND model = freed.model;
        END IF;
    END $$;

    -- The reservations of replicas that died (their advisory lock is free): charged to their models at their
    -- estimate as interrupted calls, not to the people, and their keys freed. Returns (calls, tokens).
    CREATE FUNCTION iobot_recover_interrupted(p_lock_namespace integer, OUT calls integer, OUT tokens bigint)
    LANGUAGE plpgsql AS $$
    DECLARE
        dead integer[];
        ids bigint[];
        r record;
    BEGIN
        SELECT COALESCE(array_agg(id ORDER BY id), '{}') INTO dead
        FROM instances WHERE pg_try_advisory_xact_lock(p_lock_namespace, id);
        calls := 0;
        tokens := 0;
        IF cardinality(dead) = 0 THEN
            RETURN;
        END IF;
        SELECT COALESCE(array_agg(id ORDER BY id), '{}') INTO ids
        FROM (SELECT id FROM reservations WHERE instance = ANY(dead) ORDER BY id FOR UPDATE SKIP LOCKED) cut;
        DELETE FROM idempotency WHERE key IN (SELECT idempotency_key FROM reservations WHERE id = ANY(ids));
        FOR r IN SELECT day, person, SUM(reservations.tokens) AS tokens FROM reservations WHERE id = ANY(ids)
                 GROUP BY day, person ORDER BY day, person LOOP
            UPDATE person_day SET used = used - r.tokens WHERE day = r.day AND person = r.person;
        END LOOP;
        FOR r IN SELECT day, person, model, SUM(reservations.tokens) AS tokens, COUNT(*) AS requests FROM reservations
                 WHERE id = ANY(ids) GROUP BY day, person, model ORDER BY day, person, model LOOP
            INSERT INTO usage AS row (day, person, model, interrupted_tokens, interrupted_requests)
            VALUES (r.day, r.person, r.model, r.tokens, r.requests)
            ON CONFLICT (day, person, model) DO UPDATE SET
                interrupted_tokens = row.interrupted_tokens + excluded.interrupted_tokens,
                interrupted_requests = row.interrupted_requests + excluded.interrupted_requests;
            calls := calls + r.requests;
            tokens := tokens + r.tokens;
        END LOOP;
        DELETE FROM reservations WHERE id = ANY(ids);
        DELETE FROM instances WHERE id = ANY(dead);
    END $$;
"""
MIGRATIONS: tuple[str, ...] = (
    LEDGER_MIGRATION,
    STORE_MIGRATION,  # claims, followed threads, request rates and settings: the `Store` in the same database
    """
    -- answers per day, model and latency bucket (latency.py): the dashboard's p50 and p95, from a few rows a day
    CREATE TABLE answer_latency (day date NOT NULL, model text NOT NULL, bound_ms integer NOT NULL,
                                 answers bigint NOT NULL, PRIMARY KEY (day, model, bound_ms));
    """
    + REFUSALS_MIGRATION,
    """
    -- Settle and count the answer's latency bucket (NULL: none) in one call, so one round trip.
    CREATE FUNCTION iobot_settle_answer(
        p_id bigint, p_person text, p_model text, p_day date, p_prompt bigint, p_completion bigint, p_estimated boolean,
        p_bound_ms integer
    ) RETURNS void LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM iobot_settle(p_id, p_person, p_model, p_day, p_prompt, p_completion, p_estimated);
        IF p_bound_ms IS NOT NULL THEN
            INSERT INTO answer_latency AS counted (day, model, bound_ms, answers) VALUES (p_day, p_model, p_bound_ms, 1)
            ON CONFLICT (day, model, bound_ms) DO UPDATE SET answers = counted.answers + 1;
        END IF;
    END $$;
    """,
)

MIGRATIONS_TABLE = "CREATE TABLE IF NOT EXISTS iobot_migrations (version integer PRIMARY KEY, applied_at timestamptz NOT NULL)"
SCHEMA_EXISTS = "SELECT to_regclass('iobot_migrations') IS NOT NULL"

RESERVE = (
    "SELECT outcome, reservation_id, used, limit_tokens FROM iobot_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
)
SETTLE = "SELECT iobot_settle_answer($1, $2, $3, $4, $5, $6, $7, $8)"
# The dashboard's: a day's biggest users, with their budgets; a day's latency buckets.
TOP_USERS = """
    SELECT top.person, top.tokens, COALESCE(user_limits.tokens, $1) FROM (
        SELECT person, SUM(total_tokens)::bigint AS tokens FROM usage WHERE day = $2
        GROUP BY person ORDER BY tokens DESC, person LIMIT $3
    ) AS top LEFT JOIN user_limits USING (person) ORDER BY top.tokens DESC, top.person
"""
ANSWER_LATENCIES = "SELECT model, bound_ms, answers FROM answer_latency WHERE day = $1 ORDER BY model, bound_ms"
RELEASE = "SELECT iobot_release($1)"

JSON_NAMES = {"person": "user"}  # the one column named otherwise than its key in `iobot usage --json`
USAGE_KEYS = tuple("person" if key == "user" else key for key in USAGE_FIELDS)  # UsageRow's fields, as columns
OF_DAY = " WHERE day = $2 ORDER BY person, model"
OF_DAY_AND_USER = " WHERE day = $2 AND person = $3 ORDER BY model"
USAGE_COLUMNS = ", ".join(USAGE_KEYS)
WITH_BUDGET = "COALESCE(user_limits.tokens, $1)"
USAGE_WITH_BUDGETS = (
    f"SELECT day::text, {', '.join(USAGE_KEYS[1:])}, {WITH_BUDGET} FROM usage LEFT JOIN user_limits USING (person)"
)
JSON_PAIRS = ", ".join(f"'{JSON_NAMES.get(key, key)}', {key}" for key in USAGE_KEYS)
USAGE_JSON = (
    f"SELECT json_build_object({JSON_PAIRS}, 'user_limit', {WITH_BUDGET})::text FROM usage LEFT JOIN user_limits USING (person)"
)


class PostgresLedger:
    """The ledger in a PostgreSQL database shared by replicas (see the module docstring for how it works)."""

    kind = "postgresql"

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        url: str,
        user_daily_tokens: int,
        reservation_ttl: float,
        clock: Callable[[], datetime],
        owner: bool,
    ) -> None:
        self._pool = pool
        self._connect_url = url  # with its password: a lost liveness connection is opened again
        self._url = mask_passwords(url)  # for messages
        self._default_budget = user_daily_tokens
        self._ttl = reservation_ttl
        self._clock = clock
        self._owner = owner
        self._instance: int | None = None
        self._liveness: asyncpg.Connection | None = None  # holds this replica's advisory lock while it runs
        self._next_recovery = 0.0  # time.monotonic() of the next look for dead replicas
        self._closed = False
        self.store = PostgresStore(pool, clock=clock, check_open=self._check_open)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        user_daily_tokens: int,
        reservation_ttl: float = 900.0,
        clock: Callable[[], datetime] = _utc_now,
        owner: bool = True,
        create: bool = True,
        pool_size: int = 10,
    ) -> PostgresLedger:
        """Connect to the database at `url` (postgresql:// or postgres://), creating or migrating the schema.

        `owner=True` is for a replica that serves requests: it registers itself and charges the calls that
        dead replicas left open. `owner=False` is for commands run beside the service (reads and budgets).
        `create=False` raises `FileNotFoundError` when the database has no iobot schema, and creates nothing.
        """
        if user_daily_tokens < 0 or reservation_ttl < 0:
            raise ValueError("user_daily_tokens and reservation_ttl must not be negative")
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=pool_size, timeout=CONNECT_TIMEOUT)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError, ValueError) as exc:
            raise LedgerError(f"cannot connect to the PostgreSQL database {mask_passwords(url)}: {_describe(exc)}") from None
        ledger = cls(
            pool, url=url, user_daily_tokens=user_daily_tokens, reservation_ttl=reservation_ttl, clock=clock, owner=owner
        )
        try:
            async with pool.acquire() as connection:
                if not create and not await connection.fetchval(SCHEMA_EXISTS):
                    raise FileNotFoundError(f"there is no iobot ledger in the PostgreSQL database {ledger._url}")
                await _migrate(connection, ledger._url)
            if owner:
                await ledger._register()
                await ledger._recover_interrupted()
            return ledger
        except BaseException as exc:
            await ledger._close_connections()
            if isinstance(exc, (asyncpg.PostgresError, asyncpg.InterfaceError, OSError)) and not isinstance(
                exc, FileNotFoundError
            ):
                raise LedgerError(f"cannot open the ledger in {ledger._url}: {_describe(exc)}") from None
            raise

    async def _register(self) -> None:
        """Sign in as a live replica: a row in `instances` and its advisory lock, held until close or death."""
        self._liveness = await asyncpg.connect(self._connect_url, timeout=CONNECT_TIMEOUT)
        # The lock is taken before the row is committed: another replica never sees the row unlocked,
        # which it would take for a dead replica's, deleting the row and orphaning this one's calls.
        async with self._liveness.transaction():
            self._instance = await self._liveness.fetchval(
                "INSERT INTO instances (pid, host, started_at) VALUES ($1, $2, $3) RETURNING id",
                os.getpid(),
                socket.gethostname(),
                self._now().timestamp(),
            )
            await self._liveness.execute("SELECT pg_advisory_lock($1, $2)", INSTANCE_LOCKS, self._instance)
        await self.store.listen(self._liveness)

    async def _recover_interrupted(self) -> None:
        """Charge the open reservations of dead replicas as interrupted calls (a transaction of its own).

        A replica whose liveness connection was lost (the server restarted, the network cut it) looks dead
        to the others: it signs in again first, and its own reservations of before are charged as interrupted
        with the rest (a call among them that then settles is charged to its model twice, never to its person).
        """
        self._next_recovery = time.monotonic() + RECOVERY_INTERVAL
        if self._liveness is not None and self._liveness.is_closed():
            lost = self._instance
            try:
                await self._register()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                raise LedgerError(f"cannot reach the database {self._url}: {_describe(exc)}") from None
            log.warning(
                "the connection that marks this replica alive was lost: signed in again (%s, was %s)", self._instance, lost
            )
        row = await self._fetchrow("SELECT calls, tokens FROM iobot_recover_interrupted($1)", INSTANCE_LOCKS)
        if row["calls"]:
            log.warning(
                "%d call(s) were cut off by the end of a replica: charged to their models at their estimate "
                "(%d tokens), not to the people, whose events will be answered when redelivered",
                row["calls"],
                row["tokens"],
            )

    # --- reserve, settle, release ---

    async def reserve(
        self, *, user: str, model: str, tokens: int, model_limit: int | None, idempotency_key: str | None = None
    ) -> Reservation:
        self._check_owner()
        if tokens < 0:
            raise ValueError("tokens must not be negative")
        if time.monotonic() >= self._next_recovery:
            await self._recover_interrupted()
        now = self._now()
        day = now.date()
        moment = now.timestamp()
        row = await self._fetchrow(
            RESERVE,
            user,
            model,
            day,
            tokens,
            model_limit,
            idempotency_key,
            self._default_budget,
            moment,
            moment - self._ttl,
            (now - KEY_RETENTION).timestamp(),
            PRUNE_PER_KEY,
            self._instance,
        )
        outcome = row["outcome"]
        if outcome == "duplicate":
            raise DuplicateRequest(idempotency_key or "")
        if outcome == "budget":
            raise BudgetExceeded(user=user, used=row["used"], limit=row["limit_tokens"], needed=tokens, now=now)
        if outcome == "model":
            raise ModelQuotaExceeded(model=model, used=row["used"], limit=row["limit_tokens"], needed=tokens, now=now)
        return Reservation(row["reservation_id"], user, model, day, tokens)

    async def settle(
        self,
        reservation: Reservation,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        estimated: bool,
        seconds: float | None = None,
    ) -> None:
        """Charge the real use, and count the answer's time; a reservation that has expired meanwhile is
        still charged (the call ran)."""
        self._check_owner()
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must not be negative")
        await self._execute(
            SETTLE,
            reservation.id,
            reservation.user,
            reservation.model,
            reservation.day,
            prompt_tokens,
            completion_tokens,
            estimated,
            None if seconds is None else bucket_of(seconds),
        )

    async def release(self, reservation: Reservation) -> None:
        self._check_owner()
        await self._execute(RELEASE, reservation.id)

    async def reservations_in_flight(self) -> int:
        """This replica's open reservations (each replica reports its own)."""
        self._check_owner()
        return await self._fetchval("SELECT COUNT(*) FROM reservations WHERE instance = $1", self._instance)

    async def expire_stale(self) -> int:
        """Free reservations older than the TTL, and charge those of dead replicas as interrupted calls."""
        self._check_owner()
        await self._recover_interrupted()
        expired = await self._fetchval("SELECT iobot_expire($1)", self._now().timestamp() - self._ttl)
        if expired:
            log.warning("expired %d reservation(s) older than %.0f s", expired, self._ttl)
        return expired

    # --- queries and limits: any process ---

    async def used_today(self, *, model: str | None = None, user: str | None = None) -> int:
        today = self._now().date()
        if user is not None and model is not None:
            return await self._fetchval(
                "SELECT (SELECT COALESCE(SUM(total_tokens), 0)::bigint FROM usage WHERE day = $1 AND person = $2 AND model = $3)"
                " + (SELECT COALESCE(SUM(tokens), 0)::bigint FROM reservations WHERE day = $1 AND person = $2 AND model = $3)",
                today,
                user,
                model,
            )
        if user is not None:
            return await self._fetchval(
                "SELECT COALESCE(SUM(used), 0)::bigint FROM person_day WHERE day = $1 AND person = $2", today, user
            )
        if model is not None:
            return await self._fetchval(
                "SELECT COALESCE(SUM(used), 0)::bigint FROM model_day WHERE day = $1 AND model = $2", today, model
            )
        return await self._fetchval("SELECT COALESCE(SUM(used), 0)::bigint FROM model_day WHERE day = $1", today)

    async def usage(self, *, day: date | None = None, user: str | None = None) -> list[UsageRow]:
        day = day or self._now().date()
        select = f"SELECT {USAGE_COLUMNS} FROM usage"
        if user is None:
            rows = await self._fetch(select + " WHERE day = $1 ORDER BY person, model", day)
        else:
            rows = await self._fetch(select + " WHERE day = $1 AND person = $2 ORDER BY model", day, user)
        return [UsageRow(*row) for row in rows]

    async def usage_with_budgets(self, *, day: date | None = None, user: str | None = None) -> list[tuple[Any, ...]]:
        """`usage()` as plain tuples (UsageRow's fields, the day as text), each followed by the person's daily budget."""
        return [tuple(row) for row in await self._read_usage(USAGE_WITH_BUDGETS, day, user)]

    async def usage_json(self, *, day: date | None = None, user: str | None = None) -> list[str]:
        """The rows of `iobot usage --json`: each `UsageRow.as_json()` plus "user_limit", written by PostgreSQL."""
        return [row[0] for row in await self._read_usage(USAGE_JSON, day, user)]

    async def usage_table(self, *, day: date | None = None, user: str | None = None) -> UsageTable:
        """Formatted in Python: asyncpg hands the rows over cheaply, unlike SQLite's module."""
        return table_of(await self._read_usage(USAGE_WITH_BUDGETS, day, user))

    async def _read_usage(self, select: str, day: date | None, user: str | None) -> list[Any]:
        day = day or self._now().date()
        if user is None:
            return await self._fetch(select + OF_DAY, self._default_budget, day)
        return await self._fetch(select + OF_DAY_AND_USER, self._default_budget, day, user)

    async def model_totals(self, day: date | None = None) -> dict[str, int]:
        rows = await self._fetch(
            "SELECT model, SUM(tokens)::bigint FROM ("
            " SELECT model, total_tokens + interrupted_tokens AS tokens FROM usage WHERE day = $1"
            " UNION ALL SELECT model, tokens FROM reservations WHERE day = $1"
            ") spent GROUP BY model ORDER BY model",
            day or self._now().date(),
        )
        return dict(rows)

    async def top_users(self, *, day: date | None = None, count: int = 10) -> list[PersonTotal]:
        rows = await self._fetch(TOP_USERS, self._default_budget, day or self._now().date(), count)
        return [PersonTotal(*row) for row in rows]

    async def answer_latencies(self, day: date | None = None) -> dict[str, Histogram]:
        histograms: dict[str, Histogram] = {}
        for model, bound_ms, answers in await self._fetch(ANSWER_LATENCIES, day or self._now().date()):
            histograms.setdefault(model, {})[bound_ms] = answers
        return histograms

    async def set_user_limit(self, user: str, tokens: int | None) -> None:
        if tokens is not None and tokens < 0:
            raise ValueError("a daily budget must not be negative")
        if tokens is None:
            await self._execute("DELETE FROM user_limits WHERE person = $1", user)
        else:
            await self._execute(
                "INSERT INTO user_limits (person, tokens) VALUES ($1, $2) ON CONFLICT (person) DO UPDATE SET tokens = excluded.tokens",
                user,
                tokens,
            )

    async def user_limit(self, user: str) -> int:
        tokens = await self._fetchval("SELECT tokens FROM user_limits WHERE person = $1", user)
        return self._default_budget if tokens is None else tokens

    async def user_limits(self) -> dict[str, int]:
        return dict(await self._fetch("SELECT person, tokens FROM user_limits ORDER BY person"))

    async def ping(self) -> None:
        """Raise `LedgerError` unless the database answers within PING_TIMEOUT (for /healthz)."""
        self._check_open()
        try:
            async with self._pool.acquire(timeout=PING_TIMEOUT) as connection:
                await connection.fetchval("SELECT 1", timeout=PING_TIMEOUT)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise LedgerError(f"the database does not answer: {_describe(exc)}") from None

    async def close(self) -> None:
        """Close the connections; a reservation still open is charged as interrupted by the next replica to look."""
        if self._closed:
            return
        self._closed = True
        await self._close_connections()

    async def _close_connections(self) -> None:
        if self._liveness is not None:
            await self._liveness.close()
        await self._pool.close()

    # --- one statement, its errors as LedgerError ---

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        """The rows of one statement. Shielded: a caller cancelled meanwhile leaves the statement to finish, as
        the SQLite ledger leaves its write (a reservation nobody will settle then expires after the TTL)."""
        self._check_open()
        try:
            return await asyncio.shield(self._pool.fetch(sql, *args))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise LedgerError(f"the ledger could not read or write the database: {_describe(exc)}") from None

    async def _fetchrow(self, sql: str, *args: Any) -> Any:
        """The one row of a statement that returns exactly one (a function call, an aggregate)."""
        [row] = await self._fetch(sql, *args)
        return row

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        """The first value of the first row, None when there is none."""
        rows = await self._fetch(sql, *args)
        return rows[0][0] if rows else None

    async def _execute(self, sql: str, *args: Any) -> None:
        await self._fetch(sql, *args)

    def _now(self) -> datetime:
        return as_utc(self._clock())

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError("the ledger is closed")

    def _check_owner(self) -> None:
        self._check_open()
        if not self._owner:
            raise LedgerError(
                f"this process opened the ledger in {self._url} to read it and set budgets; only the processes "
                "serving requests charge it"
            )


def _describe(exc: BaseException) -> str:
    """An error from the driver or the network, fit for a message: its type and text, any password masked."""
    return mask_passwords(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)


async def _migrate(connection: asyncpg.Connection, url: str) -> None:
    """Bring the schema to the latest version in one transaction, under an advisory lock: replicas starting
    together take turns, and the later ones find nothing left to do."""
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
        await connection.execute(MIGRATIONS_TABLE)
        version = await connection.fetchval("SELECT COALESCE(MAX(version), 0) FROM iobot_migrations")
        if version > len(MIGRATIONS):
            raise LedgerError(f"the ledger in {url} has schema version {version}, newer than this iobot knows")
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            await connection.execute(script)
            await connection.execute("INSERT INTO iobot_migrations (version, applied_at) VALUES ($1, now())", number)
            log.info("ledger in %s migrated to schema version %d", url, number)
