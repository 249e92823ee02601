"""A message's attached files, sorted before anything is downloaded: which are images to read.

Every platform describes its files the same way (a name, a declared type and size, a link and the
headers the link needs), so the adapter maps its payload to `AttachedFile` and `vet_attachments`
decides, from that description alone, which files go to the vision model and what the person is
told about the others. Nothing refused here is downloaded; the service then downloads the images
and checks their bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from .errors import Outcome
from .images import ImageLimits, ImageSource
from .service import Reply

# The image types the vision models take; another image type is refused without a download.
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/webp", "image/gif"})


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
    """A message's files sorted: images to download, notes on files left out, images refused."""

    images: list[ImageSource]
    notes: list[str]
    refusals: list[str]


def vet_attachments(
    files: Sequence[AttachedFile],
    limits: ImageLimits,
    *,
    platform: str,
    may_download: Callable[[str], bool] = lambda url: True,
) -> Vetted:
    """Sort `files` by what their platform (`platform`, as people know it: "Slack") says of them.

    A file that is not an image gets a note. An image is refused when its type is one the vision
    model does not take, when it has no link or one `may_download` refuses, or when it is declared
    over `max_bytes`; images beyond `max_images` are skipped with a note.
    """
    notes = [f"{file.name} is not an image, so it was not read." for file in files if not _is_image(file)]
    wanted = [file for file in files if _is_image(file)]
    if len(wanted) > limits.max_images:
        names = ", ".join(file.name for file in wanted[limits.max_images :])
        notes.append(f"At most {limits.max_images} images are taken per request, so these were skipped: {names}.")
        wanted = wanted[: limits.max_images]
    images: list[ImageSource] = []
    refusals: list[str] = []
    for file in wanted:
        refusal = _refusal(file, limits, platform, may_download)
        if refusal is not None:
            refusals.append(refusal)
        elif file.url is not None:
            images.append(
                ImageSource(file.name, file.url, headers=file.headers, size=file.size or None, html_refusal=file.html_refusal)
            )
    return Vetted(images, notes, refusals)


def refused(vetted: Vetted) -> Reply | None:
    """The reply when images were attached and none can be read: the question was about them, so
    the API is not asked. None when there is something to answer."""
    if vetted.images or not vetted.refusals:
        return None
    return Reply("\n".join(vetted.refusals), outcome=Outcome.REFUSED, notes=tuple(vetted.notes))


def _is_image(file: AttachedFile) -> bool:
    return file.media_type.startswith("image/")


def _refusal(file: AttachedFile, limits: ImageLimits, platform: str, may_download: Callable[[str], bool]) -> str | None:
    if file.media_type not in IMAGE_TYPES:
        return f"{file.name} is not a JPEG, PNG, WEBP or GIF image."  # as the bytes would say, once downloaded
    if not file.url:
        return f"Could not download {file.name}: {platform} gave no link to it."
    if not may_download(file.url):
        return f"Could not download {file.name}: its link is not on {platform}'s file hosts, so it was not followed."
    if file.size is not None and file.size > limits.max_bytes:
        return f"{file.name} is over the {limits.max_bytes / (1024 * 1024):g} MB limit for images."
    return None
