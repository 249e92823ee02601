"""What is particular to the PostgreSQL ledger: replicas (two ledgers, two pools, one database) holding the
limits together, calls cut off by a dead replica, migrations, connection errors, /healthz and the CLI.

The contract suites (tests/test_ledger_contract.py, tests/test_store_contract.py) run on PostgreSQL too.
These tests need the server of `.ci/postgres start` (see the `postgres_url` fixture).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from bots.http import HealthState, make_http_app
from core.ledger import (
    BudgetExceeded,
    DuplicateRequest,
    Ledger,
    LedgerError,
    ModelQuotaExceeded,
    QuotaExceeded,
    Reservation,
    postgres,
)
from core.ledger.postgres import MIGRATIONS, PostgresLedger
from core.ledger.sqlite import SQLiteLedger
from core.quotas import load_quota_table

LLAMA = "meta-llama/Llama-3.3-70B-Instruct"
ANN = "slack:T1:U1"
BOB = "discord:42"


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2025, 3, 14, 20, 48, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
async def replicas(postgres_url: str) -> AsyncIterator[tuple[PostgresLedger, PostgresLedger]]:
    """Two ledgers on one database, each with its own pool: two `iobot run` replicas."""
    first = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000)
    second = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000)
    yield first, second
    await first.close()
    await second.close()


async def spend(ledger: Ledger, user: str, tokens: int) -> None:
    reservation = await ledger.reserve(user=user, model=LLAMA, tokens=0, model_limit=None)
    await ledger.settle(reservation, prompt_tokens=tokens, completion_tokens=0, estimated=False)


async def calls_over(replicas: tuple[PostgresLedger, PostgresLedger], users: list[str], model_limit: int | None) -> list:
    """200 concurrent calls of 1,000 tokens, alternating between the replicas: each a Reservation or the refusal."""

    async def call(n: int) -> Reservation | QuotaExceeded:
        ledger = replicas[n % 2]
        try:
            reservation = await ledger.reserve(user=users[n % len(users)], model=LLAMA, tokens=1_000, model_limit=model_limit)
        except QuotaExceeded as refusal:
            return refusal
        await asyncio.sleep(0)
        await ledger.settle(reservation, prompt_tokens=600, completion_tokens=400, estimated=False)
        return reservation

    return await asyncio.gather(*(call(n) for n in range(200)))


# --- replicas ---


async def test_two_replicas_never_pass_a_nearly_spent_model_quota_together(replicas) -> None:
    first, second = replicas
    await first.set_user_limit("console:bulk", 10**9)
    await spend(first, "console:bulk", 490_500)  # 9,500 left: room for exactly 9 calls
    outcomes = await calls_over(replicas, [f"discord:{n}" for n in range(50)], model_limit=500_000)

    assert sum(isinstance(outcome, Reservation) for outcome in outcomes) == 9
    assert all(isinstance(outcome, (Reservation, ModelQuotaExceeded)) for outcome in outcomes)
    assert await first.used_today(model=LLAMA) == await second.used_today(model=LLAMA) == 499_500


async def test_two_replicas_never_pass_a_nearly_spent_budget_together(replicas) -> None:
    first, second = replicas
    await spend(second, ANN, 45_500)  # 4,500 of 50,000 left: room for exactly 4 calls
    outcomes = await calls_over(replicas, [ANN], model_limit=None)

    assert sum(isinstance(outcome, Reservation) for outcome in outcomes) == 4
    assert all(isinstance(outcome, (Reservation, BudgetExceeded)) for outcome in outcomes)
    assert await first.used_today(user=ANN) == 49_500
    [row] = [row for row in await second.usage() if row.user == ANN]
    assert row.total_tokens == 49_500


async def test_one_event_delivered_to_both_replicas_at_once_is_reserved_once(replicas) -> None:
    async def deliver(ledger: PostgresLedger) -> Reservation | None:
        try:
            return await ledger.reserve(user=ANN, model=LLAMA, tokens=100, model_limit=None, idempotency_key="Ev01")
        except DuplicateRequest:
            return None

    outcomes = await asyncio.gather(*(deliver(replicas[n % 2]) for n in range(20)))
    assert sum(outcome is not None for outcome in outcomes) == 1
    assert await replicas[0].used_today(user=ANN) == 100


async def test_a_budget_set_on_one_replica_applies_to_the_next_reservation_on_the_other(replicas) -> None:
    first, second = replicas
    await first.set_user_limit(ANN, 500)
    with pytest.raises(BudgetExceeded) as refused:
        await second.reserve(user=ANN, model=LLAMA, tokens=501, model_limit=None)
    assert refused.value.limit == 500
    await first.set_user_limit(ANN, None)
    await second.reserve(user=ANN, model=LLAMA, tokens=501, model_limit=None)


async def test_request_rates_and_claims_are_counted_over_both_replicas(replicas) -> None:
    first, second = replicas
    assert [await ledger.store.take_request(ANN, 4) for ledger in (first, second, first, second)] == [0.0] * 4
    assert await first.store.take_request(ANN, 4) > 0
    assert await second.store.take_request(ANN, 4) > 0
    assert await second.store.take_request(BOB, 4) == 0.0
    claims = await asyncio.gather(*(replicas[n % 2].store.claim("slack:Ev02") for n in range(20)))
    assert claims.count(True) == 1


async def test_keys_older_than_the_retention_are_deleted_a_few_per_new_key(postgres_url: str) -> None:
    clock = Clock()
    ledger = await PostgresLedger.open(postgres_url, user_daily_tokens=10**9, clock=clock)
    try:
        for n in range(10):
            await ledger.reserve(user=ANN, model=LLAMA, tokens=1, model_limit=None, idempotency_key=f"old-{n}")
        clock.now += postgres.KEY_RETENTION + timedelta(seconds=1)
        for n in range(3):
            await ledger.reserve(user=ANN, model=LLAMA, tokens=1, model_limit=None, idempotency_key=f"new-{n}")
        await ledger.reserve(user=ANN, model=LLAMA, tokens=1, model_limit=None, idempotency_key="old-9")  # forgotten
        connection = await asyncpg.connect(postgres_url)
        try:
            keys = {row[0] for row in await connection.fetch("SELECT key FROM idempotency")}
        finally:
            await connection.close()
        assert len(keys) == 10 + 3 - 4 * postgres.PRUNE_PER_KEY and {"new-0", "new-1", "new-2", "old-9"} <= keys
    finally:
        await ledger.close()


# --- a replica that dies ---


async def test_calls_cut_off_by_a_dead_replica_are_charged_to_the_model_not_the_person(postgres_url: str) -> None:
    clock = Clock()
    dead = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000, clock=clock)
    live = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000, clock=clock)
    try:
        running = await live.reserve(user=BOB, model=LLAMA, tokens=300, model_limit=None)
        await dead.reserve(user=ANN, model=LLAMA, tokens=1_200, model_limit=None, idempotency_key="Ev03")
        await dead.close()  # its lock is gone, as when the process is killed

        assert await live.expire_stale() == 0  # not stale: the TTL has not passed
        assert await live.used_today(user=ANN) == 0, "not charged to the person"
        assert await live.used_today(model=LLAMA) == 1_500, "charged to the model at its estimate, beside the live call"
        [row] = await live.usage(user=ANN)
        assert (row.total_tokens, row.interrupted_tokens, row.interrupted_requests) == (0, 1_200, 1)
        redelivered = await live.reserve(user=ANN, model=LLAMA, tokens=1_200, model_limit=None, idempotency_key="Ev03")
        assert redelivered.tokens == 1_200, "the key was freed, so that the redelivered event is answered"
        await live.settle(running, prompt_tokens=100, completion_tokens=100, estimated=False)
        assert await live.reservations_in_flight() == 1  # the redelivered one; the live call was left alone
    finally:
        await dead.close()
        await live.close()


async def test_a_live_replica_finds_a_dead_ones_calls_at_its_next_reservation(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "RECOVERY_INTERVAL", 0.0)  # look at every reservation, not once a minute
    dead = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000)
    live = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000)
    try:
        await dead.reserve(user=ANN, model=LLAMA, tokens=700, model_limit=None)
        await dead.close()
        await live.reserve(user=BOB, model=LLAMA, tokens=100, model_limit=None)
        [row] = await live.usage(user=ANN)
        assert (row.interrupted_tokens, row.interrupted_requests) == (700, 1)
        assert await live.used_today(user=ANN) == 0 and await live.used_today(model=LLAMA) == 800
    finally:
        await live.close()


async def test_a_replica_that_lost_its_liveness_connection_signs_in_again(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres, "RECOVERY_INTERVAL", 0.0)
    replica = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000)
    other = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000)
    admin = await asyncpg.connect(postgres_url)
    try:
        await replica.reserve(user=ANN, model=LLAMA, tokens=700, model_limit=None)
        [(lock_holder,)] = await admin.fetch(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 AND objid = (SELECT MIN(id) FROM instances)",
            postgres.INSTANCE_LOCKS,
        )
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", lock_holder)  # as a server restart would
        await asyncio.sleep(0.1)
        after = await replica.reserve(user=ANN, model=LLAMA, tokens=100, model_limit=None)
        [row] = await replica.usage(user=ANN)
        assert (row.interrupted_tokens, row.interrupted_requests) == (700, 1), "its calls of before look cut off"
        await other.expire_stale()  # the other replica sees it alive again: its new reservation stays open
        assert await replica.reservations_in_flight() == 1
        await replica.settle(after, prompt_tokens=50, completion_tokens=50, estimated=False)
        assert await replica.used_today(user=ANN) == 100
    finally:
        await admin.close()
        await replica.close()
        await other.close()


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5.0) -> bool:
    """Whether `check` comes true within `seconds` (a change announced by NOTIFY arrives a moment after its write)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_a_replica_remembers_settings_and_hears_of_every_change_another_makes(
    replicas: tuple[PostgresLedger, PostgresLedger], postgres_url: str
) -> None:
    first, second = replicas
    scope = "slack:T1:U1"
    assert await second.store.setting(scope, "model") is None  # remembered by the second replica from now on
    await first.store.set_setting(scope, "model", "Qwen/QwQ-32B")
    assert await first.store.setting(scope, "model") == "Qwen/QwQ-32B"  # the writer at once
    assert await eventually(lambda: _is(second.store.setting(scope, "model"), "Qwen/QwQ-32B"))
    beside = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000, owner=False)  # as an admin command would
    try:
        await beside.store.set_setting(scope, "model", None)
        assert await eventually(lambda: _is(second.store.setting(scope, "model"), None))
    finally:
        await beside.close()

    # Remembered: a change nobody announces (written behind iobot's back) is not seen ...
    admin = await asyncpg.connect(postgres_url)
    try:
        await admin.execute("INSERT INTO settings (scope, name, value) VALUES ($1, 'model', 'unannounced')", scope)
        assert await second.store.setting(scope, "model") is None
        # ... until the replica stops hearing changes: then it forgets and reads the table.
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND objid = $1", second._instance
        )
        assert await eventually(lambda: _is(second.store.setting(scope, "model"), "unannounced"))
    finally:
        await admin.close()


async def _is(value: Awaitable[str | None], expected: str | None) -> bool:
    return await value == expected


# --- opening ---


async def test_replicas_starting_together_migrate_once(postgres_url: str) -> None:
    ledgers = await asyncio.gather(*(PostgresLedger.open(postgres_url, user_daily_tokens=1) for _ in range(4)))
    for ledger in ledgers:
        await ledger.close()
    connection = await asyncpg.connect(postgres_url)
    try:
        versions = [row[0] for row in await connection.fetch("SELECT version FROM iobot_migrations ORDER BY version")]
    finally:
        await connection.close()
    assert versions == list(range(1, len(MIGRATIONS) + 1))


async def test_opening_without_create_creates_nothing(postgres_url: str) -> None:
    with pytest.raises(FileNotFoundError):
        await PostgresLedger.open(postgres_url, user_daily_tokens=1, owner=False, create=False)
    connection = await asyncpg.connect(postgres_url)
    try:
        assert await connection.fetchval("SELECT to_regclass('iobot_migrations')") is None
    finally:
        await connection.close()


async def test_a_refused_password_is_never_echoed(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    wrong = urlunsplit(parts._replace(netloc=f"{parts.username}:not-the-Pa55word@{parts.hostname}:{parts.port}"))
    with pytest.raises(LedgerError) as refused:
        await PostgresLedger.open(wrong, user_daily_tokens=1)
    assert "not-the-Pa55word" not in str(refused.value) and "***" in str(refused.value)
    assert "password authentication failed" in str(refused.value)


# --- /healthz ---


class Proxy:
    """A TCP relay to the database, so that a test can take the database away from one ledger."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, upstream_writer]

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer), return_exceptions=True)

    async def stop(self) -> None:
        """The database is gone: no new connection, and those open are cut."""
        assert self.server is not None
        self.server.close()
        for writer in self.writers:
            writer.transport.abort()
        await self.server.wait_closed()


class IdleClient:
    last_error = None


async def healthz(ledger) -> tuple[int, dict]:
    app = make_http_app(HealthState(ledger, IdleClient(), load_quota_table()))  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1")) as http:
        response = await http.get("/healthz")
        return response.status, await response.json()


async def test_healthz_names_the_database_and_answers_503_when_postgresql_is_unreachable(postgres_url: str) -> None:
    parts = urlsplit(postgres_url)
    assert parts.hostname is not None and parts.port is not None and parts.password is not None
    proxy = Proxy(parts.hostname, parts.port)
    port = await proxy.start()
    through_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{port}"))
    ledger = await PostgresLedger.open(through_proxy, user_daily_tokens=1)
    try:
        status, body = await healthz(ledger)
        assert (status, body["database"], body["status"]) == (200, {"kind": "postgresql", "ok": True}, "ok")
        await proxy.stop()
        status, body = await healthz(ledger)
        assert (status, body["database"], body["status"]) == (503, {"kind": "postgresql", "ok": False}, "failing")
        assert parts.password not in json.dumps(body)
    finally:
        await ledger.close()


async def test_healthz_names_a_sqlite_ledger(ledger) -> None:
    status, body = await healthz(ledger)
    assert (status, body["database"]) == (200, {"kind": "sqlite", "ok": True})
    await ledger.close()
    status, body = await healthz(ledger)
    assert (status, body["database"]) == (503, {"kind": "sqlite", "ok": False})


# --- the admin commands ---


async def iobot(postgres_url: str, workdir: Path, *args: str, stdin: str = "") -> tuple[int, str, str]:
    """`iobot <args>` in a process of its own with the ledger at `postgres_url`: exit code, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IOBOT_", "IOINTELLIGENCE_", "SLACK_", "DISCORD_"))}
    env.update(IOBOT_DATABASE_URL=postgres_url, IOBOT_HOST="127.0.0.1", IOBOT_PORT="0", USER="tester", LOGNAME="tester")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        "import sys; from bots.cli import main; sys.exit(main())",
        *args,
        cwd=workdir,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(stdin.encode()), timeout=60)
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_admin_commands_on_a_database_without_a_ledger_exit_2_and_create_nothing(postgres_url: str, tmp_path) -> None:
    password = urlsplit(postgres_url).password
    assert password
    for command in (["usage"], ["usage", "--json"], ["limits"], ["limits", ANN, "900"]):
        code, stdout, stderr = await iobot(postgres_url, tmp_path, *command)
        assert code == 2, (command, stderr)
        assert "there is no iobot ledger in the PostgreSQL database" in stderr and "IOBOT_DATABASE_URL" in stderr
        assert password not in stdout + stderr
    code, stdout, _ = await iobot(postgres_url, tmp_path, "models")
    assert code == 0 and "Llama-3.3-70B-Instruct" in stdout, "the quota table, with no use"
    with pytest.raises(FileNotFoundError):
        await PostgresLedger.open(postgres_url, user_daily_tokens=1, owner=False, create=False)


async def test_admin_commands_read_and_set_a_postgresql_ledger(postgres_url: str, tmp_path) -> None:
    service = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000)
    try:
        await spend(service, ANN, 1_234)
    finally:
        await service.close()
    assert (await iobot(postgres_url, tmp_path, "limits", ANN, "900"))[0] == 0
    code, stdout, stderr = await iobot(postgres_url, tmp_path, "usage", "--json")
    assert code == 0, stderr
    [row] = json.loads(stdout)
    assert (row["user"], row["model"], row["total_tokens"], row["user_limit"]) == (ANN, LLAMA, 1_234, 900)
    code, stdout, _ = await iobot(postgres_url, tmp_path, "usage")
    assert code == 0 and ANN in stdout and "1,234" in stdout
    code, stdout, _ = await iobot(postgres_url, tmp_path, "check", "--emulator")
    assert (code, stdout.splitlines()[-1]) == (0, "0 error(s), 0 warning(s)"), stdout


async def test_postgresql_and_sqlite_lay_out_the_same_usage_table(postgres_url: str, tmp_path) -> None:
    """PostgreSQL formats the rows in Python, SQLite with printf: the same use must print the same table."""
    sqlite = await SQLiteLedger.open(str(tmp_path / "ledger.sqlite3"), user_daily_tokens=10**12)
    pg = await PostgresLedger.open(postgres_url, user_daily_tokens=10**12)
    try:
        for ledger in (sqlite, pg):
            for user, tokens in ((ANN, 1_234_567), (BOB, 3), ('console:Åsa"%s', 40)):
                await spend(ledger, user, tokens)
            await ledger.set_user_limit(BOB, 9)
        for person in (None, ANN, "console:nobody"):
            assert await pg.usage_table(user=person) == await sqlite.usage_table(user=person)
        assert len((await pg.usage_table()).lines) == 3
    finally:
        await sqlite.close()
        await pg.close()


async def test_iobot_check_reports_an_unreachable_database_and_a_missing_ledger(postgres_url: str, tmp_path) -> None:
    code, stdout, _ = await iobot(postgres_url, tmp_path, "check", "--emulator")
    assert code == 0 and "warning: no iobot ledger in the PostgreSQL database" in stdout and "iobot run creates it" in stdout
    unreachable = "postgresql://bob:Pa55word@127.0.0.1:9/iobot"  # the discard port: nothing listens
    code, stdout, _ = await iobot(unreachable, tmp_path, "check", "--emulator")
    assert code == 1 and "error: IOBOT_DATABASE_URL: cannot connect" in stdout and "bob:***@127.0.0.1:9" in stdout
    assert "Pa55word" not in stdout


async def test_iobot_run_answers_and_charges_on_postgresql(postgres_url: str, tmp_path) -> None:
    code, stdout, stderr = await iobot(postgres_url, tmp_path, "run", "--emulator", stdin="ask hello there\nask again\n")
    assert code == 0, stderr
    assert stdout.count("you asked") == 2, stdout
    password = urlsplit(postgres_url).password
    assert password and password not in stderr
    ledger = await PostgresLedger.open(postgres_url, user_daily_tokens=50_000, owner=False, create=False)
    try:
        [row] = await ledger.usage(user="console:tester")
        assert row.requests == 2 and row.total_tokens > 0
    finally:
        await ledger.close()


@pytest.mark.parametrize("ci", [False, True])
def test_without_a_server_the_postgresql_tests_are_skipped_except_under_ci(ci: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("IOBOT_TEST_POSTGRES_URL", "CI")}
    if ci:
        env["CI"] = "1"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-o",
            "addopts=",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            f"{__file__}::test_replicas_starting_together_migrate_once",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).parents[1],
        env=env,
    )
    if ci:
        assert result.returncode == 1 and "CI is set but IOBOT_TEST_POSTGRES_URL is not" in result.stdout, result.stdout
    else:
        assert result.returncode == 0 and "1 skipped" in result.stdout, result.stdout
        assert "set IOBOT_TEST_POSTGRES_URL (.ci/postgres start) to run the PostgreSQL tests" in result.stdout
