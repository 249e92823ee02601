"""Text files and PDFs: their kinds, their text, their refusals, and the service reading them into a command's input."""

from __future__ import annotations

import asyncio
import codecs
import io
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from aiohttp import web

from core import documents
from core.commands import Command, NoText, parse_command
from core.documents import (
    DEFAULT_DOCUMENT_QUESTION,
    Document,
    DocumentError,
    DocumentKind,
    DocumentLimits,
    DocumentSource,
    decode_text,
    document_kind,
    join_documents,
    read_documents,
    read_pdf,
)
from core.images import ImageBudget
from core.ledger import MemoryStore
from core.quotas import load_quota_table
from core.service import Request, Service, ServiceConfig
from core.tokens import estimate_text_tokens

from .conftest import png_bytes
from .pdfs import encrypted, pdf_bytes

MODEL = "meta-llama/Llama-3.3-70B-Instruct"
SMALL_MODEL = "nvidia/AceMath-7B-Instruct"  # a context of 4,000 tokens
VISION_MODEL = "meta-llama/Llama-3.2-90B-Vision-Instruct"
REPORT = pdf_bytes(["Quarterly report\nRevenue grew by 12 percent.", None, "Costs fell in the third quarter."])


# --- Kinds ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "media_type", "kind"),
    [
        ("report.pdf", "application/pdf", DocumentKind.PDF),
        ("scan", "application/pdf", DocumentKind.PDF),
        ("REPORT.PDF", "", DocumentKind.PDF),
        ("notes.txt", "text/plain", DocumentKind.TEXT),
        ("notes", "text/markdown", DocumentKind.TEXT),
        ("data.json", "application/json", DocumentKind.TEXT),
        ("server.log", "application/octet-stream", DocumentKind.TEXT),
        ("main.rs", "", DocumentKind.TEXT),
        ("Makefile", "", DocumentKind.TEXT),
        ("page.html", "text/html", None),
        ("song.mp3", "audio/mpeg", None),
        ("archive.zip", "application/zip", None),
    ],
)
def test_a_document_kind_comes_from_the_declared_type_or_the_extension(
    name: str, media_type: str, kind: DocumentKind | None
) -> None:
    assert document_kind(name, media_type) is kind


# --- Text ----------------------------------------------------------------------------------------


def test_text_is_utf8_with_or_without_a_byte_order_mark_and_utf16_with_one() -> None:
    assert decode_text("Grüße\r\nsecond line".encode(), "a.txt") == "Grüße\nsecond line"
    assert decode_text(codecs.BOM_UTF8 + "naïve".encode(), "a.txt") == "naïve"
    assert decode_text("日本語のメモ".encode("utf-16"), "a.txt") == "日本語のメモ"  # Python writes its mark first


@pytest.mark.parametrize(
    ("data", "message", "reason"),
    [
        (b"", "a.txt is empty.", "empty"),
        (b" \n\t", "a.txt is empty.", "empty"),
        (b"MZ\x90\x00\x03\x00\x00\x00", "a.txt is not a text file: it holds binary data.", "binary"),
        (
            "café".encode("latin-1"),
            "a.txt is not UTF-8 text, so it was not read: save it as UTF-8 and send it again.",
            "encoding",
        ),
        (
            codecs.BOM_UTF16_LE + b"\x00\xd8",
            "a.txt is not UTF-8 text, so it was not read: save it as UTF-8 and send it again.",
            "encoding",
        ),
    ],
)
def test_text_that_is_empty_binary_or_not_utf8_is_refused(data: bytes, message: str, reason: str) -> None:
    with pytest.raises(DocumentError) as refused:
        decode_text(data, "a.txt")
    assert str(refused.value) == message and refused.value.reason == reason


# --- PDFs ----------------------------------------------------------------------------------------


def test_a_pdf_is_its_pages_text_and_pages_without_text_are_skipped() -> None:
    document = read_pdf(io.BytesIO(REPORT), "report.pdf", DocumentLimits())
    assert document == Document(
        "report.pdf", "Quarterly report\nRevenue grew by 12 percent.\n\nCosts fell in the third quarter.", ()
    )


def test_a_pdf_over_the_page_cap_is_read_to_the_cap_with_a_note() -> None:
    data = pdf_bytes([f"Page {number}" for number in range(1, 6)])
    document = read_pdf(io.BytesIO(data), "long.pdf", DocumentLimits(pdf_max_pages=3))
    assert document.text == "Page 1\n\nPage 2\n\nPage 3"
    assert document.notes == ("long.pdf has 5 pages: only the first 3 were read.",)


def test_a_pdf_stops_at_its_time_bound_with_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = iter([0.0, 0.0, 1.0, 30.0, 30.0, 30.0])  # the deadline, then one reading per page
    monkeypatch.setattr(documents.time, "monotonic", lambda: next(clock))
    data = pdf_bytes(["one", "two", "three", "four"])
    document = read_pdf(io.BytesIO(data), "slow.pdf", DocumentLimits(pdf_seconds=20))
    assert document.text == "one\n\ntwo"
    assert document.notes == ("slow.pdf took long to read: only its first 2 of 4 pages were read.",)


@pytest.mark.parametrize(
    ("data", "message", "reason"),
    [
        (encrypted(REPORT), "report.pdf is encrypted, so it could not be read: send an unprotected copy", "encrypted"),
        (encrypted(REPORT, password=""), "report.pdf is encrypted", "encrypted"),
        (pdf_bytes([None, None]), "report.pdf has no text to read: its pages are probably scanned images.", "no_text"),
        (REPORT[:300], "report.pdf could not be read: the file is damaged or not a PDF.", "damaged"),
        (b"%PDF-1.7\n" + bytes(range(256)) * 40, "report.pdf could not be read: the file is damaged or not a PDF.", "damaged"),
        (b"", "report.pdf could not be read: the file is damaged or not a PDF.", "damaged"),
    ],
)
def test_an_encrypted_scanned_or_damaged_pdf_is_refused(data: bytes, message: str, reason: str) -> None:
    with pytest.raises(DocumentError) as refused:
        read_pdf(io.BytesIO(data), "report.pdf", DocumentLimits())
    assert str(refused.value).startswith(message) and refused.value.reason == reason


# --- Downloading and reading -----------------------------------------------------------------------


@dataclass
class FileServer:
    """Files at http://127.0.0.1:PORT/<name>; `endless.txt` streams text until the client hangs up."""

    base: str = ""
    files: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)
    streamed: int = 0

    def source(self, name: str, kind: DocumentKind = DocumentKind.TEXT, size: int | None = None) -> DocumentSource:
        return DocumentSource(name, f"{self.base}/{name}", kind, size=size)


@pytest.fixture
async def files() -> AsyncIterator[FileServer]:
    server = FileServer()

    async def serve(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        server.hits.append(name)
        if name == "endless.txt":
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            for _ in range(10_000):
                await response.write(b"all work and no play " * 3000)
                server.streamed += 63_000
            return response
        if name not in server.files:
            raise web.HTTPNotFound()
        body, content_type = server.files[name]
        return web.Response(body=body, headers={"Content-Type": content_type})

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield server
    await runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


async def read(files: FileServer, http: httpx.AsyncClient, *sources: DocumentSource, limits: DocumentLimits = DocumentLimits()):
    return await read_documents(sources, limits, http=http, budget=ImageBudget(64 * 1024 * 1024), allow_loopback=True)


async def test_documents_are_downloaded_and_read_in_order_with_refusals_apart(files: FileServer, http: httpx.AsyncClient) -> None:
    files.files = {
        "notes.md": (b"# Notes\nShip on Friday.", "text/markdown"),
        "report.pdf": (REPORT, "application/pdf"),
        "tool.txt": (b"\x7fELF\x02\x01\x01\x00\x00", "text/plain"),
        "named.txt": (REPORT, "text/plain"),  # the content says PDF
    }
    read_ok, refusals = await read(
        files,
        http,
        files.source("notes.md"),
        files.source("report.pdf", DocumentKind.PDF),
        files.source("tool.txt"),
        files.source("named.txt"),
        files.source("missing.txt"),
    )
    assert [(document.name, document.text[:16]) for document in read_ok] == [
        ("notes.md", "# Notes\nShip on "),
        ("report.pdf", "Quarterly report"),
        ("named.txt", "Quarterly report"),
    ]
    assert [str(refusal) for refusal in refusals] == [
        "tool.txt is not a text file: it holds binary data.",
        "Could not download missing.txt: the server answered HTTP 404.",
    ]


async def test_a_download_is_cut_off_at_the_limit_while_streaming(files: FileServer, http: httpx.AsyncClient) -> None:
    read_ok, [refusal] = await read(files, http, files.source("endless.txt"))
    assert read_ok == [] and str(refusal) == "endless.txt is over the 1 MB limit for text files."
    assert files.streamed < 630_000_000  # the server was cut off long before its end


async def test_a_web_page_instead_of_the_file_is_refused(files: FileServer, http: httpx.AsyncClient) -> None:
    files.files = {"notes.txt": (b"<html>Sign in</html>", "text/html")}
    _, [refusal] = await read(files, http, files.source("notes.txt"))
    assert str(refusal) == "Could not download notes.txt: a web page came back instead of the file."


async def test_a_pdf_page_that_never_ends_is_given_up_on_while_the_loop_serves_others(
    files: FileServer, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()

    def stuck(file: object, name: str, limits: DocumentLimits) -> Document:
        release.wait(10)
        return Document(name, "late")

    monkeypatch.setattr(documents, "read_pdf", stuck)
    monkeypatch.setattr(documents, "PDF_GRACE", 0.0)
    files.files = {"stuck.pdf": (REPORT, "application/pdf")}
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    ticker = asyncio.create_task(tick())
    try:
        _, [refusal] = await read(
            files, http, files.source("stuck.pdf", DocumentKind.PDF), limits=DocumentLimits(pdf_seconds=0.3)
        )
    finally:
        release.set()
        ticker.cancel()
    assert str(refusal) == "stuck.pdf took too long to read." and refusal.reason == "slow"
    assert ticks > 5, "the event loop kept running while the PDF was read"


# --- Into the model's input ----------------------------------------------------------------------


def test_documents_follow_the_words_whole_when_they_fit() -> None:
    text, notes = join_documents(
        "What is due?", [Document("a.txt", "Ship Friday."), Document('b "2".md', "Test.")], 1000, "X's context"
    )
    assert text == 'What is due?\n\n<file name="a.txt">\nShip Friday.\n</file>\n\n<file name="b \'2\'.md">\nTest.\n</file>'
    assert notes == []


def test_a_document_too_long_is_cut_at_a_word_and_those_after_it_left_out() -> None:
    long = Document("long.txt", "word " * 3000)  # 15,000 bytes
    text, notes = join_documents("Sum up", [long, Document("after.txt", "more")], 1000, "X's context")  # 3,000 bytes
    assert len(text.encode()) <= 3000 and text.startswith('Sum up\n\n<file name="long.txt">\nword word')
    assert text.endswith("word\n</file>") and "after.txt" not in text
    assert notes == [
        "long.txt is too long for X's context: only its first 19% was read.",
        "after.txt was left out: it does not fit X's context beside the rest.",
    ]


def test_no_room_for_any_document_is_refused() -> None:
    with pytest.raises(DocumentError) as refused:
        join_documents("x" * 2900, [Document("a.txt", "text " * 100)], 1000, "X's context")
    assert str(refused.value) == "a.txt cannot fit X's context beside this message: please shorten the message."


@pytest.mark.parametrize(
    ("line", "partial"),
    [
        ("summarize", Command("summarize")),
        ("summarize 50", Command("summarize", max_words=50)),
        ('translate "Simplified Chinese"', Command("translate", language="Simplified Chinese")),
        ("classify bug,feature", Command("classify", labels=("bug", "feature"))),
        ("ask", Command("ask")),
        ("sentiment", Command("sentiment")),
        ("reason", Command("reason")),
    ],
)
def test_a_command_missing_only_its_text_says_what_it_has_so_far(line: str, partial: Command) -> None:
    with pytest.raises(NoText) as missing:
        parse_command(line)
    assert missing.value.command == partial


# --- Through the service -------------------------------------------------------------------------


@pytest.fixture
def service(client, ledger, http):
    config = ServiceConfig(model=MODEL, vision_model=VISION_MODEL, max_tokens=256, allow_loopback_images=True)
    return Service(client, ledger, load_quota_table(), config, http, store=MemoryStore())


def api_calls(emulator) -> list:
    return [r for r in emulator.requests if r.path in ("/chat/completions", "/workflows/run")]


async def test_a_question_with_a_text_file_asks_about_it_and_is_charged_for_it(service, emulator, ledger, files) -> None:
    files.files = {"notes.txt": (("Ship on Friday. " * 400).encode(), "text/plain")}
    request = Request(user="console:ana", text="When do we ship?", documents=[files.source("notes.txt")])
    reply = await service.handle(request)
    assert reply.outcome == "ok" and reply.notes == ()
    [call] = api_calls(emulator)
    content = call.body["messages"][-1]["content"]
    assert content.startswith('When do we ship?\n\n<file name="notes.txt">\nShip on Friday.') and content.count("Ship on") == 400
    assert reply.usage is not None and reply.usage.prompt_tokens > 1000  # the file's 6,400 bytes
    assert await ledger.used_today(user="console:ana") == reply.usage.total_tokens


@pytest.mark.parametrize("line", ["What is due?", "summarize", "translate French"])
async def test_the_reservation_counts_the_files_text(service, files, monkeypatch, line) -> None:
    reserved: list[int] = []
    reserve = service.ledger.reserve

    async def spy(**arguments):
        reserved.append(arguments["tokens"])
        return await reserve(**arguments)

    monkeypatch.setattr(service.ledger, "reserve", spy)
    text = "Ship on Friday, then write the report. " * 300  # 11,700 bytes: 3,900 tokens by the estimate
    files.files = {"notes.txt": (text.encode(), "text/plain")}
    reply = await service.handle(Request(user="console:ana", text=line, documents=[files.source("notes.txt")]))
    assert reply.outcome == "ok", reply.text
    [tokens] = reserved
    assert tokens > estimate_text_tokens(text) + 256  # the file, and room for the answer besides


async def test_summarize_with_a_pdf_summarizes_the_pdf(service, emulator, ledger, files) -> None:
    files.files = {"report.pdf": (REPORT, "application/pdf")}
    reply = await service.handle(
        Request(user="console:ana", text="summarize 30", documents=[files.source("report.pdf", DocumentKind.PDF)])
    )
    assert reply.outcome == "ok", reply.text
    [call] = api_calls(emulator)
    assert call.path == "/workflows/run" and call.body["args"]["max_words"] == 30
    assert (
        call.body["text"]
        == '<file name="report.pdf">\nQuarterly report\nRevenue grew by 12 percent.\n\nCosts fell in the third quarter.\n</file>'
    )
    assert reply.usage is not None and reply.usage.estimated
    assert await ledger.used_today(user="console:ana") == reply.usage.total_tokens


async def test_a_file_alone_is_a_question_about_it(service, emulator, files) -> None:
    files.files = {"notes.txt": (b"Ship on Friday.", "text/plain")}
    reply = await service.handle(Request(user="console:ana", text="", documents=[files.source("notes.txt")]))
    assert reply.outcome == "ok"
    [call] = api_calls(emulator)
    assert call.body["messages"][-1]["content"].startswith(DEFAULT_DOCUMENT_QUESTION + "\n\n<file")


async def test_an_image_alone_is_a_question_about_it_not_the_help(service, emulator) -> None:
    reply = await service.handle(Request(user="console:ana", text="", images=[("cat.png", png_bytes())]))
    assert reply.outcome == "ok" and reply.model == VISION_MODEL
    [call] = api_calls(emulator)
    assert {"type": "text", "text": "What is in this image?"} in call.body["messages"][-1]["content"]


async def test_an_image_and_a_file_go_to_the_vision_model_with_the_file_in_the_question(service, emulator, files) -> None:
    files.files = {"notes.txt": (b"The cat is called Tom.", "text/plain")}
    request = Request(
        user="console:ana", text="Is this Tom?", images=[("cat.png", png_bytes())], documents=[files.source("notes.txt")]
    )
    reply = await service.handle(request)
    assert reply.outcome == "ok" and reply.model == VISION_MODEL
    [call] = api_calls(emulator)
    [text] = [part["text"] for part in call.body["messages"][-1]["content"] if part["type"] == "text"]
    assert text == 'Is this Tom?\n\n<file name="notes.txt">\nThe cat is called Tom.\n</file>'


async def test_a_file_too_long_for_the_context_is_cut_with_a_note(client, ledger, http, emulator, files) -> None:
    config = ServiceConfig(model=SMALL_MODEL, vision_model=VISION_MODEL, max_tokens=256, allow_loopback_images=True)
    service = Service(client, ledger, load_quota_table(), config, http, store=MemoryStore())
    files.files = {"log.txt": (("line of the log " * 5000).encode(), "text/plain")}  # 80,000 bytes: about 27,000 tokens
    reply = await service.handle(Request(user="console:ana", text="Any errors?", documents=[files.source("log.txt")]))
    assert reply.outcome == "ok", reply.text
    [note] = reply.notes
    assert note.startswith("log.txt is too long for AceMath-7B-Instruct's context: only its first ") and note.endswith(
        "% was read."
    )
    [call] = api_calls(emulator)
    assert 10_000 < len(call.body["messages"][-1]["content"]) < 12_000  # 4,000 tokens less the answer and the framing


@pytest.mark.parametrize(
    ("name", "body", "said"),
    [
        ("secret.pdf", encrypted(REPORT), "secret.pdf is encrypted"),
        ("scan.pdf", pdf_bytes([None]), "scan.pdf has no text to read"),
        ("broken.pdf", REPORT[:200], "broken.pdf could not be read: the file is damaged"),
        ("tool.txt", b"\x00\x01binary", "tool.txt is not a text file: it holds binary data."),
        ("latin.txt", "café".encode("latin-1"), "latin.txt is not UTF-8 text"),
    ],
)
async def test_a_file_that_cannot_be_read_is_refused_and_costs_nothing(
    service, emulator, ledger, files, name, body, said
) -> None:
    files.files = {name: (body, "application/octet-stream")}
    kind = DocumentKind.PDF if name.endswith(".pdf") else DocumentKind.TEXT
    reply = await service.handle(Request(user="console:ana", text="summarize", documents=[files.source(name, kind)]))
    assert reply.outcome == "refused" and reply.text.startswith(said) and not reply.private
    assert api_calls(emulator) == []
    assert await ledger.used_today(user="console:ana") == 0 and await ledger.usage(user="console:ana") == []


async def test_a_file_beyond_what_is_left_of_the_budget_is_refused_by_the_budget_at_no_cost(
    service, emulator, ledger, files
) -> None:
    await ledger.set_user_limit("console:ana", 5_000)
    files.files = {"notes.txt": (b"Ship on Friday. " * 2000, "text/plain")}  # 32,000 bytes: about 10,700 tokens
    reply = await service.handle(Request(user="console:ana", text="Anything due?", documents=[files.source("notes.txt")]))
    assert reply.outcome == "refused" and "5,000" in reply.text and "daily budget" in reply.text
    assert api_calls(emulator) == [] and await ledger.usage(user="console:ana") == []


async def test_the_help_says_what_attached_files_do(service) -> None:
    reply = await service.handle(Request(user="console:ana", text="help"))
    assert "Text files and PDFs attached to a message are what its command works on" in reply.text


async def test_a_refused_file_beside_a_readable_one_is_noted(service, emulator, files) -> None:
    files.files = {"notes.txt": (b"Ship on Friday.", "text/plain"), "scan.pdf": (pdf_bytes([None]), "application/pdf")}
    sources = [files.source("notes.txt"), files.source("scan.pdf", DocumentKind.PDF)]
    reply = await service.handle(Request(user="console:ana", text="translate French", documents=sources))
    assert reply.outcome == "ok"
    assert reply.notes[0].startswith("scan.pdf has no text to read")
    [call] = api_calls(emulator)
    assert call.body["args"]["target_language"] == "French" and "Ship on Friday." in call.body["text"]


async def test_the_bots_own_views_ignore_attached_files(service, emulator, files) -> None:
    reply = await service.handle(Request(user="console:ana", text="usage", documents=[files.source("never.txt")]))
    assert reply.outcome == "ok" and reply.private and files.hits == []


async def test_reading_a_pdf_takes_no_more_than_its_time_bound_of_the_loop(service, files, monkeypatch) -> None:
    """Reading runs on a thread: a slow PDF leaves the loop free to answer someone else meanwhile."""

    def slow(file: object, name: str, limits: DocumentLimits) -> Document:
        time.sleep(0.5)
        return Document(name, "Slow but fine.")

    monkeypatch.setattr(documents, "read_pdf", slow)
    files.files = {"slow.pdf": (REPORT, "application/pdf")}
    reading = asyncio.create_task(
        service.handle(Request(user="console:ana", text="summarize", documents=[files.source("slow.pdf", DocumentKind.PDF)]))
    )
    other = await service.handle(Request(user="console:bob", text="Hello?"))
    assert other.outcome == "ok" and not reading.done()
    assert (await reading).outcome == "ok"
