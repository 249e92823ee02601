"""A message's attached files, sorted before anything is downloaded: images to look at, documents to read.

Every platform describes its files the same way (a name, a declared type and size, a link and the
headers the link needs), so the adapter maps its payload to `AttachedFile` and `vet_attachments`
decides, from that description alone, which files go to the vision model, which are text files or
PDFs whose text the command works on (see core/documents.py), and what the person is told about the
others. Nothing refused here is downloaded; the service then downloads the rest and checks their bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .documents import DocumentKind, DocumentLimits, DocumentSource, document_kind, too_large
from .errors import Outcome
from .images import ImageLimits, ImageSource
from .service import Reply

# The image types the vision models take; another image type is refused without a download.
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})
DEFAULT_DOCUMENT_LIMITS = DocumentLimits()


@dataclass(frozen=True)
class AttachedFile:
    """A file as the platform describes it. `url` is None when the platform gave no link to it.

    `headers` go with the download as they are (a bot token, say: the adapter's `may_download`
    decides which links may receive them). `html_refusal` replaces the generic message when a web
    page comes back instead of the file (a platform's sign-in page has a known cause).
    """

    name: str
    content_type: str
    size: int | None
    url: str | None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may carry a token: never shown
    html_refusal: str | None = None

    @property
    def media_type(self) -> str:
        """The declared type without parameters or case: `image/png; charset=x` is `image/png`."""
        return self.content_type.split(";")[0].strip().lower()


class Vetted(NamedTuple):
    """A message's files sorted: images to download, notes on files left out, files refused, documents to read."""

    images: list[ImageSource]
    notes: list[str]
    refusals: list[str]
    documents: Sequence[DocumentSource] = ()


def vet_attachments(
    files: Sequence[AttachedFile],
    limits: ImageLimits,
    *,
    platform: str,
    may_download: Callable[[str], bool] = lambda url: True,
    document_limits: DocumentLimits = DEFAULT_DOCUMENT_LIMITS,
) -> Vetted:
    """Sort `files` by what their platform (`platform`, as people know it: "Slack") says of them.

    A file that is neither an image nor a document (a text file or a PDF) gets a note. An image is
    refused when its type is one the vision model does not take, a file when it has no link or one
    `may_download` refuses, or when it is declared over its kind's byte limit; images beyond
    `max_images` and documents beyond `max_documents` are skipped with a note.
    """
    wanted: list[AttachedFile] = []
    to_read: list[tuple[AttachedFile, DocumentKind]] = []
    notes: list[str] = []
    for file in files:
        if _is_image(file):
            wanted.append(file)
        elif (kind := document_kind(file.name, file.media_type)) is not None:
            to_read.append((file, kind))
        else:
            notes.append(f"{file.name} is not an image, a text file or a PDF, so it was not read.")
    documents, refusals = _vet_documents(to_read, document_limits, platform, may_download, notes)
    if len(wanted) > limits.max_images:
        names = ", ".join(file.name for file in wanted[limits.max_images :])
        notes.append(f"At most {limits.max_images} images are taken per request, so these were skipped: {names}.")
        wanted = wanted[: limits.max_images]
    images: list[ImageSource] = []
    for file in wanted:
        refusal = _refusal(file, limits, platform, may_download)
        if refusal is not None:
            refusals.append(refusal)
        elif file.url is not None:
            images.append(
                ImageSource(file.name, file.url, headers=file.headers, size=file.size or None, html_refusal=file.html_refusal)
            )
    return Vetted(images, notes, refusals, documents)


def _vet_documents(
    files: list[tuple[AttachedFile, DocumentKind]],
    limits: DocumentLimits,
    platform: str,
    may_download: Callable[[str], bool],
    notes: list[str],
) -> tuple[list[DocumentSource], list[str]]:
    """The documents to read and the refusals among `files`; a note on those beyond `max_documents` goes to `notes`."""
    if len(files) > limits.max_documents:
        names = ", ".join(file.name for file, _ in files[limits.max_documents :])
        notes.append(f"At most {limits.max_documents} text files or PDFs are read per request, so these were skipped: {names}.")
        files = files[: limits.max_documents]
    documents: list[DocumentSource] = []
    refusals: list[str] = []
    for file, kind in files:
        refusal = _link_refusal(file, platform, may_download)
        if refusal is None and file.size is not None and file.size > limits.max_bytes(kind):
            refusal = str(too_large(file.name, kind, limits.max_bytes(kind)))
        if refusal is not None:
            refusals.append(refusal)
        elif file.url is not None:
            documents.append(DocumentSource(file.name, file.url, kind, file.headers, file.size or None, file.html_refusal))
    return documents, refusals


def refused(vetted: Vetted) -> Reply | None:
    """The reply when files were attached and none can be read: the question was about them, so
    the API is not asked. None when there is something to answer."""
    if vetted.images or vetted.documents or not vetted.refusals:
        return None
    return Reply("\n".join(vetted.refusals), outcome=Outcome.REFUSED, notes=tuple(vetted.notes))


def _is_image(file: AttachedFile) -> bool:
    return file.media_type.startswith("image/")


def _refusal(file: AttachedFile, limits: ImageLimits, platform: str, may_download: Callable[[str], bool]) -> str | None:
    if file.media_type not in IMAGE_TYPES:
        return f"{file.name} is not a JPEG, PNG, WEBP or GIF image."  # as the bytes would say, once downloaded
    if (refusal := _link_refusal(file, platform, may_download)) is not None:
        return refusal
    if file.size is not None and file.size > limits.max_bytes:
        return f"{file.name} is over the {limits.max_bytes / (1024 * 1024):g} MB limit for images."
    return None


def _link_refusal(file: AttachedFile, platform: str, may_download: Callable[[str], bool]) -> str | None:
    if not file.url:
        return f"Could not download {file.name}: {platform} gave no link to it."
    if not may_download(file.url):
        return f"Could not download {file.name}: its link is not on {platform}'s file hosts, so it was not followed."
    return None
