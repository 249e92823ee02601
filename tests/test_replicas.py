"""Two `iobot run` replicas on one PostgreSQL database, behind the Slack stand-in.

What several replicas must keep from the single process: no request spends past a quota or a budget
however the load is split, every request is answered or refused exactly once, the ledger charges
what the API reported, and when one replica dies the other goes on serving while nothing settled is
lost and a redelivered event is answered once.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.ledger.postgres import PostgresLedger
from core.quotas import load_quota_table
from tests.standins.slack import SlackStandIn, command_body, event_body, signed_headers

from .processes import SECRET, Emulator, SlackReplica

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
FOOTER = "Llama-3.3-70B-Instruct · "  # an answer's cost line
FORM, JSON = "application/x-www-form-urlencoded", "application/json"


@pytest.fixture
def emulator():
    emu = Emulator()
    yield emu
    emu.stop()


async def replicas(
    tmp_path: Path, standin: SlackStandIn, emulator: Emulator, postgres_url: str, **env: str
) -> list[SlackReplica]:
    settings = dict(
        IOBOT_DATABASE_URL=postgres_url,
        IOINTELLIGENCE_API_KEY="io-v2-replica-test-key",
        IOINTELLIGENCE_BASE_URL=emulator.base_url,
        IOBOT_MODEL=MODEL,
        IOBOT_FALLBACK_MODELS="",
        IOBOT_USER_REQUESTS_PER_MINUTE="10000",
        IOBOT_API_TIMEOUT="30",
        **env,
    )
    # Both at once: migrating the schema must be safe when two replicas start together.
    return list(await asyncio.gather(*(SlackReplica(name, tmp_path).start(standin, **settings) for name in ("a", "b"))))


def text_of(post: dict[str, Any]) -> str:
    return json.dumps(post, ensure_ascii=False)


async def post_signed(http: httpx.AsyncClient, url: str, body: str, content_type: str, **headers: str) -> int:
    response = await http.post(url, content=body, headers={**signed_headers(body, SECRET, content_type), **headers})
    return response.status_code


async def test_400_requests_over_two_replicas_at_a_nearly_spent_quota_and_budget(tmp_path, postgres_url, emulator):
    budget, people, per_person = 1_200, 50, 8
    limits = load_quota_table().get(MODEL)
    assert limits is not None and limits.api_daily_tokens is not None
    model_limit = limits.api_daily_tokens
    room = 30_000  # left of the model's daily quota: fewer tokens than the people's budgets add up to
    seed = await PostgresLedger.open(postgres_url, user_daily_tokens=budget)
    try:
        await seed.set_user_limit("console:seed", model_limit)
        spent = await seed.reserve(user="console:seed", model=MODEL, tokens=model_limit - room, model_limit=model_limit)
        await seed.settle(spent, prompt_tokens=model_limit - room, completion_tokens=0, estimated=False)
    finally:
        await seed.close()

    async with SlackStandIn(bot_token="xoxb-replica-test") as standin:
        pair = await replicas(
            tmp_path, standin, emulator, postgres_url, IOBOT_USER_DAILY_TOKENS=str(budget), IOBOT_MAX_TOKENS="200"
        )
        try:
            requests = [(f"U{i % people:03d}", f"r{i}") for i in range(people * per_person)]
            async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=400)) as http:
                acks = await asyncio.gather(
                    *(
                        post_signed(
                            http,
                            pair[i % 2].url,
                            command_body(
                                f"ask question {i} from {user}", user=user, response_url=standin.response_url(key), trigger_id=key
                            ),
                            FORM,
                        )
                        for i, (user, key) in enumerate(requests)
                    )
                )
            assert acks == [200] * len(requests)
            keys = {key for _, key in requests}
            await standin.wait_for(lambda: keys <= {call.args["key"] for call in standin.calls_to("response")}, timeout=120)
            await asyncio.sleep(1)  # a second answer to any request would arrive now
        finally:
            await asyncio.gather(*(replica.stop() for replica in pair))
        responses = {key: standin.responses(key) for _, key in requests}

    assert all(len(posted) == 1 for posted in responses.values()), "every request is answered or refused exactly once"
    answered = Counter(user for user, key in requests if FOOTER in text_of(responses[key][0]))
    refusals = [posted[0] for posted in responses.values() if posted[0]["response_type"] == "ephemeral"]
    others = [
        posted[0]
        for posted in responses.values()
        if posted[0]["response_type"] != "ephemeral" and FOOTER not in text_of(posted[0])
    ]
    assert not others, f"each request is answered (with its cost) or refused privately: {others[:3]}"
    assert answered and refusals, "the load passes both limits, so some requests are answered and some refused"
    assert all("tokens" in json.dumps(refusal) for refusal in refusals), "each refusal says which limit it met"

    ledger = await PostgresLedger.open(postgres_url, user_daily_tokens=budget)
    try:
        assert await ledger.reservations_in_flight() == 0
        assert await ledger.used_today(model=MODEL) <= model_limit, "no token past the model's daily quota"
        rows = [row for row in await ledger.usage() if row.user != "console:seed"]
    finally:
        await ledger.close()
    by_person = {row.user.rsplit(":", 1)[-1]: row for row in rows}
    assert all(row.total_tokens <= budget for row in rows), "no token past anyone's budget"
    assert {user: row.requests for user, row in by_person.items()} == dict(answered), "charged once per answer"
    reported = emulator.reported_usage()[MODEL]
    assert reported["answers"] == sum(answered.values())
    assert sum(row.prompt_tokens for row in rows) == reported["prompt_tokens"]
    assert sum(row.completion_tokens for row in rows) == reported["completion_tokens"]
    assert sum(row.estimated_tokens for row in rows) == 0, "the API reported every answer's usage"


def mention(standin: SlackStandIn, i: int) -> tuple[dict[str, Any], str]:
    """A new message mentioning the bot, stored in the stand-in as Slack would, and its event id."""
    message = standin.add_message("C0REPLICA", f"U{i % 20:03d}", f"<@U0BOT> question {i}", channel_type="channel")
    return {**message, "type": "app_mention", "channel": "C0REPLICA"}, f"EvREPLICA{i:04d}"


def final_answers(standin: SlackStandIn, event: dict[str, Any]) -> list[dict[str, Any]]:
    """The bot's finished answers in the thread of `event` (the placeholder, once edited, is one of them)."""
    return [reply for reply in standin.bot_replies("C0REPLICA", event["ts"]) if "tokens" in json.dumps(reply)]


async def test_a_replica_killed_mid_load_loses_nothing_and_the_other_answers_redeliveries_once(tmp_path, postgres_url, emulator):
    total, kill_after = 160, 60
    async with SlackStandIn(bot_token="xoxb-replica-test") as standin:
        survivor, victim = await replicas(tmp_path, standin, emulator, postgres_url, IOBOT_USER_DAILY_TOKENS="1000000")
        events = [mention(standin, i) for i in range(total)]
        acked_by: dict[str, list[int]] = {"survivor": [], "victim": []}
        unacked: list[int] = []
        try:
            async with httpx.AsyncClient(timeout=10) as http:

                async def deliver(i: int, replica: SlackReplica, retry: int = 0) -> None:
                    event, event_id = events[i]
                    headers = {"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "timeout"} if retry else {}
                    try:
                        status = await post_signed(http, replica.url, event_body(event, event_id=event_id), JSON, **headers)
                    except httpx.TransportError:
                        unacked.append(i)
                        return
                    assert status == 200
                    if not retry:
                        acked_by["survivor" if replica is survivor else "victim"].append(i)

                sending = []
                for i in range(total):
                    if i == kill_after:
                        assert victim.process is not None
                        victim.process.kill()  # SIGKILL: no grace, no cleanup
                        await victim.process.wait()
                    sending.append(asyncio.create_task(deliver(i, survivor if i % 2 == 0 else victim)))
                    await asyncio.sleep(0.01)
                await asyncio.gather(*sending)
                assert unacked, "requests sent to the dead replica got no acknowledgement"
                # Slack retries what was never acknowledged, here on the surviving replica; and a
                # retry of events already answered (by either replica) must not be answered again.
                answered_before = [i for i in range(kill_after) if final_answers(standin, events[i][0])]
                redelivered = unacked + answered_before[:20]
                await asyncio.gather(*(deliver(i, survivor, retry=1) for i in redelivered))
                must_answer = set(acked_by["survivor"]) | set(unacked)
                await standin.wait_for(lambda: all(final_answers(standin, events[i][0]) for i in must_answer), timeout=120)
                await asyncio.sleep(1)  # a second answer to any event would arrive now
        finally:
            await survivor.stop()

    answers = {i: len(final_answers(standin, event)) for i, (event, _) in enumerate(events)}
    assert all(answers[i] == 1 for i in must_answer), "the survivor answers its own events and every retried one, once"
    assert all(count <= 1 for count in answers.values()), "no event is answered twice, whichever replica saw it"

    # A replica starting now (owner=True) takes over what the dead one left open: its calls in flight
    # are charged to the model as interrupted, at their estimate, and to no one.
    ledger = await PostgresLedger.open(postgres_url, user_daily_tokens=1_000_000, owner=True)
    try:
        rows = await ledger.usage()
        left_open = await ledger.reservations_in_flight()
    finally:
        await ledger.close()
    delivered = Counter(event["user"] for i, (event, _) in enumerate(events) if answers[i])
    charged = {row.user.rsplit(":", 1)[-1]: row.requests for row in rows}
    assert all(charged.get(user, 0) >= count for user, count in delivered.items()), "every answer delivered stays charged"
    reported = emulator.reported_usage()[MODEL]["answers"]
    interrupted = sum(row.interrupted_requests for row in rows)
    assert left_open == 0 and sum(charged.values()) <= reported, "nothing is charged that the API did not answer"
    assert reported <= sum(charged.values()) + interrupted, "what the API answered is settled or counted as interrupted"
