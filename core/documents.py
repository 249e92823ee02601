"""Text files and PDFs attached to a message, read into the text a command works on.

Adapters describe a message's files as `AttachedFile`s; `core/attachments.py` sorts out the ones
that are documents (`document_kind`: the declared type, else the name's extension) into
`DocumentSource`s. `read_documents` then downloads each one, cut off at its limit (1 MB for text,
20 MB for a PDF) as images are, and reads its text: UTF-8 (a byte order mark allowed, and UTF-16
when one says so) for text, pypdf for a PDF, at most 200 pages within a time bound, on threads of
their own so that the event loop never waits for a PDF. Anything unreadable (binary data posing as
text, a PDF that is encrypted, damaged or only scanned images) is refused with a `DocumentError`
naming the file, before anything is reserved or asked of the API. `join_documents` puts the texts
after the person's words, cut to what the model's context leaves, with a note saying so.
"""

from __future__ import annotations

import asyncio
import codecs
import io
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import PurePosixPath
from typing import IO

import httpx

from .errors import Refusal, RefusedFile
from .images import SPOOL_IN_MEMORY, ImageBudget, ImageError, ImageLimits, ImageSource, download_image
from .tokens import BYTES_PER_TOKEN

# What a file alone (no words beside it) is asked.
DEFAULT_DOCUMENT_QUESTION = "What is in this file? Give a short summary."
# A file cut to less than this many tokens says too little to send: it is left out instead.
MIN_DOCUMENT_TOKENS = 64
# Reading stops once a document's text is this long: more never fits the largest model's context.
MAX_TEXT_CHARS = 2_000_000
# Extra seconds past `pdf_seconds` before a PDF whose single page will not finish is given up on.
PDF_GRACE = 5.0

TEXT_TYPES = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/xml",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/javascript",
        "application/x-javascript",
        "application/typescript",
        "application/x-sh",
        "application/x-python",
        "application/sql",
    }
)
# Extensions read as text whatever type the platform declared (often application/octet-stream).
TEXT_EXTENSIONS = frozenset(
    """
    txt text md markdown rst csv tsv json jsonl ndjson log yaml yml toml ini cfg conf xml sql diff patch tex
    py pyi js mjs cjs ts tsx jsx java kt kts scala groovy c h cc cpp cxx hpp hh cs go rs rb php pl pm lua r
    swift m mm dart ex exs erl hrl hs clj cljs elm fs fsx ml mli nim zig v sv vhd jl
    sh bash zsh fish ps1 bat cmd css scss sass less vue svelte proto graphql gql tf hcl dockerfile makefile
    gradle cmake properties env gitignore
    """.split()
)
# Declared text types that are no document: a web page is refused as a sign-in page would be.
NOT_DOCUMENT_TYPES = frozenset({"text/html"})


class DocumentKind(StrEnum):
    TEXT = "text"
    PDF = "pdf"


class DocumentError(RefusedFile):
    """A text file or PDF was refused. `reason`, for metrics: too_large, empty, binary, encoding, encrypted,
    damaged, no_text, slow, too_long, or a download's reason (see `ImageError`)."""

    refusal = Refusal.FILE


@dataclass(frozen=True)
class DocumentLimits:
    """What a document may be: the bytes downloaded per kind, a PDF's pages and reading time, files per request."""

    text_max_bytes: int = 1024 * 1024
    pdf_max_bytes: int = 20 * 1024 * 1024
    pdf_max_pages: int = 200
    pdf_seconds: float = 20.0
    max_documents: int = 5
    timeout: float = 20.0  # the download

    def max_bytes(self, kind: DocumentKind) -> int:
        return self.pdf_max_bytes if kind is DocumentKind.PDF else self.text_max_bytes


@dataclass(frozen=True)
class DocumentSource:
    """A document a platform holds: its link, the headers it needs, its kind and declared size (see `ImageSource`)."""

    name: str
    url: str
    kind: DocumentKind
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may carry a token: never shown
    size: int | None = None
    html_refusal: str | None = None


@dataclass(frozen=True)
class Document:
    """A document's text, with what the reply should tell the person about it."""

    name: str
    text: str
    notes: tuple[str, ...] = ()


def document_kind(name: str, media_type: str) -> DocumentKind | None:
    """Whether a file is a PDF, a text file or neither, from its declared type (no parameters) and its name."""
    suffix = PurePosixPath(name.lower()).suffix.removeprefix(".") or name.lower()  # "Makefile" has no suffix
    if media_type == "application/pdf" or suffix == "pdf":
        return DocumentKind.PDF
    if media_type in NOT_DOCUMENT_TYPES:
        return None
    if media_type.startswith("text/") or media_type in TEXT_TYPES or suffix in TEXT_EXTENSIONS:
        return DocumentKind.TEXT
    return None


# --- Reading ------------------------------------------------------------------------------------


def decode_text(data: bytes, name: str) -> str:
    """A text file's text: UTF-8 (with or without a byte order mark), or UTF-16 with its mark; else `DocumentError`.

    Binary data (a NUL byte) and bytes that are no UTF-8 are refused rather than shown garbled.
    """
    if not data.strip():
        raise DocumentError(f"{name} is empty.", "empty")
    try:
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            text = data.decode("utf-16")
        elif b"\x00" in data:
            raise DocumentError(f"{name} is not a text file: it holds binary data.", "binary")
        else:
            text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise DocumentError(
            f"{name} is not UTF-8 text, so it was not read: save it as UTF-8 and send it again.", "encoding"
        ) from error
    if "\x00" in text:
        raise DocumentError(f"{name} is not a text file: it holds binary data.", "binary")
    return text.replace("\r\n", "\n")[:MAX_TEXT_CHARS]


def read_pdf(file: IO[bytes], name: str, limits: DocumentLimits) -> Document:
    """A PDF's text, page by page: at most `pdf_max_pages` pages, and no new page after `pdf_seconds`.

    CPU-bound: from async code, `read_documents` runs it on a thread. Encrypted PDFs are refused
    (even those that open without a password: "save as" an unprotected copy does it), as are damaged
    files and PDFs with no text at all (scanned pages are images; the models here read text).
    """
    # Imported here: pypdf took a tenth to a quarter of the service's own import time, and only a PDF needs it.
    import pypdf
    from pypdf.errors import PyPdfError

    deadline = time.monotonic() + limits.pdf_seconds
    try:
        reader = pypdf.PdfReader(file)
        if reader.is_encrypted:
            raise DocumentError(
                f"{name} is encrypted, so it could not be read: send an unprotected copy (print or save it as a new PDF).",
                "encrypted",
            )
        total = len(reader.pages)
        pages: list[str] = []
        out_of_time = enough = False
        for page in reader.pages[: limits.pdf_max_pages]:
            if out_of_time := time.monotonic() > deadline:
                break
            pages.append(page.extract_text() or "")
            if enough := sum(map(len, pages)) > MAX_TEXT_CHARS:  # more never fits a model's context: cut later, with a note
                break
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError, OSError) as error:
        # pypdf reports a damaged file through its own errors and, deeper down, through plain Python ones.
        raise DocumentError(f"{name} could not be read: the file is damaged or not a PDF.", "damaged") from error
    text = "\n\n".join(page.strip() for page in pages if page.strip())
    if not text:
        if out_of_time:
            raise DocumentError(f"{name} took too long to read.", "slow")
        raise DocumentError(
            f"{name} has no text to read: its pages are probably scanned images. Send a PDF with text in it.", "no_text"
        )
    notes: list[str] = []
    if out_of_time:
        notes.append(f"{name} took long to read: only its first {len(pages)} of {total} pages were read.")
    elif total > limits.pdf_max_pages and not enough:
        notes.append(f"{name} has {total} pages: only the first {limits.pdf_max_pages} were read.")
    return Document(name, text[:MAX_TEXT_CHARS], tuple(notes))


# PDFs are read on these threads, so the event loop never waits for one: two, as many as the cores
# the service is sized for.
_PDF_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="iobot-pdf")


async def _read_pdf_on_thread(file: IO[bytes], name: str, limits: DocumentLimits) -> Document:
    """`read_pdf` on one of its threads, given up on `PDF_GRACE` seconds past its own time bound.

    The bound counts from when a thread takes the PDF, not while it waits for one. pypdf cannot be
    interrupted within a page, so a page that will not end keeps its thread until it does; the
    person hears that the file took too long meanwhile.
    """
    loop = asyncio.get_running_loop()
    started = asyncio.Event()

    def read() -> Document:
        loop.call_soon_threadsafe(started.set)
        return read_pdf(file, name, limits)

    reading = loop.run_in_executor(_PDF_THREADS, read)
    try:
        await started.wait()
        return await asyncio.wait_for(reading, limits.pdf_seconds + PDF_GRACE)
    except TimeoutError as error:
        raise DocumentError(f"{name} took too long to read.", "slow") from error
    finally:
        reading.cancel()  # still waiting for a thread (the request was cancelled): it never starts


async def read_documents(
    sources: Sequence[DocumentSource],
    limits: DocumentLimits = DocumentLimits(),
    *,
    http: httpx.AsyncClient,
    budget: ImageBudget,
    allow_loopback: bool = False,
) -> tuple[list[Document], list[DocumentError]]:
    """Download and read documents, at once and in order; returns (read, refusals).

    Each holds a share of `budget` (the images' budget: files in flight share one bound on memory)
    from its download until its text is read. Any exception but a `DocumentError` is a bug and propagates.
    """
    results = await asyncio.gather(
        *(_read_one(source, limits, http, budget, allow_loopback) for source in sources), return_exceptions=True
    )
    documents: list[Document] = []
    refusals: list[DocumentError] = []
    for result in results:
        if isinstance(result, Document):
            documents.append(result)
        elif isinstance(result, DocumentError):
            refusals.append(result)
        else:
            raise result
    return documents, refusals


async def _read_one(
    source: DocumentSource, limits: DocumentLimits, http: httpx.AsyncClient, budget: ImageBudget, allow_loopback: bool
) -> Document:
    max_bytes = limits.max_bytes(source.kind)
    async with budget.hold(min(source.size or max_bytes, max_bytes)):
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY) as file:
            await _download(source, file, max_bytes, limits, http, allow_loopback)
            file.seek(0)
            data = file.read()  # within the budget's share; pypdf read the spooled file at 0.7 of its speed in memory
        if source.kind is DocumentKind.PDF or data.startswith(b"%PDF-"):  # the content says PDF, whatever the name
            return await _read_pdf_on_thread(io.BytesIO(data), source.name, limits)
        return Document(source.name, decode_text(data, source.name))


async def _download(
    source: DocumentSource, into: IO[bytes], max_bytes: int, limits: DocumentLimits, http: httpx.AsyncClient, allow_loopback: bool
) -> None:
    """The download images take (public addresses only, streamed, cut off past `max_bytes`), its refusals worded for files."""
    image = ImageSource(source.name, source.url, headers=source.headers, size=source.size, html_refusal=source.html_refusal)
    try:
        await download_image(
            http, image, into, limits=ImageLimits(max_bytes=max_bytes, timeout=limits.timeout), allow_loopback=allow_loopback
        )
    except ImageError as error:
        if error.reason == "too_large":
            raise too_large(source.name, source.kind, max_bytes) from error
        if error.reason == "html" and not source.html_refusal:
            raise DocumentError(f"Could not download {source.name}: a web page came back instead of the file.", "html") from error
        raise DocumentError(str(error), error.reason) from error


def too_large(name: str, kind: DocumentKind, max_bytes: int) -> DocumentError:
    what = "PDFs" if kind is DocumentKind.PDF else "text files"
    return DocumentError(f"{name} is over the {max_bytes / (1024 * 1024):g} MB limit for {what}.", "too_large")


# --- Into the model's input ---------------------------------------------------------------------


def document_block(document: Document) -> str:
    """A document as the model reads it: its text between tags naming the file."""
    name = document.name.replace('"', "'")
    return f'<file name="{name}">\n{document.text}\n</file>'


def join_documents(text: str, documents: Sequence[Document], room: int, limit: str) -> tuple[str, list[str]]:
    """`text`, then each document, all within `room` estimated tokens; and notes on what was cut.

    Documents are cut, never `text`: the first ones whole while they fit, the next one cut to what
    is left (at a line or word end), any after it left out. `limit` names what set `room`
    ("Llama-3.3-70B-Instruct's context"). Raises `DocumentError` when no document fits at all.
    """
    parts = [text] if text else []
    left = room * BYTES_PER_TOKEN - len(text.encode("utf-8"))
    notes: list[str] = []
    for document in documents:
        block = document_block(document)
        size = len(block.encode("utf-8")) + 2  # the blank line before it
        if size <= left:
            parts.append(block)
            left -= size
            continue
        keep = left - (size - len(document.text.encode("utf-8")))
        if keep < MIN_DOCUMENT_TOKENS * BYTES_PER_TOKEN:
            notes.append(f"{document.name} was left out: it does not fit {limit} beside the rest.")
            left = 0
            continue
        cut = _cut(document.text, keep)
        parts.append(document_block(replace(document, text=cut)))
        notes.append(
            f"{document.name} is too long for {limit}: only its first {max(1, 100 * len(cut) // len(document.text))}% was read."
        )
        left = 0
    if len(parts) == (1 if text else 0):
        names = ", ".join(document.name for document in documents)
        raise DocumentError(f"{names} cannot fit {limit} beside this message: please shorten the message.", "too_long")
    return "\n\n".join(parts), notes


def _cut(text: str, max_bytes: int) -> str:
    """The start of `text` in at most `max_bytes` of UTF-8, ended at a line break (or else a space) when one is near."""
    cut = text.encode("utf-8")[:max_bytes].decode("utf-8", "ignore")
    for separator in ("\n", " "):
        end = cut.rfind(separator)
        if end > len(cut) - 1000:
            return cut[:end]
    return cut
