"""The IO Intelligence emulator, over real HTTP on 127.0.0.1, as a client of the API sees it."""

from __future__ import annotations

import base64
import io
import json
import math

import httpx
import openai
import pytest
from PIL import Image

from core.quotas import load_quota_table, parse_quota_table
from emulator import Emulator, Fault

CHAT_MODEL = "meta-llama/Llama-3.3-70B-Instruct"
VISION_MODEL = "meta-llama/Llama-3.2-90B-Vision-Instruct"
REASONING_MODEL = "deepseek-ai/DeepSeek-R1"
SMALL_MODEL = "nvidia/AceMath-7B-Instruct"  # context length 4000
AUTH = {"Authorization": "Bearer io-v2-test-key"}


@pytest.fixture
async def emu():
    async with Emulator() as emulator:
        yield emulator


@pytest.fixture
async def client(emu: Emulator):
    async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
        yield http


def chat_body(content: str | list, model: str = CHAT_MODEL, **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def data_url(image_format: str = "PNG", size: tuple[int, int] = (64, 48)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 40, 40)).save(buffer, image_format)
    return f"data:image/{image_format.lower()};base64,{base64.b64encode(buffer.getvalue()).decode()}"


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def sse_payloads(raw: str) -> list[str]:
    """The `data:` payloads of an SSE body, checking the framing on the way."""
    events = raw.split("\n\n")
    assert events[-1] == ""
    assert all(event.startswith("data: ") and "\n" not in event for event in events[:-1])
    return [event.removeprefix("data: ") for event in events[:-1]]


def error_message(response: httpx.Response) -> str:
    """The message of an error body, checking that FastAPI-style (`detail`) and OpenAI-style
    (`error.message`) clients both read it."""
    body = response.json()
    assert body["error"]["message"] == body["detail"]
    assert body["error"]["code"] == response.status_code and body["error"]["type"]
    return body["detail"]


# --- chat completions ------------------------------------------------------------------------------


async def test_base_url_is_local(emu: Emulator) -> None:
    assert emu.base_url.startswith("http://127.0.0.1:")
    assert emu.base_url.endswith("/api/v1")


async def test_chat_completion_shape_and_usage(client: httpx.AsyncClient) -> None:
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": [{"type": "text", "text": "What is the capital of France?"}]},
    ]
    response = await client.post("/chat/completions", json={"model": CHAT_MODEL, "messages": messages})

    assert response.status_code == 200
    reply = response.json()
    assert reply["id"].startswith("chatcmpl-")
    assert reply["object"] == "chat.completion"
    assert isinstance(reply["created"], int)
    assert reply["model"] == CHAT_MODEL
    [choice] = reply["choices"]
    assert choice["index"] == 0
    assert choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    content = choice["message"]["content"]
    assert "Llama-3.3-70B-Instruct" in content
    assert '"What is the capital of France?"' in content
    assert "3 earlier messages" in content
    assert "reasoning_content" not in choice["message"]
    texts = ["You are helpful.", "Hi", "Hello! How can I help?", "What is the capital of France?"]
    prompt_tokens = sum(4 + math.ceil(len(text) / 4) for text in texts)
    completion_tokens = math.ceil(len(content) / 4)
    assert reply["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


async def test_answers_are_deterministic(client: httpx.AsyncClient) -> None:
    first = await client.post("/chat/completions", json=chat_body("Same question?"))
    second = await client.post("/chat/completions", json=chat_body("Same question?"))
    assert first.json()["choices"] == second.json()["choices"]
    assert first.json()["id"] != second.json()["id"]


async def test_reasoning_model_returns_reasoning_content(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body("Why is the sky blue?", REASONING_MODEL))
    message = response.json()["choices"][0]["message"]
    assert "Why is the sky blue?" in message["reasoning_content"]
    assert "Why is the sky blue?" in message["content"]
    assert message["reasoning_content"] != message["content"]


async def test_max_tokens_cuts_the_answer(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body("Tell me everything.", max_tokens=5))
    reply = response.json()
    assert reply["choices"][0]["finish_reason"] == "length"
    assert len(reply["choices"][0]["message"]["content"]) == 20
    assert reply["usage"]["completion_tokens"] == 5


async def test_long_directive_gives_paragraphs_around_one_code_block(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body("emulate:long=6000 please"))
    content = response.json()["choices"][0]["message"]["content"]
    assert 5500 <= len(content) <= 6500
    before, code, after = content.split("```")
    assert code.startswith("python\n")
    assert 28 <= len(code.strip().splitlines()) <= 32
    assert len(before) > 2000 and len(after) > 2000
    assert "\n\n" in before and "\n\n" in after


async def test_stream_framing_with_usage(client: httpx.AsyncClient) -> None:
    plain = await client.post("/chat/completions", json=chat_body("Stream this answer, please."))
    body = chat_body("Stream this answer, please.", stream=True, stream_options={"include_usage": True})
    response = await client.post("/chat/completions", json=body)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    chunks = [json.loads(payload) for payload in payloads[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    pieces = [chunk["choices"][0]["delta"]["content"] for chunk in chunks[1:-2]]
    assert len(pieces) > 3
    assert "".join(pieces) == plain.json()["choices"][0]["message"]["content"]
    assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == plain.json()["usage"]


async def test_stream_without_usage_ends_with_finish_chunk(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body("No usage, please.", stream=True))
    payloads = sse_payloads(response.text)
    assert payloads[-1] == "[DONE]"
    last = json.loads(payloads[-2])
    assert last["choices"][0]["finish_reason"] == "stop"
    assert "usage" not in last


async def test_reasoning_model_streams_reasoning_before_content(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body("Think first.", REASONING_MODEL, stream=True))
    deltas = [json.loads(payload)["choices"][0]["delta"] for payload in sse_payloads(response.text)[1:-2]]
    kinds = [next(iter(delta)) for delta in deltas]
    first_content = kinds.index("content")
    assert first_content > 0
    assert set(kinds[:first_content]) == {"reasoning_content"}
    assert set(kinds[first_content:]) == {"content"}


@pytest.mark.parametrize(
    ("headers", "detail"),
    [
        ({}, "Not authenticated"),
        ({"Authorization": "Basic abc"}, "Not authenticated"),
        ({"Authorization": "Bearer"}, "Not authenticated"),
        ({"Authorization": "Bearer io-v2-wrong"}, "Invalid API key"),
    ],
)
async def test_auth_refusals(headers: dict, detail: str) -> None:
    async with Emulator(api_key="io-v2-right") as emu, httpx.AsyncClient(base_url=emu.base_url) as http:
        response = await http.post("/chat/completions", json=chat_body("hi"), headers=headers)
        assert response.status_code == 401
        assert error_message(response) == detail
        assert "io-v2" not in response.text
        ok = await http.get("/models", headers={"Authorization": "Bearer io-v2-right"})
        assert ok.status_code == 200
        assert [recorded.authorized for recorded in emu.requests] == [False, True]


async def test_any_bearer_token_works_without_api_key(client: httpx.AsyncClient) -> None:
    response = await client.get("/agents", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 200


@pytest.mark.parametrize("model", ["no/such-model", "BAAI/bge-multilingual-gemma2"])
async def test_unknown_or_non_chat_model_is_404(client: httpx.AsyncClient, model: str) -> None:
    response = await client.post("/chat/completions", json=chat_body("hi", model))
    assert response.status_code == 404
    assert error_message(response) == f"Model '{model}' not found"


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ("{not json", ["body", 1]),
        ([1, 2], ["body"]),
        ({"model": CHAT_MODEL}, ["body", "messages"]),
        ({"model": CHAT_MODEL, "messages": []}, ["body", "messages"]),
        ({"messages": [{"role": "user", "content": "hi"}]}, ["body", "model"]),
        ({"model": CHAT_MODEL, "messages": [{"role": "robot", "content": "hi"}]}, ["body", "messages", 0, "role"]),
        ({"model": CHAT_MODEL, "messages": [{"role": "user"}]}, ["body", "messages", 0, "content"]),
        (
            {"model": CHAT_MODEL, "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
            ["body", "messages", 0, "content", 0],
        ),
        (
            {"model": CHAT_MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
            ["body", "messages", 0, "content", 0],
        ),
        (chat_body("hi", max_tokens=0), ["body", "max_tokens"]),
        (chat_body("hi", stream="yes"), ["body", "stream"]),
    ],
)
async def test_malformed_chat_body_is_422(client: httpx.AsyncClient, body: object, loc: list) -> None:
    content = body if isinstance(body, str) else json.dumps(body)
    response = await client.post("/chat/completions", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == loc
    assert error["msg"] and error["type"]


async def test_unknown_path_and_wrong_method(client: httpx.AsyncClient) -> None:
    assert (await client.get("/nothing/here")).status_code == 404
    assert (await client.get("/chat/completions")).status_code == 405


# --- images ----------------------------------------------------------------------------------------


async def test_vision_model_describes_each_image(client: httpx.AsyncClient) -> None:
    content = [
        {"type": "text", "text": "What do these show?"},
        image_part(data_url("PNG", (640, 480))),
        image_part(data_url("JPEG", (32, 20))),
        image_part("https://example.com/cat.jpg"),
    ]
    response = await client.post("/chat/completions", json=chat_body(content, VISION_MODEL))

    assert response.status_code == 200
    reply = response.json()
    answer = reply["choices"][0]["message"]["content"]
    assert "Image 1: PNG, 640x480 pixels." in answer
    assert "Image 2: JPEG, 32x20 pixels." in answer
    assert "Image 3: (linked image)" in answer
    assert '"What do these show?"' in answer
    assert reply["usage"]["prompt_tokens"] == 4 + math.ceil(len("What do these show?") / 4) + 3 * 1000


async def test_text_only_model_answers_in_prose_about_images(client: httpx.AsyncClient) -> None:
    content = [{"type": "text", "text": "What is this?"}, image_part(data_url())]
    response = await client.post("/chat/completions", json=chat_body(content, CHAT_MODEL))
    assert response.status_code == 200
    answer = response.json()["choices"][0]["message"]["content"]
    assert "text-only model" in answer and "can't see images" in answer
    assert '"What is this?"' in answer


async def test_more_than_ten_images_is_400(client: httpx.AsyncClient) -> None:
    content = [{"type": "text", "text": "Many"}, *[image_part("https://example.com/a.png")] * 11]
    response = await client.post("/chat/completions", json=chat_body(content, VISION_MODEL))
    assert response.status_code == 400
    assert error_message(response) == "At most 10 images per request"


@pytest.mark.parametrize(
    "url",
    [
        "data:text/plain;base64," + base64.b64encode(b"hello").decode(),
        "data:image/bmp;base64," + base64.b64encode(b"BM").decode(),
        "data:image/png;base64,%%%not-base64%%%",
        "data:image/png;base64," + base64.b64encode(b"these bytes are no image").decode(),
        data_url("PNG", (4097, 8)),
        "ftp://example.com/cat.png",
    ],
)
async def test_bad_image_is_400(client: httpx.AsyncClient, url: str) -> None:
    response = await client.post("/chat/completions", json=chat_body([image_part(url)], VISION_MODEL))
    assert response.status_code == 400
    assert response.json()["detail"].startswith("Invalid image: ")


async def test_image_over_20_mb_is_400(client: httpx.AsyncClient) -> None:
    payload = base64.b64encode(bytes(20 * 1024 * 1024 + 1)).decode()
    response = await client.post(
        "/chat/completions", json=chat_body([image_part(f"data:image/png;base64,{payload}")], VISION_MODEL)
    )
    assert response.status_code == 400
    assert error_message(response) == "Invalid image: larger than 20 MB"


async def test_truncated_image_is_400(client: httpx.AsyncClient) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (200, 200), (10, 20, 30)).save(buffer, "PNG")
    truncated = base64.b64encode(buffer.getvalue()[:-40]).decode()
    response = await client.post(
        "/chat/completions", json=chat_body([image_part(f"data:image/png;base64,{truncated}")], VISION_MODEL)
    )
    assert response.status_code == 400


# --- context length ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "text_length", "max_tokens", "limit", "prompt"),
    [
        (SMALL_MODEL, 16_000, None, 4000, 4004),
        (SMALL_MODEL, 15_000, 300, 4000, 3754),
        ("Qwen/Qwen2-VL-7B-Instruct", 32_000, None, 8000, 8004),  # no length in the table: 8000
    ],
)
async def test_over_context_length_is_400(
    client: httpx.AsyncClient, model: str, text_length: int, max_tokens: int | None, limit: int, prompt: int
) -> None:
    body = chat_body("x" * text_length, model, **({"max_tokens": max_tokens} if max_tokens else {}))
    response = await client.post("/chat/completions", json=body)
    assert response.status_code == 400
    completion = max_tokens or 0
    message = (
        f"This model's maximum context length is {limit} tokens. However, you requested "
        f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
        "Please reduce the length of the messages or completion."
    )
    body = response.json()
    assert error_message(response) == message
    assert {key: body[key] for key in ("object", "message", "type", "param", "code")} == {
        "object": "error",
        "message": message,
        "type": "BadRequestError",
        "param": None,
        "code": 400,
    }, "vLLM's own fields too"


async def test_just_under_context_length_is_answered(client: httpx.AsyncClient) -> None:
    response = await client.post("/chat/completions", json=chat_body("x" * 15_000, SMALL_MODEL, max_tokens=246))
    assert response.status_code == 200


# --- models, agents, workflows ---------------------------------------------------------------------


async def test_models_in_both_shapes_at_once(client: httpx.AsyncClient) -> None:
    response = await client.get("/models")
    reply = response.json()
    table = load_quota_table()
    assert reply["object"] == "list"
    assert [model["name"] for model in reply["data"]] == [row.name for row in table]
    assert all(model["id"] == model["name"] and model["object"] == "model" for model in reply["data"])
    assert reply["pagination"] == {"page": 1, "page_size": len(table), "total": len(table)}
    by_name = {model["name"]: model for model in reply["data"]}
    assert by_name[VISION_MODEL]["model_id"] == VISION_MODEL
    assert by_name[VISION_MODEL]["metadata"] == {"context_window": 16_000, "supports_images_input": True}
    assert by_name[CHAT_MODEL]["metadata"]["supports_images_input"] is False


async def test_models_openai_shape_from_a_custom_table() -> None:
    table = parse_quota_table('[[model]]\nname = "acme/one"\n\n[[model]]\nname = "acme/two"\nimages = true\n')
    async with Emulator(table, models_shape="openai") as emu, httpx.AsyncClient(headers=AUTH) as http:
        reply = (await http.get(emu.base_url + "/models")).json()
    assert reply["object"] == "list"
    assert [model["id"] for model in reply["data"]] == ["acme/one", "acme/two"]
    assert all(model["object"] == "model" and model["owned_by"] == "io-intelligence" for model in reply["data"])
    assert all(isinstance(model["created"], int) for model in reply["data"])


async def test_agents_listing(client: httpx.AsyncClient) -> None:
    agents = (await client.get("/agents")).json()["agents"]
    assert set(agents) == {
        "summary_agent",
        "sentiment_analysis_agent",
        "extractor",
        "translation_agent",
        "classification_agent",
        "moderation_agent",
        "reasoning_agent",
        "custom_agent",
    }
    for agent in agents.values():
        assert agent["name"] and agent["description"]
        assert agent["persona"] is None
        assert agent["metadata"] == {"image_url": None, "tags": ["text"]}


async def test_workflow_schema_lists_every_task(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/workflows/schema")).json()
    assert schema["type"] == "object"
    variants = {variant["title"]: variant for variant in schema["properties"]["args"]["oneOf"]}
    assert set(variants) == {
        "summarize_text",
        "sentiment",
        "extract_categorized_entities",
        "translate_text",
        "classify",
        "moderation",
        "solve_with_reasoning",
        "custom",
    }
    assert variants["translate_text"]["required"] == ["type", "target_language"]


async def run(client: httpx.AsyncClient, text: str, agent: str, **args) -> httpx.Response:
    return await client.post("/workflows/run", json={"text": text, "agent_names": [agent], "args": args})


async def test_summarize(client: httpx.AsyncClient) -> None:
    text = "The cat sat. The dog ran! Birds sing? Fish swim."
    response = await run(client, text, "summary_agent", type="summarize_text", max_words=4)
    assert response.json() == {
        "result": {"summary": "The cat sat. The...", "key_points": ["The cat sat.", "The dog ran!", "Birds sing?"]}
    }
    default = await run(client, text, "summary_agent", type="summarize_text")
    assert default.json()["result"]["summary"] == text


async def test_sentiment(client: httpx.AsyncClient) -> None:
    async def score(text: str) -> float:
        return (await run(client, text, "sentiment_analysis_agent", type="sentiment")).json()["result"]

    assert await score("The sky is blue.") == 0.5
    assert 0.5 < await score("I love it, a great and wonderful day") <= 1
    assert 0 <= await score("Terrible, awful, broken service") < 0.5


async def test_entities(client: httpx.AsyncClient) -> None:
    text = "Alice met Bob Smith at Acme Corp in Paris on Monday, March 3, 2024 before the Web Summit."
    response = await run(client, text, "extractor", type="extract_categorized_entities")
    assert response.json()["result"] == {
        "persons": ["Bob Smith"],
        "organizations": ["Acme Corp"],
        "locations": ["Paris"],
        "dates": ["Monday", "March 3, 2024"],
        "events": ["Web Summit"],
    }
    only_names = await run(client, "Yesterday Carol called Dave.", "extractor", type="extract_categorized_entities")
    assert only_names.json()["result"] == {"persons": ["Carol", "Dave"]}


async def test_translate_classify_reason_custom(client: httpx.AsyncClient) -> None:
    translated = await run(client, "Good morning", "translation_agent", type="translate_text", target_language="French")
    assert translated.json() == {"result": "[French] Good morning"}

    labels = ["billing", "bug", "praise"]
    found = await run(client, "I found a BUG at checkout", "classification_agent", type="classify", classify_by=labels)
    assert found.json() == {"result": "bug"}
    fallback = await run(client, "Hello there", "classification_agent", type="classify", classify_by=labels)
    assert fallback.json() == {"result": "billing"}

    solved = (await run(client, "What is 2 + 2?", "reasoning_agent", type="solve_with_reasoning")).json()["result"]
    lines = solved.splitlines()
    assert lines[0].startswith("1. ") and "What is 2 + 2?" in lines[0]
    assert lines[-1].startswith("Answer:")

    custom = await run(
        client, "some text", "custom_agent", type="custom", name="Rhymer", objective="Rhyme", instructions="Be brief"
    )
    assert isinstance(custom.json()["result"], str) and "some text" in custom.json()["result"]


async def test_moderation(client: httpx.AsyncClient) -> None:
    categories = {
        "extreme_profanity",
        "sexually_explicit",
        "hate_speech",
        "harassment",
        "self_harm",
        "dangerous_content",
    }
    clean = (await run(client, "Lovely weather today.", "moderation_agent", type="moderation", threshold=0.5)).json()
    assert set(clean["result"]) == categories
    assert all(score < 0.1 for score in clean["result"].values())
    rude = (await run(client, "You are an idiot.", "moderation_agent", type="moderation", threshold=0.5)).json()
    assert rude["result"]["harassment"] > 0.5
    assert rude["result"]["self_harm"] < 0.1


async def test_objective_stands_in_for_text(client: httpx.AsyncClient) -> None:
    body = {
        "objective": "Hola",
        "agent_names": ["translation_agent"],
        "args": {"type": "translate_text", "target_language": "English"},
    }
    response = await client.post("/workflows/run", json=body)
    assert response.json() == {"result": "[English] Hola"}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"agent_names": ["summary_agent"], "args": {"type": "summarize_text"}}, ["body", "text"]),
        ({"text": "x", "agent_names": ["summary_agent"]}, ["body", "args"]),
        ({"text": "x", "args": {"type": "reasoning_step"}}, ["body", "args"]),
        ({"text": "x", "args": {"type": "translate_text"}}, ["body", "args", "translate_text", "target_language"]),
        ({"text": "x", "args": {"type": "classify", "classify_by": []}}, ["body", "args", "classify", "classify_by"]),
        ({"text": "x", "args": {"type": "moderation"}}, ["body", "args", "moderation", "threshold"]),
        ({"text": "x", "args": {"type": "custom", "name": "n", "objective": "o"}}, ["body", "args", "custom", "instructions"]),
        ({"text": "x", "args": {"type": "summarize_text", "max_words": "ten"}}, ["body", "args", "summarize_text", "max_words"]),
    ],
)
async def test_malformed_workflow_is_422(client: httpx.AsyncClient, body: dict, loc: list) -> None:
    response = await client.post("/workflows/run", json=body)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [loc]
    [error] = response.json()["detail"]
    assert response.json()["error"]["message"] == f"{'.'.join(map(str, loc))}: {error['msg']}"


async def test_answer_delay_slows_chat_and_workflows_only() -> None:
    async with Emulator(answer_delay=0.3) as emu:
        async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH, timeout=0.05) as impatient:
            with pytest.raises(httpx.ReadTimeout):
                await impatient.post("/chat/completions", json=chat_body("hi"))
            with pytest.raises(httpx.ReadTimeout):
                await run(impatient, "x", "reasoning_agent", type="solve_with_reasoning")
        async with httpx.AsyncClient(base_url=emu.base_url, headers=AUTH, timeout=0.25) as http:
            assert (await http.get("/models")).status_code == 200
            assert (await http.get("/agents")).status_code == 200


# --- faults ----------------------------------------------------------------------------------------


async def test_status_fault_counts_down(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.inject(Fault("status", status=429, retry_after="1", times=2))
    for _ in range(2):
        response = await client.post("/chat/completions", json=chat_body("hi"))
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "1"
        assert error_message(response) == "Too Many Requests"
    assert (await client.post("/chat/completions", json=chat_body("hi"))).status_code == 200
    assert [recorded.fault for recorded in emu.requests] == ["status", "status", None]


async def test_status_fault_without_retry_after(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.inject(Fault("status", status=503))
    response = await client.get("/models")
    assert response.status_code == 503
    assert "Retry-After" not in response.headers
    assert error_message(response) == "Service Unavailable"


async def test_html_fault(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.inject(Fault("html", status=502))
    response = await client.post("/chat/completions", json=chat_body("hi"))
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text and "502" in response.text and "Cloudflare" in response.text


async def test_slow_fault_delays_then_answers(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.inject(Fault("slow", delay=0.3))
    with pytest.raises(httpx.ReadTimeout):
        await client.post("/chat/completions", json=chat_body("hi"), timeout=0.05)
    emu.inject(Fault("slow", delay=0.01))
    response = await client.post("/chat/completions", json=chat_body("hi"))
    assert response.status_code == 200
    assert [recorded.fault for recorded in emu.requests] == ["slow", "slow"]


async def test_cut_stream_fault_on_a_stream(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.inject(Fault("cut_stream"))
    lines = []
    with pytest.raises(httpx.RemoteProtocolError):
        async with client.stream("POST", "/chat/completions", json=chat_body("Cut me off", stream=True)) as response:
            assert response.status_code == 200
            async for line in response.aiter_lines():
                lines.append(line)
    payloads = [line.removeprefix("data: ") for line in lines if line]
    assert len(payloads) == 3
    assert "[DONE]" not in payloads
    assert [next(iter(json.loads(p)["choices"][0]["delta"])) for p in payloads[1:]] == ["content", "content"]


async def test_cut_stream_fault_on_a_json_answer(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.inject(Fault("cut_stream", path="/workflows/run"))
    with pytest.raises(httpx.RemoteProtocolError):
        await run(client, "x", "translation_agent", type="translate_text", target_language="German")


async def test_context_length_fault(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.inject(Fault("context_length"))
    response = await client.post("/chat/completions", json=chat_body("short", stream=True))
    assert response.status_code == 400
    body = response.json()
    assert body["object"] == "error" and body["type"] == "BadRequestError" and body["code"] == 400
    assert body["message"].startswith("This model's maximum context length is 128000 tokens.")


async def test_drop_fault(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.inject(Fault("drop"))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.get("/agents")
    assert (await client.get("/agents")).status_code == 200
    assert [recorded.fault for recorded in emu.requests] == ["drop", None]


async def test_faults_match_path_and_model(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.inject(
        Fault("status", status=503, path="/workflows/run"),
        Fault("status", status=429, model=REASONING_MODEL),
    )
    assert (await client.post("/chat/completions", json=chat_body("hi"))).status_code == 200
    assert (await client.get("/models")).status_code == 200
    assert (await client.post("/chat/completions", json=chat_body("hi", REASONING_MODEL))).status_code == 429
    assert (await run(client, "x", "reasoning_agent", type="solve_with_reasoning")).status_code == 503
    assert (await client.post("/chat/completions", json=chat_body("hi", REASONING_MODEL))).status_code == 200


async def test_clear_faults(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.inject(Fault("drop", times=5))
    emu.clear_faults()
    assert (await client.get("/models")).status_code == 200


def test_fault_rejects_unknown_kind_and_zero_times() -> None:
    with pytest.raises(ValueError):
        Fault("explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Fault("drop", times=0)


async def test_requests_are_recorded(emu: Emulator, client: httpx.AsyncClient) -> None:
    emu.inject(Fault("status", status=500))
    await client.post("/chat/completions", json=chat_body("first"))
    await client.get("/models", headers={"Authorization": ""})
    first, second = emu.requests
    assert (first.method, first.path, first.body, first.authorized, first.fault) == (
        "POST",
        "/chat/completions",
        chat_body("first"),
        True,
        "status",
    )
    assert (second.method, second.path, second.body, second.authorized, second.fault) == ("GET", "/models", None, False, None)


async def test_only_the_most_recent_requests_stay_recorded() -> None:
    async with Emulator(keep_requests=3) as emu, httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
        for number in range(5):
            await http.post("/chat/completions", json=chat_body(f"question {number}"))
        expected = [chat_body(f"question {number}") for number in (2, 3, 4)]
        assert [recorded.body for recorded in emu.requests] == expected
        control = emu.base_url.removesuffix("/api/v1") + "/_emulator"
        assert [recorded["body"] for recorded in (await http.get(control + "/requests")).json()] == expected


async def test_recorded_bodies_are_bounded_in_bytes_but_the_latest_is_kept() -> None:
    small, large = chat_body("x" * 100), chat_body("y" * 3000)
    async with Emulator(keep_body_bytes=1000) as emu, httpx.AsyncClient(base_url=emu.base_url, headers=AUTH) as http:
        for body in (small, small, small):
            await http.post("/chat/completions", json=body)
        assert [recorded.body for recorded in emu.requests] == [small, small, small]
        await http.post("/chat/completions", json=large)
        assert [recorded.body for recorded in emu.requests] == [large]
        await http.post("/chat/completions", json=small)
        assert [recorded.body for recorded in emu.requests] == [small], "the large body no longer fits beside it"
        await http.post("/chat/completions", json=large)
        emu.clear_requests()
        for body in (small, small):
            await http.post("/chat/completions", json=body)
        assert [recorded.body for recorded in emu.requests] == [small, small], "clearing forgets the large body's bytes"


def test_the_record_keeps_at_least_one_request() -> None:
    with pytest.raises(ValueError):
        Emulator(keep_requests=0)


async def test_control_endpoints(emu: Emulator, client: httpx.AsyncClient) -> None:
    control = emu.base_url.removesuffix("/api/v1") + "/_emulator"
    async with httpx.AsyncClient() as bare:  # no Authorization header
        fault = {"kind": "status", "status": 429, "retry_after": "2", "path": "/chat/completions", "times": 2}
        assert (await bare.post(control + "/faults", json=fault)).status_code == 204
        refused = await bare.post(control + "/faults", json={"kind": "explode"})
        assert refused.status_code == 400 and error_message(refused) == "Invalid fault: unknown fault kind 'explode'"
        assert (await bare.post(control + "/faults", json={"kind": "drop", "colour": "red"})).status_code == 400

        first = await client.post("/chat/completions", json=chat_body("hi"))
        assert first.status_code == 429 and first.headers["Retry-After"] == "2"
        assert (await bare.delete(control + "/faults")).status_code == 204
        assert (await client.post("/chat/completions", json=chat_body("hi"))).status_code == 200

        recorded = (await bare.get(control + "/requests")).json()
        assert [(r["method"], r["path"], r["authorized"], r["fault"]) for r in recorded] == [
            ("POST", "/chat/completions", True, "status"),
            ("POST", "/chat/completions", True, None),
        ]
        assert recorded[0]["body"] == chat_body("hi")
        assert (await bare.delete(control + "/requests")).status_code == 204
        assert (await bare.get(control + "/requests")).json() == []


# --- the official openai client --------------------------------------------------------------------


@pytest.fixture
async def openai_client(emu: Emulator):
    async with openai.AsyncOpenAI(base_url=emu.base_url, api_key="io-v2-test-key", max_retries=0) as official:
        yield official


async def test_openai_client_lists_models(openai_client: openai.AsyncOpenAI) -> None:
    models = [model async for model in openai_client.models.list()]
    assert [model.id for model in models] == [row.name for row in load_quota_table()]
    assert all(model.object == "model" and model.owned_by for model in models)


async def test_openai_client_chats(openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "What is io.net?"}], max_tokens=200
    )
    assert 'you asked "What is io.net?"' in (completion.choices[0].message.content or "")
    assert completion.choices[0].finish_reason == "stop" and completion.model == CHAT_MODEL
    usage = completion.usage
    assert usage is not None and usage.total_tokens == usage.prompt_tokens + usage.completion_tokens > 0


async def test_openai_client_streams_with_usage(openai_client: openai.AsyncOpenAI) -> None:
    stream = await openai_client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Stream this"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert 'you asked "Stream this"' in text
    assert [chunk.choices[0].finish_reason for chunk in chunks if chunk.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.completion_tokens == math.ceil(len(text) / 4)
    assert all(chunk.usage is None for chunk in chunks[:-1])


async def test_openai_client_sends_an_image_as_a_data_url(openai_client: openai.AsyncOpenAI) -> None:
    completion = await openai_client.chat.completions.create(
        model=VISION_MODEL,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": data_url()}},
                ],
            }
        ],
    )
    assert "Image 1: PNG, 64x48 pixels." in (completion.choices[0].message.content or "")
    assert completion.usage is not None and completion.usage.prompt_tokens > 1_000, "an image costs its tokens"


async def test_openai_client_reads_the_message_of_a_404(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await openai_client.chat.completions.create(model="no/such-model", messages=[{"role": "user", "content": "hi"}])
    assert str(caught.value) == "Error code: 404 - Model 'no/such-model' not found"
    assert caught.value.type == "not_found_error"


async def test_openai_client_reads_the_message_and_retry_after_of_a_429(emu: Emulator, openai_client: openai.AsyncOpenAI) -> None:
    emu.inject(Fault("status", status=429, retry_after="7", path="/chat/completions"))
    with pytest.raises(openai.RateLimitError) as caught:
        await openai_client.chat.completions.create(model=CHAT_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert str(caught.value) == "Error code: 429 - Too Many Requests"
    assert caught.value.response.headers["retry-after"] == "7" and caught.value.type == "rate_limit_error"


async def test_openai_client_reads_a_validation_error(openai_client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as caught:
        await openai_client.chat.completions.create(model=CHAT_MODEL, messages=[])
    assert "body.messages: List should have at least 1 item" in str(caught.value)


async def test_reported_usage_adds_up_what_answers_reported(emu: Emulator, client: httpx.AsyncClient) -> None:
    """`/_emulator/usage` is what accounting tests compare a ledger with: every answer's usage, and no cut stream's."""
    plain = (await client.post("/chat/completions", json=chat_body("Hello"))).json()["usage"]
    streamed = await client.post(
        "/chat/completions", json=chat_body("Hello there", stream=True, stream_options={"include_usage": True})
    )
    [usage_chunk] = [json.loads(line[6:]) for line in streamed.text.splitlines() if '"usage"' in line]
    emu.inject(Fault("cut_stream"))
    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/chat/completions", json=chat_body("Cut me off", stream=True, stream_options={"include_usage": True}))
    reported = (await client.get(emu.base_url.removesuffix("/api/v1") + "/_emulator/usage")).json()
    expected = {
        "answers": 2,
        "prompt_tokens": plain["prompt_tokens"] + usage_chunk["usage"]["prompt_tokens"],
        "completion_tokens": plain["completion_tokens"] + usage_chunk["usage"]["completion_tokens"],
    }
    assert reported == {CHAT_MODEL: expected} == emu.reported_usage
