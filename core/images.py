"""From "a person attached an image" to "the vision model sees it".

Adapters describe the images of a message as `ImageSource`s (a link, the headers it needs, the size
the platform declared); the console reads files with `read_local_image`; `vision <url>` becomes a
source through `public_image`. `prepare_images` then brings each one in and normalises it with
Pillow so that what is uploaded is a JPEG, PNG or WEBP the API takes: at most `max_bytes`, at most
`target_side` pixels on the long side, upright, in a plain colour mode, and small. Anything
unusable is refused with an `ImageError` whose text is a short sentence naming the file, fit to
show the person as it is.

Limits come from the API (JPEG, PNG, WEBP, static GIF; 20 MB and 4096 px per image; 10 images per
request) and are enforced before anything costs memory or money: downloads stop at the byte limit,
and an image's pixel count is checked from its header before a single pixel is decoded. Memory is
bounded across requests too: every image in flight holds a share of one `ImageBudget` from before
its download until it is prepared, downloads are spooled to a temporary file rather than held in
memory, and decoding runs on one thread.

Every download, a platform's file as much as a link someone typed, goes only to public addresses:
the host is resolved, every address checked (IPv4 carried inside IPv6 included), and the request
sent to the checked address, so that nobody can make the bot fetch from the network it runs in.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import ipaddress
import socket
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, NamedTuple

import httpx
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from .chunks import shorten
from .errors import Refusal, RefusedFile

__all__ = [
    "ImageBudget",
    "ImageError",
    "ImageLimits",
    "ImageSource",
    "PreparedImage",
    "decoded_bytes",
    "download_image",
    "may_fetch_from",
    "prepare_image",
    "prepare_images",
    "public_image",
    "read_local_image",
]


class ImageError(RefusedFile):
    """An image was refused. `reason`, for metrics and adapters: empty, damaged, not_image, too_large,
    too_many_pixels, too_many_images, download, html (a web page came back, often a sign-in page),
    address or file."""

    refusal = Refusal.IMAGE


@dataclass(frozen=True)
class ImageLimits:
    """What an image may be. The defaults are the API's limits, except `target_side` and `max_pixels`.

    `max_side` is the API's hard maximum per side; `target_side` is the bound images are actually
    scaled down to (configurable, never above `max_side`): the vision models tile or resize large
    images themselves, so sending more than 2048 px mostly costs upload time.

    `max_pixels` is the decompression-bomb bound: 8192 x 8192 (67 megapixels) admits every camera
    photo (the largest common sensors make 61 MP) and 8K-square images, while a decoded image then
    needs at most 268 MB (4 bytes a pixel). Pillow itself refuses anything over twice
    `Image.MAX_IMAGE_PIXELS` (179 MP), so raising `max_pixels` past that has no effect.
    """

    max_bytes: int = 20 * 1024 * 1024
    max_side: int = 4096
    target_side: int = 2048
    max_images: int = 10
    max_pixels: int = 8192 * 8192
    timeout: float = 20.0

    def __post_init__(self) -> None:
        if min(self.max_bytes, self.max_side, self.target_side, self.max_images, self.max_pixels) < 1:
            raise ValueError("image limits must be positive")
        if self.target_side > self.max_side:
            raise ValueError(f"target_side {self.target_side} is over max_side {self.max_side}")
        if self.timeout <= 0:
            raise ValueError("the download timeout must be positive")


@dataclass(frozen=True)
class PreparedImage:
    """An image ready to upload, with what the reply should tell the person about it."""

    name: str
    data: bytes
    mime: str
    width: int
    height: int
    original_bytes: int
    notes: tuple[str, ...] = ()

    @property
    def data_url(self) -> str:
        """The `image_url` value the API takes for an inline image."""
        return f"data:{self.mime};base64,{base64.b64encode(self.data).decode('ascii')}"

    @property
    def saved_bytes(self) -> int:
        """Bytes saved by normalising; negative when a conversion grew the file (e.g. GIF to PNG)."""
        return self.original_bytes - len(self.data)


# --- Normalisation -------------------------------------------------------------------------------

_INPUT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")
# Formats and colour modes that may be uploaded untouched (a static GIF is always converted: the
# API's support for it is the least certain, and a PNG of it is exact).
_AS_IS_MIMES = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
_AS_IS_MODES = {"L", "RGB", "RGBA"}
# At most this many distinct colours (or grey levels) and an image counts as a drawing: see
# `_encodings_for`. Greyscale has only 256 levels in all, so its bound is lower.
_FEW_COLOURS = 256
_FEW_GREYS = 64
# Pillow keeps RGB and RGBA pixels in four bytes, and the other modes in fewer.
_BYTES_PER_PIXEL = 4

# `prepare_images` decodes on this one thread, process-wide, for memory's sake: a decode can take
# 4 bytes a pixel (268 MB at `max_pixels`), and glibc gives every thread that allocates its own
# malloc arena, which keeps what Pillow freed. Measured with ten 20 MB downloads at once
# (benchmarks/images.py), asyncio.to_thread's pool cost 80 to 230 MB more at peak, and a second
# thread here 10 to 60 MB more, for about a third more images per second on two cores.
_LINK_CHARS = 100  # of a link named in a refusal
_DECODER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iobot-images")


class _Encoding(NamedTuple):
    format: str
    mime: str
    options: Mapping[str, object]


# No `optimize=True` for JPEG: it makes the file about 15% smaller but holds the whole image's
# coefficients in memory while encoding, and memory is the scarcer of the two here.
_JPEG = _Encoding("JPEG", "image/jpeg", {"quality": 85})
_PNG = _Encoding("PNG", "image/png", {})
_WEBP = _Encoding("WEBP", "image/webp", {"quality": 85})


def prepare_image(data: bytes | IO[bytes], name: str, limits: ImageLimits = ImageLimits()) -> PreparedImage:
    """Check `data` (bytes, or a seekable file Pillow reads in pieces) and normalise it, or raise `ImageError`.

    The real format is sniffed from the content (the name and declared type are never trusted).
    The pixel count is checked from the header, before decoding. The image is then fully decoded
    (so truncated or corrupt data is caught here, not by the API), turned upright per its EXIF
    orientation, converted to L, RGB or RGBA, scaled down to `target_side` and re-encoded (see
    `_encodings_for`). When the original was already fit to send and is no bigger than the
    re-encoded result and carries no metadata (EXIF, XMP, comments), the original bytes are sent
    instead; re-encoding writes no metadata, so a photo's location never leaves with it.

    CPU-bound and thread-safe (it changes no global Pillow setting). From async code, call
    `prepare_images`, which runs it off the event loop with bounded memory.
    """
    file = io.BytesIO(data) if isinstance(data, bytes) else data
    size = _checked_size(file, name, limits)
    bound = min(limits.target_side, limits.max_side)
    image = _open(file, name, limits)
    source_format, source_mode = image.format, image.mode
    try:
        # An MPO is a JPEG carrying extra pictures (depth or gain maps), not an animation.
        animated = source_format != "MPO" and bool(getattr(image, "is_animated", False))
        exif = image.getexif()
        orientation = exif.get(ExifTags.Base.Orientation, 1)
        # EXIF can hold where a photo was taken: such an original is re-encoded, which drops it.
        carries_metadata = bool(exif) or any(key in image.info for key in ("xmp", "comment", "XML:com.adobe.xmp"))
        width, height = image.size
        if orientation in (5, 6, 7, 8):  # turned a quarter: the upright image has its sides swapped
            width, height = height, width
        # JPEG only: let libjpeg decode at 1/2, 1/4 or 1/8 scale while staying above the target,
        # which cuts decoding time and memory for large photos. Other formats ignore this.
        image.draft(image.mode, _fit(image.size, bound))
        image.load()
    except Exception as error:  # Pillow reports damaged data as OSError, SyntaxError, ValueError, ...
        raise ImageError(f"{name} could not be read: the file is damaged or incomplete.", "damaged") from error

    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    image = _to_api_mode(image)
    target = _fit((width, height), bound)
    if image.size != target:
        image = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    encoded, mime, image = _encode(image, name, limits)

    as_is_mime = _AS_IS_MIMES.get(source_format or "")  # None for formats that are always re-encoded
    sendable_as_is = (
        source_mode in _AS_IS_MODES and not animated and not carries_metadata and orientation == 1 and max(width, height) <= bound
    )
    if as_is_mime is not None and sendable_as_is and size <= len(encoded):
        file.seek(0)
        return PreparedImage(name, file.read(), as_is_mime, width, height, size)

    notes = []
    if animated:
        notes.append(f"{name} is animated: only its first frame was used.")
    if image.size != (width, height):
        notes.append(f"{name} was scaled down from {width}x{height} to {image.width}x{image.height}.")
    return PreparedImage(name, encoded, mime, image.width, image.height, size, tuple(notes))


def decoded_bytes(file: IO[bytes], name: str, limits: ImageLimits) -> int:
    """The memory `prepare_image` will decode `file` into, read from its header (a JPEG decodes reduced).

    Raises the `ImageError` that `prepare_image` would for what is empty, too big, no image or a bomb.
    """
    _checked_size(file, name, limits)
    with _open(file, name, limits) as image:
        image.draft(image.mode, _fit(image.size, min(limits.target_side, limits.max_side)))
        return image.width * image.height * _BYTES_PER_PIXEL


def _checked_size(file: IO[bytes], name: str, limits: ImageLimits) -> int:
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    if not size:
        raise ImageError(f"{name} is empty.", "empty")
    if size > limits.max_bytes:
        raise _too_large(name, limits)
    return size


def _open(file: IO[bytes], name: str, limits: ImageLimits) -> Image.Image:
    """Identify the image from its content and refuse a bomb from its header, before decoding."""
    file.seek(0)
    try:
        image = Image.open(file, formats=_INPUT_FORMATS)
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(name, limits) from error
    except UnidentifiedImageError as error:
        raise ImageError(f"{name} is not a JPEG, PNG, WEBP or GIF image.", "not_image") from error
    except OSError as error:
        raise ImageError(f"{name} could not be read: the file is damaged or incomplete.", "damaged") from error
    if image.width * image.height > limits.max_pixels:
        raise _too_many_pixels(name, limits)
    return image


def _to_api_mode(image: Image.Image) -> Image.Image:
    """L, RGB or RGBA: the modes every decoder behind the API reads the same way.

    Transparency is kept only when some pixel is actually see-through. 16-bit greyscale is scaled
    to 8 bits (Pillow's own conversion clips everything above 255 to white).
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        return image.convert("I").point(lambda value: value / 256).convert("L")
    if image.has_transparency_data:
        image = image.convert("RGBA")
        if image.getchannel("A").getextrema()[0] == 255:
            return image.convert("RGB")
        return image
    if image.mode in ("L", "RGB"):
        return image
    if image.mode == "1":
        return image.convert("L")
    return image.convert("RGB")  # CMYK, YCbCr, palette without transparency, ...


def _encodings_for(image: Image.Image) -> tuple[_Encoding, ...]:
    """The encodings to try, best first; the first whose result fits under `max_bytes` is used.

    Few colours (drawings, charts, simple screenshots): PNG, which is exact and smallest for flat
    colour; JPEG would smear the edges. Many colours (photos, rich screenshots): JPEG at quality
    85, visually lossless at a fraction of PNG's size, or WEBP at quality 85 when there is
    transparency, which JPEG cannot carry (WEBP keeps the alpha channel lossless).
    """
    few_colours = image.getcolors(_FEW_GREYS if image.mode == "L" else _FEW_COLOURS) is not None
    if image.mode == "RGBA":
        return (_PNG, _WEBP) if few_colours else (_WEBP,)
    return (_PNG, _JPEG) if few_colours else (_JPEG,)


def _encode(image: Image.Image, name: str, limits: ImageLimits) -> tuple[bytes, str, Image.Image]:
    """Encode under `max_bytes`; returns the bytes, their MIME type and the image encoded.

    At the default 2048 px even an uncompressible RGBA image fits in 20 MB, so the shrinking loop
    only runs with a larger `target_side` or a smaller `max_bytes`: each round takes a quarter off
    each side, until something fits.
    """
    while True:
        for encoding in _encodings_for(image):
            buffer = io.BytesIO()
            image.save(buffer, encoding.format, **encoding.options)
            if buffer.tell() <= limits.max_bytes:
                return buffer.getvalue(), encoding.mime, image
        if min(image.size) < 8:
            raise ImageError(f"{name} could not be compressed under {_describe_bytes(limits.max_bytes)}.", "too_large")
        smaller = (image.width * 3 // 4, image.height * 3 // 4)
        image = image.resize(smaller, Image.Resampling.LANCZOS)


def _fit(size: tuple[int, int], bound: int) -> tuple[int, int]:
    """`size` scaled down (never up) so that its long side is at most `bound`, aspect kept."""
    width, height = size
    if max(width, height) <= bound:
        return size
    scale = bound / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


# --- Bringing images in, within one memory budget ------------------------------------------------


@dataclass(frozen=True)
class ImageSource:
    """An image a platform holds: its link, the headers it needs, what the platform says it weighs.

    `headers` go with the request as they are (the adapter decided the host may receive them).
    `size` is the platform's declared size, the share of the budget the image holds; unknown sizes
    hold `max_bytes`. `html_refusal`, when set, replaces the generic message for a web page that
    came back instead of the image (a platform's sign-in page has a known cause).
    """

    name: str
    url: str
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)  # may carry a token: never shown
    size: int | None = None
    html_refusal: str | None = None


# An image given as (name, bytes), already in memory, or one still to download.
ImageInput = tuple[str, bytes] | ImageSource
OnWait = Callable[[], Awaitable[None]]

# Downloads up to this size stay in memory; bigger ones go on to a temporary file, which Pillow
# reads from in pieces, so ten 20 MB downloads are not ten 20 MB byte strings.
SPOOL_IN_MEMORY = 1024 * 1024
# The budget `prepare_images` uses when given none. The service keeps one for the whole process.
DEFAULT_BUDGET = 128 * 1024 * 1024


class ImageBudget:
    """Bytes of images in flight, process-wide: downloaded or being decoded, not yet prepared.

    Each image holds a share from before its download until it is prepared: its size at first,
    then, while it is decoded, its decoded pixels if those are more. An image that does not fit
    waits, first come first served (one bigger than the whole budget goes once it is alone).
    Growing a share never waits: the image already holds its place and decoding runs one image at a
    time, so the queue always drains; new images wait until the total is back under `capacity`.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("the image budget must be positive")
        self.capacity = capacity
        self.used = 0
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()

    @contextlib.asynccontextmanager
    async def hold(self, amount: int, on_wait: OnWait | None = None) -> AsyncIterator[BudgetShare]:
        """Hold `amount` bytes for the block, waiting for room first (`on_wait` runs if it must wait)."""
        if self._waiting or not self._fits(amount):
            future = asyncio.get_running_loop().create_future()
            self._waiting.append((amount, future))
            try:
                if on_wait is not None:
                    await on_wait()
                await future
            except BaseException:
                if future.done() and not future.cancelled():  # room was granted just as we gave up
                    self._release(amount)
                else:
                    future.cancel()
                    with contextlib.suppress(ValueError):  # `_wake` may have dropped it already
                        self._waiting.remove((amount, future))
                    self._wake()
                raise
        else:
            self.used += amount
        share = BudgetShare(self, amount)
        try:
            yield share
        finally:
            self._release(share.amount)

    def _fits(self, amount: int) -> bool:
        return self.used == 0 or self.used + amount <= self.capacity

    def _release(self, amount: int) -> None:
        self.used -= amount
        self._wake()

    def _wake(self) -> None:
        while self._waiting and self._fits(self._waiting[0][0]):
            amount, future = self._waiting.popleft()
            if not future.done():  # done: cancelled, its request gave up waiting
                self.used += amount
                future.set_result(None)


class BudgetShare:
    """What one image holds of an `ImageBudget`."""

    def __init__(self, budget: ImageBudget, amount: int) -> None:
        self._budget = budget
        self.amount = amount

    def grow_to(self, amount: int) -> None:
        """Hold at least `amount` from now on, without waiting (see `ImageBudget`)."""
        if amount > self.amount:
            self._budget.used += amount - self.amount
            self.amount = amount


async def prepare_images(
    items: Sequence[ImageInput],
    limits: ImageLimits = ImageLimits(),
    *,
    budget: ImageBudget | None = None,
    http: httpx.AsyncClient | None = None,
    allow_loopback: bool = False,
    on_wait: OnWait | None = None,
) -> tuple[list[PreparedImage], list[ImageError]]:
    """Bring in and prepare images, in order; returns (prepared, refusals).

    Downloads (with `http`) run at once, each as soon as it has room in `budget` (`on_wait` runs
    when one has to wait; without a budget, one for this call alone of `DEFAULT_BUDGET`); decoding
    runs on one thread. Refusals are the `ImageError`s, in order, then one naming the images beyond
    `max_images`, which are skipped unread. Any other exception is a bug and propagates.
    """
    budget = budget or ImageBudget(DEFAULT_BUDGET)
    kept, skipped = items[: limits.max_images], items[limits.max_images :]
    results = await asyncio.gather(
        *(_prepare_one(item, limits, budget, http, allow_loopback, on_wait) for item in kept),
        return_exceptions=True,
    )
    prepared: list[PreparedImage] = []
    refusals: list[ImageError] = []
    for result in results:
        if isinstance(result, PreparedImage):
            prepared.append(result)
        elif isinstance(result, ImageError):
            refusals.append(result)
        else:
            raise result
    if skipped:
        names = ", ".join(_name(item) for item in skipped)
        message = f"At most {limits.max_images} images are taken per request, so these were skipped: {names}."
        refusals.append(ImageError(message, "too_many_images"))
    return prepared, refusals


async def _prepare_one(
    item: ImageInput,
    limits: ImageLimits,
    budget: ImageBudget,
    http: httpx.AsyncClient | None,
    allow_loopback: bool,
    on_wait: OnWait | None,
) -> PreparedImage:
    loop = asyncio.get_running_loop()
    name = _name(item)
    share = min(item.size or limits.max_bytes, limits.max_bytes) if isinstance(item, ImageSource) else len(item[1])
    async with budget.hold(share, on_wait) as held:
        with _spool(item) as file:
            if isinstance(item, ImageSource):
                if http is None:
                    raise ValueError("downloading images needs an HTTP client")
                await download_image(http, item, file, limits=limits, allow_loopback=allow_loopback)
            held.grow_to(await loop.run_in_executor(_DECODER, decoded_bytes, file, name, limits))
            return await loop.run_in_executor(_DECODER, prepare_image, file, name, limits)


def _spool(item: ImageInput) -> IO[bytes]:
    if isinstance(item, ImageSource):
        return tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY)
    return io.BytesIO(item[1])  # shares the bytes' buffer: no copy


def _name(item: ImageInput) -> str:
    return item.name if isinstance(item, ImageSource) else item[0]


# --- Downloads, to public addresses only ---------------------------------------------------------


def public_image(url: str) -> ImageSource:
    """The source for `vision <url>`, named after the link's last path segment; refuses non-http links."""
    parsed = _parse_link(url)
    return ImageSource(parsed.path.rsplit("/", 1)[-1][:100] or "image", url)


def _parse_link(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise ImageError(f"{shorten(url, _LINK_CHARS)} is not a valid link.", "address") from error
    if parsed.scheme not in ("http", "https") or not parsed.raw_host:
        raise ImageError(f"{shorten(url, _LINK_CHARS)} is not an http or https link.", "address")
    return parsed


async def download_image(
    http: httpx.AsyncClient,
    source: ImageSource,
    into: IO[bytes],
    *,
    limits: ImageLimits,
    allow_loopback: bool = False,
) -> None:
    """Download `source` into `into`, streamed and cut off as soon as more than `max_bytes` arrived.

    The host is resolved first and refused if any of its addresses is not public (see
    `_may_fetch_from`; `allow_loopback`, for tests, admits loopback only). The request then goes to
    the checked address itself (the Host header and TLS name stay the link's), so a DNS answer that
    changes between check and connection cannot slip a private address in. Redirects are not
    followed (a 3xx is refused, naming where it led): the adapter decided that this host may
    receive the source's headers, not wherever it points to. `limits.timeout` bounds the lookup
    and, separately, the whole download, so a server trickling bytes cannot hold a request open.
    """
    try:
        parsed = _parse_link(source.url)
    except ImageError as error:
        raise ImageError(f"Could not download {source.name}: {error}", error.reason) from error
    host = parsed.raw_host.decode("ascii")  # punycode stays as it is: decoding it can fail
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    address = await _public_address(host, port, name=source.name, limits=limits, allow_loopback=allow_loopback)
    request = http.build_request(
        "GET",
        parsed.copy_with(host=address),
        headers={**source.headers, "Host": parsed.netloc.decode("ascii")},
        extensions={"sni_hostname": host},
        timeout=limits.timeout,
    )
    try:
        await _download(http, request, source.name, limits, into)
    except ImageError as error:
        if error.reason == "html" and source.html_refusal:
            raise ImageError(source.html_refusal, error.reason) from error
        raise


async def _download(http: httpx.AsyncClient, request: httpx.Request, name: str, limits: ImageLimits, into: IO[bytes]) -> None:
    failed = f"Could not download {name}"
    try:
        async with asyncio.timeout(limits.timeout):
            response = await http.send(request, stream=True, follow_redirects=False)
            try:
                await _read_body(response, name, limits, into)
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException) as error:
        raise ImageError(f"{failed}: it took longer than {limits.timeout:g} seconds.", "download") from error
    except httpx.ConnectError as error:
        raise ImageError(f"{failed}: the server could not be reached.", "download") from error
    except httpx.HTTPError as error:  # the connection broke, or the server spoke no valid HTTP
        raise ImageError(f"{failed}: the connection broke off.", "download") from error


async def _read_body(response: httpx.Response, name: str, limits: ImageLimits, into: IO[bytes]) -> None:
    failed = f"Could not download {name}"
    if response.is_redirect or 300 <= response.status_code < 400:
        target = response.url.join(response.headers.get("location", "")).copy_with(query=None, fragment=None)
        raise ImageError(f"{failed}: the link redirects to {shorten(str(target), _LINK_CHARS)}.", "download")
    if not response.is_success:
        raise ImageError(f"{failed}: the server answered HTTP {response.status_code}.", "download")
    if response.headers.get("content-type", "").lower().startswith("text/html"):
        raise ImageError(f"{failed}: an HTML page came back instead of the image.", "html")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise _too_large(name, limits)
    received = 0
    async for chunk in response.aiter_bytes():
        received += len(chunk)
        if received > limits.max_bytes:
            raise _too_large(name, limits)
        into.write(chunk)


async def _public_address(host: str, port: int, *, name: str, limits: ImageLimits, allow_loopback: bool) -> str:
    """An address of `host` to connect to, once every address it resolves to passed the check.

    The lookup is the system's own, so hosts written as integers (2130706433, 0x7f.1, 0177.1) come
    back as the address they mean and are checked as such. IPv4 is preferred: the connection goes
    to this one address only (no fallback between families), and many servers have no working
    IPv6 route.
    """
    try:
        async with asyncio.timeout(limits.timeout):
            found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except TimeoutError as error:
        raise ImageError(f"Could not download {name}: looking up {host} took too long.", "download") from error
    except (OSError, UnicodeError) as error:
        raise ImageError(f"Could not download {name}: the host {host} was not found.", "address") from error
    # IPv6 link-local addresses come with a zone ("fe80::1%eth0") that ipaddress does not parse.
    addresses = [ipaddress.ip_address(str(sockaddr[0]).split("%")[0]) for *_, sockaddr in found]
    if not addresses or not all(may_fetch_from(address, allow_loopback) for address in addresses):
        raise ImageError(f"Could not download {name}: {host} is a private or local address.", "address")
    return str(min(addresses, key=lambda address: address.version))


# IPv6 ranges that carry an IPv4 address in their last 32 bits: IPv4-mapped (::ffff:0:0/96),
# SIIT's IPv4-translated (::ffff:0:0:0/96), NAT64's well-known prefix (64:ff9b::/96) and the old
# IPv4-compatible form (::/96, e.g. ::127.0.0.1). 6to4 (2002::/16) and Teredo (2001::/32) carry
# theirs elsewhere; Python's ipaddress finds those.
_CARRYING_IPV4 = tuple(
    ipaddress.IPv6Network(network) for network in ("::ffff:0:0/96", "::ffff:0:0:0/96", "64:ff9b::/96", "::/96")
)
_UNSPECIFIED_AND_LOOPBACK = ipaddress.IPv6Network("::/127")
# IPv6 ranges never public, whatever Python's `is_global` says: site-local (deprecated, fec0::/10)
# and the NAT64 prefix for local use (64:ff9b:1::/48), which translates to private networks.
_NEVER_PUBLIC = tuple(ipaddress.IPv6Network(network) for network in ("fec0::/10", "64:ff9b:1::/48"))


def may_fetch_from(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool = False) -> bool:
    """Whether a download may connect to `address`: a public unicast address, and nothing else.

    An IPv6 address that carries an IPv4 address reaches that IPv4 host, so it is judged as that
    host: 64:ff9b::7f00:1 is 127.0.0.1, 2002:a00:1:: is 10.0.0.1. Teredo carries two (the relay
    server and the client): both must be public.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address in _UNSPECIFIED_AND_LOOPBACK:  # :: and ::1 are themselves, not IPv4
            return address.is_loopback and allow_loopback
        if any(address in network for network in _NEVER_PUBLIC):
            return False
        if address.teredo:
            return all(may_fetch_from(carried, allow_loopback) for carried in address.teredo)
        if address.sixtofour:
            return may_fetch_from(address.sixtofour, allow_loopback)
        if any(address in network for network in _CARRYING_IPV4):
            return may_fetch_from(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF), allow_loopback)
    if address.is_loopback:
        return allow_loopback
    # is_global is False for private, link-local, reserved, shared (CGNAT) and unspecified ranges.
    return address.is_global and not address.is_multicast


def read_local_image(path: str | Path, limits: ImageLimits) -> tuple[str, bytes]:
    """Read an image file for the console adapter; returns (file name, bytes).

    The size is checked before reading, and at most one byte over the limit is ever read (the
    file could grow in between).
    """
    try:
        path = Path(path).expanduser()
    except RuntimeError as error:  # "~someone" for a user this machine does not know
        raise ImageError(f"{path} does not exist.", "file") from error
    try:
        if not path.exists():
            raise ImageError(f"{path} does not exist.", "file")
        if not path.is_file():
            raise ImageError(f"{path} is not a file.", "file")
        if path.stat().st_size > limits.max_bytes:
            raise _too_large(path.name, limits)
        with path.open("rb") as file:
            data = file.read(limits.max_bytes + 1)
    except OSError as error:
        raise ImageError(f"{path} could not be read.", "file") from error
    if len(data) > limits.max_bytes:
        raise _too_large(path.name, limits)
    return path.name, data


# --- Messages ------------------------------------------------------------------------------------


def _too_large(name: str, limits: ImageLimits) -> ImageError:
    return ImageError(f"{name} is over the {_describe_bytes(limits.max_bytes)} limit for images.", "too_large")


def _too_many_pixels(name: str, limits: ImageLimits) -> ImageError:
    return ImageError(
        f"{name} has too many pixels to process safely (over {limits.max_pixels / 1e6:.0f} megapixels).",
        "too_many_pixels",
    )


def _describe_bytes(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{round(count / (1024 * 1024), 1):g} MB"
    return f"{round(count / 1024, 1):g} KB"
