"""`SQLiteLedger`: the ledger (protocol.py) in one SQLite file, owned by one process.

The same file and the same open hold the rest of the shared state, `SQLiteStore` (sqlite_store.py),
reached as `ledger.store`: one file to back up, one owner lock, one close. Several replicas need a
shared implementation instead (PostgreSQL, checking the limits in SQL).

How `SQLiteLedger` stays exact and fast:

* One process owns a ledger file. It holds an advisory `flock` on the database file itself for its
  lifetime: the lock belongs to the file (its inode), so a second service is refused whatever name,
  symbolic link or rename reached the file, and the kernel drops the lock when the owner dies.
  Whoever takes the lock therefore knows that every open reservation in the file was left by a dead
  process. A file with several hard links is refused outright, by every process: SQLite keeps its
  write-ahead log beside the name it was opened by, so two names mean two logs and lost rows. Other
  processes (the `iobot usage`, `limits` and `models` commands) open the file with `owner=False`:
  they read it and set per-person limits, never reserve.
* A reservation left open by a dead owner may have paid for an API call whose answer nobody saw. The
  next owner charges it to the model's daily total at its estimate (`interrupted_tokens`, shown by
  `iobot usage`), never to the person, and frees its idempotency key so that the platform's
  redelivery of the event is answered.
* The owner keeps the running totals (settled + reserved, per model and per person, per day) in
  memory, loaded from the file at open. `reserve` checks and adds to them with no `await` in
  between, so no interleaving of tasks can let two reservations pass one limit. Only then does it
  write; reserve, settle and release return only once their write is committed, and a write that
  fails is undone in memory.
* Writes are group-committed: every write queued while the previous transaction was being committed
  goes into the next one, and a transaction is one call (begin, look up the keys, write, commit), not
  a round trip per statement. A small one runs on the event loop, a large one on the ledger's writer
  thread; the write-ahead log is checkpointed on the writer thread, so the loop never waits for the
  disk. Reads, limits and the store go through aiosqlite; the threads and the loop use the one SQLite
  connection, taking turns under `_db_lock`.
  `benchmarks/ledger.py` compares this with plain sqlite3 running the same statements in the same
  batches. A failed transaction fails every caller in it, and each undoes its change to the totals.
* Idempotency keys stay in the file, never all in memory: the owner remembers the keys of the last
  few minutes (a platform's retries), and each transaction looks up the others in one query before
  it writes. Keys older than KEY_RETENTION are deleted a small chunk at a time, off the hot path.
* A per-person limit set by any process applies to the next reservation after `set_user_limit`
  returns: `set_user_limit` bumps a change counter in the same transaction, and `reserve` reads that
  counter (and, when it moved, the overrides) before its checks, through a second, synchronous
  connection: one indexed read of a few microseconds, with no `await` to let the check go stale.
  A setting written by another process bumps the same counter, so that the store's memory of
  settings (sqlite_store.py) is dropped before its next read.
* WAL with `synchronous=NORMAL`: a commit survives the process being killed; a power cut may lose
  the last commits (under-counting a few requests) but never corrupts the file.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import socket
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, TypeVar

import aiosqlite

from .latency import Histogram, bucket_of
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
from .sqlite_store import BUMP_VERSION, REFUSALS_MIGRATION, SQLiteStore
from .sqlite_store import MIGRATION as STORE_MIGRATION
from .usage_table import COLUMNS, UsageTable, header, widths

log = logging.getLogger("iobot.ledger")

T = TypeVar("T")

BUSY_TIMEOUT_MS = 5000  # how long a write waits for another process's write lock (on the writer thread)
PRAGMAS = ("PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL", f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
KEY_RETENTION = timedelta(days=2)  # an idempotency key is remembered at least this long
RECENT_KEYS_SECONDS = 600.0  # the owner keeps this much of its own keys in memory; older ones are looked up
PRUNE_CHUNK = 1_000  # expired keys deleted per transaction, so that no reservation waits long behind it
PRUNE_PAUSE = 0.01  # seconds between two chunks, in which the reservations' transactions have the file
INLINE_ROWS = 256  # a batch this small is committed on the event loop (about 2 ms at most), sparing two thread hops
CHECKPOINT_COMMITS = 500  # transactions between two checkpoints of the write-ahead log, run on a thread


def _utc_now() -> datetime:
    return datetime.now(UTC)


# Each migration takes the schema from version n to n + 1 (PRAGMA user_version). Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE usage (
        day TEXT NOT NULL,
        user TEXT NOT NULL,
        model TEXT NOT NULL,
        prompt_tokens INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        total_tokens INTEGER NOT NULL,
        requests INTEGER NOT NULL,
        estimated_tokens INTEGER NOT NULL,
        PRIMARY KEY (day, user, model)
    ) WITHOUT ROWID;
    -- per-model totals of a day (iobot models, used_today(model=...)); the primary key serves the rest
    CREATE INDEX usage_by_model ON usage (day, model, total_tokens);
    -- open reservations only: a few dozen rows, so scans beat indexes that every reserve would update
    CREATE TABLE reservations (
        id INTEGER PRIMARY KEY,
        user TEXT NOT NULL,
        model TEXT NOT NULL,
        day TEXT NOT NULL,
        tokens INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE user_limits (user TEXT PRIMARY KEY, tokens INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE idempotency (key TEXT PRIMARY KEY, created_at REAL NOT NULL) WITHOUT ROWID;
    CREATE INDEX idempotency_by_age ON idempotency (created_at);
    """,
    """
    ALTER TABLE usage ADD COLUMN interrupted_tokens INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE usage ADD COLUMN interrupted_requests INTEGER NOT NULL DEFAULT 0;
    DROP INDEX usage_by_model;
    CREATE INDEX usage_by_model ON usage (day, model, total_tokens, interrupted_tokens);
    -- the key a reservation holds, freed if a crash cuts its call off
    ALTER TABLE reservations ADD COLUMN idempotency_key TEXT;
    -- bumped with every change to user_limits, so that the owner sees a change at its next reservation
    CREATE TABLE limits_version (id INTEGER PRIMARY KEY CHECK (id = 1), version INTEGER NOT NULL);
    INSERT INTO limits_version (id, version) VALUES (1, 0);
    -- the process that owns the file, for the message that refuses a second one
    CREATE TABLE owner (id INTEGER PRIMARY KEY CHECK (id = 1), pid INTEGER NOT NULL, host TEXT NOT NULL,
                        started_at REAL NOT NULL);
    """,
    STORE_MIGRATION,  # claims, followed threads and settings: the `Store` in the same file
    """
    -- each model's spend per day (settled and interrupted tokens), written in the transactions that write usage:
    -- what model_totals, used_today, /metrics and the dashboard read, a few rows a day however many people
    CREATE TABLE model_spend (day TEXT NOT NULL, model TEXT NOT NULL, tokens INTEGER NOT NULL,
                              PRIMARY KEY (day, model)) WITHOUT ROWID;
    INSERT INTO model_spend (day, model, tokens)
        SELECT day, model, SUM(total_tokens + interrupted_tokens) FROM usage GROUP BY day, model;
    -- answers per day, model and latency bucket (latency.py): the dashboard's p50 and p95, from a few rows a day
    CREATE TABLE answer_latency (
        day TEXT NOT NULL,
        model TEXT NOT NULL,
        bound_ms INTEGER NOT NULL,
        answers INTEGER NOT NULL,
        PRIMARY KEY (day, model, bound_ms)
    ) WITHOUT ROWID;
    """
    + REFUSALS_MIGRATION,
)

# The writes reserve, settle and release queue. A batch runs them in this order, which is safe because
# the only ones that do not commute are a reservation's insert and its delete, queued in that order.
INSERT_RESERVATION = (
    "INSERT INTO reservations (id, user, model, day, tokens, created_at, idempotency_key) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
REMEMBER_KEY = (
    "INSERT INTO idempotency (key, created_at) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET created_at = excluded.created_at"
)
ADD_USAGE = """
    INSERT INTO usage (day, user, model, prompt_tokens, completion_tokens, total_tokens, requests, estimated_tokens)
    VALUES (?, ?, ?, ?, ?, ?, 1, ?)
    ON CONFLICT (day, user, model) DO UPDATE SET
        prompt_tokens = prompt_tokens + excluded.prompt_tokens,
        completion_tokens = completion_tokens + excluded.completion_tokens,
        total_tokens = total_tokens + excluded.total_tokens,
        requests = requests + 1,
        estimated_tokens = estimated_tokens + excluded.estimated_tokens
"""
DELETE_RESERVATION = "DELETE FROM reservations WHERE id = ?"
ADD_MODEL_SPEND = (
    "INSERT INTO model_spend (day, model, tokens) VALUES (?, ?, ?)"
    " ON CONFLICT (day, model) DO UPDATE SET tokens = tokens + excluded.tokens"
)
COUNT_ANSWER = """
    INSERT INTO answer_latency (day, model, bound_ms, answers) VALUES (?, ?, ?, 1)
    ON CONFLICT (day, model, bound_ms) DO UPDATE SET answers = answers + 1
"""
WRITE_ORDER = (INSERT_RESERVATION, REMEMBER_KEY, ADD_USAGE, ADD_MODEL_SPEND, DELETE_RESERVATION, COUNT_ANSWER)

# What a new owner does with the reservations a dead one left open (one transaction).
LEFT_OPEN = "SELECT user, model, day, tokens, idempotency_key FROM reservations"
ADD_INTERRUPTED = """
    INSERT INTO usage (day, user, model, prompt_tokens, completion_tokens, total_tokens, requests, estimated_tokens,
                       interrupted_tokens, interrupted_requests)
    VALUES (?, ?, ?, 0, 0, 0, 0, 0, ?, 1)
    ON CONFLICT (day, user, model) DO UPDATE SET
        interrupted_tokens = interrupted_tokens + excluded.interrupted_tokens,
        interrupted_requests = interrupted_requests + 1
"""
FREE_KEY = "DELETE FROM idempotency WHERE key = ?"

# Keys of earlier processes that a batch is about to spend: the batch's keys as one JSON array.
SPENT_KEYS = "SELECT key FROM idempotency WHERE key IN (SELECT value FROM json_each(?)) AND created_at >= ?"
FORGET_KEYS = (
    "DELETE FROM idempotency WHERE key IN (SELECT key FROM idempotency WHERE created_at < ? ORDER BY created_at LIMIT ?)"
)

# The reads, named so that a test can check with EXPLAIN QUERY PLAN that they use the indexes.
OF_DAY = " WHERE day = ? ORDER BY user, model"
OF_DAY_AND_USER = " WHERE day = ? AND user = ? ORDER BY model"
USAGE_COLUMNS = f"SELECT {', '.join(USAGE_FIELDS)} FROM usage"
USAGE_ROWS = USAGE_COLUMNS + OF_DAY
USAGE_ROWS_OF_USER = USAGE_COLUMNS + OF_DAY_AND_USER
# `iobot usage` at any size: each row joined with the person's daily budget (an override, else the
# default, the first parameter), in one query; for --json, each row written as its JSON object by SQLite.
WITH_BUDGET = "COALESCE(user_limits.tokens, ?)"
USAGE_WITH_BUDGETS = f"SELECT {', '.join(USAGE_FIELDS)}, {WITH_BUDGET} FROM usage LEFT JOIN user_limits USING (user)"
JSON_PAIRS = ", ".join(f"'{key}', {key}" for key in USAGE_FIELDS)
USAGE_JSON = f"SELECT json_object({JSON_PAIRS}, 'user_limit', {WITH_BUDGET}) FROM usage LEFT JOIN user_limits USING (user)"
# `iobot usage`'s table (usage_table.py), in three reads of the day's rows (then `OF_DAY` or `OF_DAY_AND_USER`):
# - how many, their interrupted calls, and the longest text or largest number of each column between the day
#   (one text for all) and the budget;
# - the budget column's largest number: the largest override among the people shown, or the default budget if
#   one of them has none. Read from user_limits' side (CROSS JOIN keeps it the outer loop), a look-up per
#   override rather than per row;
# - every line, written by one printf whose format (the first parameter) has the widths those make.
TABLE_SIZES = (
    "SELECT COUNT(*), COALESCE(SUM(interrupted_requests), 0), "
    + ", ".join(f"MAX({column.key})" if column.numeric else f"MAX(LENGTH({column.key}))" for column in COLUMNS[1:-1])
    + " FROM usage"
)
OVERRIDES_SHOWN = "SELECT COUNT(*), MAX(tokens) FROM user_limits CROSS JOIN usage USING (user)"
TABLE_LINES = (
    f"SELECT printf(?, {', '.join(column.key for column in COLUMNS[:-1])}, {WITH_BUDGET})"
    " FROM usage LEFT JOIN user_limits USING (user)"
)
# A model's (the account's) spend includes interrupted calls; a person's does not.
SPENT_BY_MODEL = "SELECT model, tokens FROM model_spend WHERE day = ?"
SPENT_BY_MODEL_SINCE = "SELECT day, model, tokens FROM model_spend WHERE day >= ?"
SETTLED_BY_USER_SINCE = "SELECT day, user, SUM(total_tokens) FROM usage WHERE day >= ? GROUP BY day, user"
RESERVED_BY_MODEL = "SELECT model, SUM(tokens) FROM reservations WHERE day = ? GROUP BY model"
SETTLED_SUM = "SELECT COALESCE(SUM(total_tokens), 0) FROM usage WHERE day = ?"
SPENT_SUM = "SELECT COALESCE(SUM(tokens), 0) FROM model_spend WHERE day = ?"
RESERVED_SUM = "SELECT COALESCE(SUM(tokens), 0) FROM reservations WHERE day = ?"
# Bumped by every change to the limits, and by a setting written beside the owner (sqlite_store.py).
LIMITS_VERSION = "SELECT version FROM limits_version"
USER_LIMITS = "SELECT user, tokens FROM user_limits"
# The dashboard's: a day's biggest users (through the primary key, one day's rows in person order), with their
# budgets; a day's latency buckets.
TOP_USERS = f"""
    SELECT top.user, top.tokens, {WITH_BUDGET} FROM (
        SELECT user, SUM(total_tokens) AS tokens FROM usage WHERE day = ? GROUP BY user ORDER BY tokens DESC, user LIMIT ?
    ) AS top LEFT JOIN user_limits USING (user) ORDER BY top.tokens DESC, top.user
"""
ANSWER_LATENCIES = "SELECT model, bound_ms, answers FROM answer_latency WHERE day = ? ORDER BY model, bound_ms"


class _Batch:
    """Writes committed together in one transaction; each caller waits on a future of its own (`waiter`).

    A future per caller, not one shared: a caller that is cancelled cancels only its own wait, never
    the batch, and a committed batch wakes its callers directly.
    `keys` are the idempotency keys its reservations spend; those an earlier process already spent are
    found in the transaction, their reservations left out, and listed in `duplicates`.
    """

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple]] = {sql: [] for sql in WRITE_ORDER}
        self.size = 0  # rows queued, over every statement
        self.keys: list[str] = []
        self.duplicates: set[str] = set()
        self._waiters: list[asyncio.Future[None]] = []

    def waiter(self) -> asyncio.Future[None]:
        """A future that resolves when the batch is committed, or fails with the reason it was not."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    def committed(self, error: Exception | None) -> None:
        for waiter in self._waiters:
            if waiter.done():  # its caller was cancelled
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


class SQLiteLedger:
    """The ledger in one SQLite file (see the module docstring for how it works)."""

    kind = "sqlite"

    def __init__(
        self,
        db: aiosqlite.Connection,
        connection: sqlite3.Connection,
        path: str,
        *,
        owner_lock: _OwnerLock | None,
        owner: bool,
        user_daily_tokens: int,
        reservation_ttl: float,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._connection = connection  # the same connection as `db`, used directly by the writer thread
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iobot-ledger-writer")
        self._path = path
        self._owner_lock = owner_lock
        self._owner = owner
        self._default_budget = user_daily_tokens
        self._ttl = reservation_ttl
        self._clock = clock
        self._closed = False
        # Serialises use of the connection, so that a read never sees a batch half written.
        self._db_lock = asyncio.Lock()
        self._pending: _Batch | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._pruner: asyncio.Task[None] | None = None
        # The owner's authoritative state: settled + reserved tokens per (day, model) and (day, user),
        # open reservations oldest first with their creation time, its recent idempotency keys with theirs.
        self._model_used: dict[tuple[date, str], int] = {}
        self._user_used: dict[tuple[date, str], int] = {}
        self._open: dict[int | str, tuple[Reservation, float]] = {}
        self._recent_keys: OrderedDict[str, float] = OrderedDict()
        self._limits: dict[str, int] = {}
        self._limits_reader: sqlite3.Connection | None = None  # the owner's synchronous look at limits_version
        self._checkpoint: asyncio.Task[None] | None = None
        self._commits_since_checkpoint = 0
        self._limits_version: int | None = None
        self._last_id = 0
        self._today = date.min
        # The rest of the shared state, on this connection: opened, owned and closed with the ledger.
        self.store = SQLiteStore(
            db, self._db_lock, clock=clock, owner=owner, check_open=self._check_open, refresh=self._refresh_if_changed
        )

    @classmethod
    async def open(
        cls,
        path: str,
        *,
        user_daily_tokens: int,
        reservation_ttl: float = 900.0,
        clock: Callable[[], datetime] = _utc_now,
        owner: bool = True,
        create: bool = True,
    ) -> SQLiteLedger:
        """Open (creating or migrating) the ledger at `path`.

        `owner=True` is for the one process that reserves (the service): it locks the file, or raises
        `LedgerError` naming the live process that has it, and settles what a dead owner left open.
        `owner=False` is for commands run beside it: reads and limit overrides only.
        `create=False` raises `FileNotFoundError` when there is no file at `path`, so that a mistyped
        path in an operator's command is reported instead of leaving an empty ledger behind.
        """
        if user_daily_tokens < 0 or reservation_ttl < 0:
            raise ValueError("user_daily_tokens and reservation_ttl must not be negative")
        owner_lock = None
        if path != ":memory:":
            path = _one_name(path, must_exist=not create)
            owner_lock = _OwnerLock.take(path) if owner else None
        db: aiosqlite.Connection | None = None
        try:
            db, connection = await _connect(path)
            for pragma in PRAGMAS:
                await db.execute(pragma)
            await _migrate(db, path)
            ledger = cls(
                db,
                connection,
                path,
                owner_lock=owner_lock,
                owner=owner,
                user_daily_tokens=user_daily_tokens,
                reservation_ttl=reservation_ttl,
                clock=clock,
            )
            if owner:
                await ledger._load()
            return ledger
        except BaseException as exc:
            if db is not None:
                await db.close()
            if owner_lock is not None:
                owner_lock.release()
            if isinstance(exc, sqlite3.Error):
                raise LedgerError(f"cannot open the ledger {path}: {exc}") from exc
            raise

    async def _load(self) -> None:
        """Settle what a dead owner left open, sign the file as ours, read the totals of yesterday and today.

        Idempotency keys stay in the file: none is read here (the pruner deletes expired ones later).
        """
        now = self._now()
        self._today = now.date()
        since = (self._today - timedelta(days=1)).isoformat()
        [(self._last_id,)] = await self._db.execute_fetchall("SELECT COALESCE(MAX(id), 0) FROM reservations")
        left_open = list(await self._db.execute_fetchall(LEFT_OPEN))
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.executemany(ADD_INTERRUPTED, [(day, user, model, tokens) for user, model, day, tokens, _ in left_open])
            await self._db.executemany(ADD_MODEL_SPEND, [(day, model, tokens) for _, model, day, tokens, _ in left_open])
            await self._db.executemany(FREE_KEY, [(key,) for *_, key in left_open if key is not None])
            await self._db.execute("DELETE FROM reservations")
            await self._db.execute(
                "INSERT INTO owner (id, pid, host, started_at) VALUES (1, ?, ?, ?)"
                " ON CONFLICT (id) DO UPDATE SET pid = excluded.pid, host = excluded.host, started_at = excluded.started_at",
                (os.getpid(), socket.gethostname(), now.timestamp()),
            )
            await self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                await self._db.execute("ROLLBACK")
            raise
        if left_open:
            log.warning(
                "%d call(s) were cut off by the end of the previous process: charged to their models at their "
                "estimate (%d tokens), not to the people, whose events will be answered when redelivered",
                len(left_open),
                sum(row[3] for row in left_open),
            )
        for day, model, tokens in await self._db.execute_fetchall(SPENT_BY_MODEL_SINCE, (since,)):
            self._model_used[date.fromisoformat(day), model] = tokens
        for day, user, tokens in await self._db.execute_fetchall(SETTLED_BY_USER_SINCE, (since,)):
            self._user_used[date.fromisoformat(day), user] = tokens
        self._limits = {user: tokens for user, tokens in await self._db.execute_fetchall(USER_LIMITS)}
        if self._path != ":memory:":  # a memory database is this connection's alone: no one else sets limits
            self._limits_reader = sqlite3.connect(self._path, timeout=1.0, isolation_level=None)
            self._refresh_if_changed()
            # Commits may run on the event loop (`_flush`): the log's checkpoints, which wait for the disk, may not.
            await self._db.execute("PRAGMA wal_autocheckpoint = 0")
        self._start_pruning()

    # --- reserve, settle, release: the owner's hot path ---

    async def reserve(
        self, *, user: str, model: str, tokens: int, model_limit: int | None, idempotency_key: str | None = None
    ) -> Reservation:
        self._check_owner()
        if tokens < 0:
            raise ValueError("tokens must not be negative")
        # From here to the write there is no await: the checks and the charge are one atomic step.
        self._refresh_if_changed()
        now = self._now()
        day = now.date()
        if day != self._today:
            self._start_day(now)
        self._expire(now.timestamp())
        self._forget_old_recent_keys(now.timestamp())
        if idempotency_key is not None and idempotency_key in self._recent_keys:
            raise DuplicateRequest(idempotency_key)
        budget = self._limits.get(user, self._default_budget)
        user_used = self._user_used.get((day, user), 0)
        if user_used + tokens > budget:
            raise BudgetExceeded(user=user, used=user_used, limit=budget, needed=tokens, now=now)
        model_used = self._model_used.get((day, model), 0)
        if model_limit is not None and model_used + tokens > model_limit:
            raise ModelQuotaExceeded(model=model, used=model_used, limit=model_limit, needed=tokens, now=now)

        self._last_id += 1
        reservation = Reservation(self._last_id, user, model, day, tokens)
        created_at = now.timestamp()
        self._charge(reservation, tokens)
        self._open[reservation.id] = (reservation, created_at)
        batch = self._queue(
            INSERT_RESERVATION, (reservation.id, user, model, day.isoformat(), tokens, created_at, idempotency_key)
        )
        if idempotency_key is not None:
            self._recent_keys[idempotency_key] = created_at
            batch.keys.append(idempotency_key)
            self._queue(REMEMBER_KEY, (idempotency_key, created_at))
        try:
            await batch.waiter()
        except asyncio.CancelledError:
            raise  # the write goes on; the reservation expires after the TTL
        except Exception as exc:
            self._undo_reserve(reservation)
            if idempotency_key is not None:
                self._recent_keys.pop(idempotency_key, None)
            raise LedgerError(f"could not record the reservation: {exc}") from exc
        if idempotency_key in batch.duplicates:  # spent by an earlier process: nothing was written
            self._undo_reserve(reservation)
            raise DuplicateRequest(idempotency_key)
        return reservation

    def _undo_reserve(self, reservation: Reservation) -> None:
        if self._open.pop(reservation.id, None) is not None:
            self._charge(reservation, -reservation.tokens)

    async def settle(
        self,
        reservation: Reservation,
        *,
        prompt_tokens: int,
        completion_tokens: int,
        estimated: bool,
        seconds: float | None = None,
    ) -> None:
        """Charge the real use; a reservation that has expired meanwhile is still charged (the call ran)."""
        self._check_owner()
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError("token counts must not be negative")
        total = prompt_tokens + completion_tokens
        opened = self._open.pop(reservation.id, None)
        held = reservation.tokens if opened else 0
        self._charge(reservation, total - held)
        day, user, model = reservation.day.isoformat(), reservation.user, reservation.model
        batch = self._queue(ADD_USAGE, (day, user, model, prompt_tokens, completion_tokens, total, total if estimated else 0))
        self._queue(ADD_MODEL_SPEND, (day, model, total))
        if opened:
            self._queue(DELETE_RESERVATION, (reservation.id,))
        if seconds is not None:
            self._queue(COUNT_ANSWER, (day, model, bucket_of(seconds)))
        try:
            await batch.waiter()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._charge(reservation, held - total)
            if opened:
                self._open[reservation.id] = opened
            raise LedgerError(f"could not record the usage: {exc}") from exc

    async def release(self, reservation: Reservation) -> None:
        self._check_owner()
        opened = self._open.pop(reservation.id, None)
        if opened is None:
            return
        self._charge(reservation, -reservation.tokens)
        try:
            await self._queue(DELETE_RESERVATION, (reservation.id,)).waiter()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._charge(reservation, reservation.tokens)
            self._open[reservation.id] = opened
            raise LedgerError(f"could not release the reservation: {exc}") from exc

    async def reservations_in_flight(self) -> int:
        self._check_owner()
        return len(self._open)

    async def expire_stale(self) -> int:
        self._check_owner()
        expired = self._expire(self._now().timestamp())
        if expired and self._pending is not None:
            try:
                await self._pending.waiter()
            except Exception as exc:  # freed in memory all the same; the next owner clears the rows at open
                raise LedgerError(f"could not delete expired reservations: {exc}") from exc
        return expired

    def _expire(self, now: float) -> int:
        """Free reservations older than the TTL, oldest first; the deletes ride in the next batch."""
        expired = 0
        while self._open:
            reservation, created_at = next(iter(self._open.values()))
            if created_at > now - self._ttl:
                break
            del self._open[reservation.id]
            self._charge(reservation, -reservation.tokens)
            self._queue(DELETE_RESERVATION, (reservation.id,))
            expired += 1
        if expired:
            log.warning("expired %d reservation(s) older than %.0f s", expired, self._ttl)
        return expired

    def _forget_old_recent_keys(self, now: float) -> None:
        """Drop this process's keys older than RECENT_KEYS_SECONDS from memory (they stay in the file)."""
        while self._recent_keys:
            created_at = next(iter(self._recent_keys.values()))
            if created_at > now - RECENT_KEYS_SECONDS:
                return
            self._recent_keys.popitem(last=False)

    def _start_day(self, now: datetime) -> None:
        """A new UTC day: drop totals older than yesterday, and start deleting keys older than KEY_RETENTION."""
        self._today = now.date()
        keep_from = self._today - timedelta(days=1)
        for totals in (self._model_used, self._user_used):
            for key in [key for key in totals if key[0] < keep_from]:
                del totals[key]
        self._start_pruning()

    def _charge(self, reservation: Reservation, tokens: int) -> None:
        by_user = (reservation.day, reservation.user)
        by_model = (reservation.day, reservation.model)
        self._user_used[by_user] = self._user_used.get(by_user, 0) + tokens
        self._model_used[by_model] = self._model_used.get(by_model, 0) + tokens

    def _queue(self, sql: str, params: tuple) -> _Batch:
        """Add a write to the next transaction; wait on its `waiter()` for the commit."""
        if self._pending is None:
            self._pending = _Batch()
        self._pending.rows[sql].append(params)
        self._pending.size += 1
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return self._pending

    async def _flush(self) -> None:
        """Commit batches until none is waiting: each holds what was queued while the last one committed.

        A small batch is committed right here on the event loop: SQLite takes tens of microseconds for
        it, while the trip to the writer thread and back costs two thread wake-ups (about 0.15 ms on
        a virtual machine, measured), which one person's request would wait for twice. A large batch,
        or one that finds another process holding the write lock, goes to the writer thread, so that
        the loop never waits on the disk or on another process.
        """
        loop = asyncio.get_running_loop()
        while self._pending is not None:
            batch, self._pending = self._pending, None
            try:
                key_cutoff = (self._now() - KEY_RETENTION).timestamp()
                async with self._db_lock:
                    if batch.size > INLINE_ROWS or not self._commit_unless_locked(batch, key_cutoff):
                        await loop.run_in_executor(self._writer, self._commit, batch, key_cutoff)
            except Exception as exc:
                log.error("ledger write failed: %s", exc)
                batch.committed(exc)
            else:
                batch.committed(None)
                self._checkpoint_now_and_then()

    def _commit_unless_locked(self, batch: _Batch, key_cutoff: float) -> bool:
        """Commit `batch` at once, or return False, with nothing written, when another process holds the write lock."""
        self._connection.execute("PRAGMA busy_timeout = 0")
        try:
            self._commit(batch, key_cutoff)
            return True
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:  # set when SQLite raised it
                raise
            return False
        finally:
            self._connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def _checkpoint_now_and_then(self) -> None:
        """Every CHECKPOINT_COMMITS transactions, copy the write-ahead log into the file, on the writer thread.

        SQLite would do it inside a commit, which may run on the event loop and would wait there for
        the disk (a checkpoint took up to 35 ms here). It holds the connection meanwhile, as SQLite's
        own would: only a log copied whole before the next write starts over from its beginning.
        """
        self._commits_since_checkpoint += 1
        if self._path == ":memory:" or self._commits_since_checkpoint < CHECKPOINT_COMMITS:
            return
        if self._checkpoint is None or self._checkpoint.done():
            self._commits_since_checkpoint = 0
            self._checkpoint = asyncio.create_task(self._checkpoint_log())

    async def _checkpoint_log(self) -> None:
        try:
            async with self._db_lock:
                await asyncio.get_running_loop().run_in_executor(self._writer, self._run_checkpoint)
        except sqlite3.Error as exc:  # the log only grows until the next one succeeds
            log.warning("could not checkpoint the ledger's write-ahead log: %s", exc)

    def _run_checkpoint(self) -> None:
        self._connection.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    def _commit(self, batch: _Batch, key_cutoff: float) -> None:
        """One transaction with the whole batch, run on the writer thread: a single hop from the event loop."""
        db = self._connection
        db.execute("BEGIN IMMEDIATE")
        try:
            if batch.keys:
                self._leave_out_spent_keys(batch, key_cutoff)
            for sql, rows in batch.rows.items():
                if rows:
                    db.executemany(sql, rows)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def _leave_out_spent_keys(self, batch: _Batch, cutoff: float) -> None:
        """Find the batch's keys that an earlier process spent, and drop the reservations that would spend them."""
        rows = self._connection.execute(SPENT_KEYS, (json.dumps(batch.keys), cutoff)).fetchall()
        batch.duplicates = {key for (key,) in rows}
        if batch.duplicates:
            reservations = batch.rows[INSERT_RESERVATION]
            reservations[:] = [row for row in reservations if row[-1] not in batch.duplicates]  # the key is last
            remembered = batch.rows[REMEMBER_KEY]
            remembered[:] = [row for row in remembered if row[0] not in batch.duplicates]

    def _start_pruning(self) -> None:
        """Start deleting expired keys; one already at work reads the clock at each chunk, so it is enough."""
        if self._pruner is None or self._pruner.done():
            self._pruner = asyncio.create_task(self._prune_keys())

    async def _prune_keys(self) -> None:
        """Delete keys older than KEY_RETENTION, PRUNE_CHUNK per transaction, leaving the file to the batches in between."""
        try:
            while True:
                async with self._db_lock:
                    cutoff = (self._now() - KEY_RETENTION).timestamp()
                    cursor = await self._db.execute(FORGET_KEYS, (cutoff, PRUNE_CHUNK))
                if cursor.rowcount < PRUNE_CHUNK:
                    return
                await asyncio.sleep(PRUNE_PAUSE)
        except sqlite3.Error as exc:  # the keys are only older than needed; the next day tries again
            log.warning("could not delete expired idempotency keys: %s", exc)

    def _refresh_if_changed(self) -> None:
        """Re-read the overrides, and forget the store's settings, if another process changed either since
        the last look (a few microseconds when not)."""
        if self._limits_reader is None:
            return
        try:
            [(version,)] = self._limits_reader.execute(LIMITS_VERSION).fetchall()
            if version != self._limits_version:
                self._limits = dict(self._limits_reader.execute(USER_LIMITS).fetchall())
                self._limits_version = version
                self.store.forget_settings()
        except sqlite3.Error as exc:
            raise LedgerError(f"could not read the budgets: {exc}") from exc

    # --- queries and limits: any process ---

    async def used_today(self, *, model: str | None = None, user: str | None = None) -> int:
        filters = [(column, value) for column, value in (("model", model), ("user", user)) if value is not None]
        conditions = "".join(f" AND {column} = ?" for column, _ in filters)
        params = [self._now().date().isoformat(), *(value for _, value in filters)]
        [(spent,)] = await self._read((SETTLED_SUM if user is not None else SPENT_SUM) + conditions, params)
        [(reserved,)] = await self._read(RESERVED_SUM + conditions, params)
        return spent + reserved

    async def usage(self, *, day: date | None = None, user: str | None = None) -> list[UsageRow]:
        day = day or self._now().date()
        if user is None:
            rows = await self._read(USAGE_ROWS, (day.isoformat(),))
        else:
            rows = await self._read(USAGE_ROWS_OF_USER, (day.isoformat(), user))
        return [UsageRow(day, *row[1:]) for row in rows]  # every row is of `day`

    async def usage_with_budgets(self, *, day: date | None = None, user: str | None = None) -> list[tuple[Any, ...]]:
        """`usage()` as plain tuples (UsageRow's fields, the day as text), each followed by the person's daily budget:
        the cells of the table `iobot usage` draws on a terminal. One query, and no object per row but its tuple."""
        return await self._read_usage(USAGE_WITH_BUDGETS, day, user)

    async def usage_json(self, *, day: date | None = None, user: str | None = None) -> list[str]:
        """The rows of `iobot usage --json`: each `UsageRow.as_json()` plus "user_limit", written by SQLite."""
        rows_of, params = _rows_of((day or self._now().date()).isoformat(), user)
        sql = USAGE_JSON + rows_of
        return await self._on_writer_thread(lambda: _texts(self._connection, sql, (self._default_budget, *params)))

    async def usage_table(self, *, day: date | None = None, user: str | None = None) -> UsageTable:
        day_text = (day or self._now().date()).isoformat()
        return await self._on_writer_thread(lambda: self._usage_table(day_text, user))

    def _usage_table(self, day_text: str, user: str | None) -> UsageTable:
        """TABLE_SIZES, OVERRIDES_SHOWN and TABLE_LINES in one read transaction, so that the widths fit the lines."""
        rows_of, params = _rows_of(day_text, user)
        db = self._connection
        db.execute("BEGIN")
        try:
            [(rows, interrupted, *longest)] = db.execute(TABLE_SIZES + rows_of, params).fetchall()
            if not rows:
                return UsageTable("", [], 0)
            [(overridden, largest_override)] = db.execute(OVERRIDES_SHOWN + rows_of, params).fetchall()
            largest_budget = max(largest_override or 0, self._default_budget if overridden < rows else 0)
            column_widths = widths([len(day_text), *longest, largest_budget])
            # printf's `!` counts a width in characters, as Python does, not in bytes
            line = "  ".join(f"%,{width}d" if column.numeric else f"%!-{width}s" for column, width in zip(COLUMNS, column_widths))
            lines = _texts(db, TABLE_LINES + rows_of, (line, self._default_budget, *params))
        finally:
            db.execute("COMMIT")
        return UsageTable(header(column_widths), lines, interrupted)

    async def _read_usage(self, select: str, day: date | None, user: str | None) -> list[Any]:
        rows_of, params = _rows_of((day or self._now().date()).isoformat(), user)
        return await self._read(select + rows_of, (self._default_budget, *params))

    async def model_totals(self, day: date | None = None) -> dict[str, int]:
        day_text = (day or self._now().date()).isoformat()
        totals = dict(await self._read(SPENT_BY_MODEL, (day_text,)))
        for model, reserved in await self._read(RESERVED_BY_MODEL, (day_text,)):
            totals[model] = totals.get(model, 0) + reserved
        return dict(sorted(totals.items()))

    async def top_users(self, *, day: date | None = None, count: int = 10) -> list[PersonTotal]:
        day_text = (day or self._now().date()).isoformat()
        return [PersonTotal(*row) for row in await self._read(TOP_USERS, (self._default_budget, day_text, count))]

    async def answer_latencies(self, day: date | None = None) -> dict[str, Histogram]:
        histograms: dict[str, Histogram] = {}
        for model, bound_ms, answers in await self._read(ANSWER_LATENCIES, ((day or self._now().date()).isoformat(),)):
            histograms.setdefault(model, {})[bound_ms] = answers
        return histograms

    async def set_user_limit(self, user: str, tokens: int | None) -> None:
        if tokens is not None and tokens < 0:
            raise ValueError("a daily budget must not be negative")
        self._check_open()
        async with self._db_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                if tokens is None:
                    await self._db.execute("DELETE FROM user_limits WHERE user = ?", (user,))
                else:
                    await self._db.execute(
                        "INSERT INTO user_limits (user, tokens) VALUES (?, ?)"
                        " ON CONFLICT (user) DO UPDATE SET tokens = excluded.tokens",
                        (user, tokens),
                    )
                await self._db.execute(BUMP_VERSION)
                await self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    await self._db.execute("ROLLBACK")
                raise
        if tokens is None:
            self._limits.pop(user, None)
        else:
            self._limits[user] = tokens

    async def user_limit(self, user: str) -> int:
        rows = await self._read("SELECT tokens FROM user_limits WHERE user = ?", (user,))
        return rows[0][0] if rows else self._default_budget

    async def user_limits(self) -> dict[str, int]:
        return dict(await self._read("SELECT user, tokens FROM user_limits ORDER BY user", ()))

    async def ping(self) -> None:
        """Raise `LedgerError` unless the file answers a query."""
        try:
            await self._read("SELECT 1", ())
        except sqlite3.Error as exc:
            raise LedgerError(f"the ledger file does not answer: {exc}") from exc

    async def close(self) -> None:
        """Wait for queued writes, close the file and give up ownership."""
        if self._closed:
            return
        self._closed = True
        if self._pruner is not None:
            self._pruner.cancel()
            await asyncio.gather(self._pruner, return_exceptions=True)
        if self._flusher is not None:
            await self._flusher
        if self._checkpoint is not None:
            await self._checkpoint
        self._writer.shutdown()
        if self._limits_reader is not None:
            self._limits_reader.close()
        await self._db.close()
        if self._owner_lock is not None:
            self._owner_lock.release()  # after the connection: see _OwnerLock

    async def _read(self, sql: str, params: Iterable[Any]) -> list[Any]:
        self._check_open()
        async with self._db_lock:
            return list(await self._db.execute_fetchall(sql, tuple(params)))

    async def _on_writer_thread(self, read: Callable[[], T]) -> T:
        """`read` run on the writer thread, which uses the connection directly, taking turns with the writes."""
        self._check_open()
        async with self._db_lock:
            return await asyncio.get_running_loop().run_in_executor(self._writer, read)

    def _now(self) -> datetime:
        return as_utc(self._clock())

    def _check_open(self) -> None:
        if self._closed:
            raise LedgerError("the ledger is closed")

    def _check_owner(self) -> None:
        self._check_open()
        if not self._owner:
            raise LedgerError(
                f"this process opened the ledger {self._path} to read it and set budgets; only the process "
                "serving requests charges it"
            )


class _OwnerLock:
    """An exclusive `flock` on the database file itself: one owner per file, whatever name reached it.

    flock belongs to the open file, not to its name, so a symbolic link, a bind mount or a rename
    reaches the same lock. SQLite's own locks are POSIX locks, which closing *any* descriptor of the
    file drops for the whole process; so this process never opens a second descriptor of a file it
    owns (`_held` answers first), and closes its descriptor only after its SQLite connection.
    """

    _held: ClassVar[set[tuple[int, int]]] = set()  # (device, inode) of the files this process owns

    def __init__(self, fd: int, identity: tuple[int, int]) -> None:
        self._fd = fd
        self._identity = identity

    @classmethod
    def take(cls, path: str) -> _OwnerLock:
        if os.path.exists(path):
            info = os.stat(path)
            if (info.st_dev, info.st_ino) in cls._held:
                raise LedgerError(_in_use_message(path))
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        info = os.fstat(fd)
        identity = (info.st_dev, info.st_ino)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _refuse_hard_links(path, os.fstat(fd).st_nlink)  # a link made since the first look
        except BlockingIOError:
            os.close(fd)
            raise LedgerError(_in_use_message(path)) from None
        except LedgerError:
            os.close(fd)
            raise
        cls._held.add(identity)
        return cls(fd, identity)

    def release(self) -> None:
        self._held.discard(self._identity)
        os.close(self._fd)


def _in_use_message(path: str) -> str:
    """Who holds the ledger (as it signed the file) and what the operator can do."""
    holder = "another process"
    try:
        with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            [(pid, host, started_at)] = db.execute("SELECT pid, host, started_at FROM owner").fetchall()
        since = datetime.fromtimestamp(started_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
        holder = f"iobot process {pid} on {host} (running since {since})"
    except (sqlite3.Error, ValueError):
        pass  # not signed yet, or by an older iobot
    return (
        f"the ledger {path} is in use by {holder}: only one process may serve requests from a ledger. "
        "Stop that process before starting another, or give this one a ledger of its own; reading it "
        "(iobot usage, iobot models) and setting budgets (iobot limits) work beside it."
    )


def _one_name(path: str, *, must_exist: bool) -> str:
    """The file's real path (links followed, as SQLite does for its log), refusing a file with hard links
    and, if `must_exist`, a missing one (`FileNotFoundError`)."""
    path = os.path.realpath(path)
    if os.path.exists(path):
        _refuse_hard_links(path, os.stat(path).st_nlink)
    elif must_exist:
        raise FileNotFoundError(errno.ENOENT, "there is no ledger", path)
    return path


def _refuse_hard_links(path: str, links: int) -> None:
    if links > 1:
        raise LedgerError(
            f"the ledger {path} has {links} names (hard links to one file). SQLite keeps a write-ahead log "
            "beside the name a file is opened by, so a second name gets a second log and settled rows can be "
            f"lost. Keep one name: find the others with `find / -xdev -samefile {path}` and remove them."
        )


def _rows_of(day_text: str, user: str | None) -> tuple[str, tuple[str, ...]]:
    """The end of a usage read that picks the rows of a day, or of a day and a person; and its parameters."""
    return (OF_DAY, (day_text,)) if user is None else (OF_DAY_AND_USER, (day_text, user))


def _texts(db: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> list[str]:
    """The one text of each row of `sql`, each row's tuple dropped as it is read: fetched all at once, the
    hundreds of thousands of rows of a busy day would be as many tuples for the garbage collector to walk."""
    return [text for (text,) in db.execute(sql, params)]


async def _connect(path: str) -> tuple[aiosqlite.Connection, sqlite3.Connection]:
    """One SQLite connection, reached through aiosqlite's thread and directly by the ledger's writer thread.

    The two never use it at once (`_db_lock`), which is what `check_same_thread=False` asks of us.
    """
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        return await aiosqlite.Connection(lambda: connection, iter_chunk_size=64), connection
    except BaseException:
        connection.close()
        raise


async def _migrate(db: aiosqlite.Connection, path: str) -> None:
    """Bring the schema to the latest version, each migration in its own transaction."""
    [(version,)] = await db.execute_fetchall("PRAGMA user_version")
    if version > len(MIGRATIONS):
        raise LedgerError(f"the ledger {path} has schema version {version}, newer than this iobot knows")
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        try:
            await db.executescript(f"BEGIN IMMEDIATE; {script}; PRAGMA user_version = {number}; COMMIT;")
        except sqlite3.OperationalError:
            if db.in_transaction:
                await db.execute("ROLLBACK")
            [(version,)] = await db.execute_fetchall("PRAGMA user_version")
            if version < number:
                raise
            continue  # another process opening the file at the same moment applied it first
        log.info("ledger %s migrated to schema version %d", path, number)
