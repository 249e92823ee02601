"""From "a person attached an image" to "the vision model sees it".

Every adapter brings image bytes here: `download_image` (a platform file, with the adapter's own
auth headers), `fetch_public_image` (the `vision <url>` command), `read_local_image` (the console).
`prepare_image` then checks and normalises the bytes with Pillow so that what is uploaded is a
JPEG, PNG or WEBP the API takes: at most `max_bytes`, at most `target_side` pixels on the long side,
upright, in a plain colour mode, and small. Anything unusable is refused with an `ImageError` whose
text is a short sentence naming the file, fit to show the person as it is.

Limits come from the API (JPEG, PNG, WEBP, static GIF; 20 MB and 4096 px per image; 10 images per
request) and are enforced before anything costs memory or money: downloads stop at the byte limit,
and an image's pixel count is checked from its header before a single pixel is decoded.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import socket
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import httpx
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageError",
    "ImageLimits",
    "PreparedImage",
    "download_image",
    "fetch_public_image",
    "prepare_image",
    "prepare_images",
    "read_local_image",
]


class ImageError(Exception):
    """An image was refused; `str(error)` is a short sentence fit to show the person (names the file).

    `reason` is a short fixed word for metrics and adapters: empty, damaged, not_image, too_large,
    too_many_pixels, too_many_images, download, html (a web page came back, often a sign-in page),
    address or file.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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

# `prepare_images` decodes on this one thread, process-wide, for memory's sake: a decode can take
# 4 bytes a pixel (268 MB at `max_pixels`), and glibc gives every thread that allocates its own
# malloc arena, which keeps what Pillow freed. Measured with ten 20 MB downloads at once
# (benchmarks/images.py), asyncio.to_thread's pool cost 80 to 230 MB more at peak, and a second
# thread here 10 to 60 MB more, for about a third more images per second on two cores.
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


def prepare_image(data: bytes, name: str, limits: ImageLimits = ImageLimits()) -> PreparedImage:
    """Check `data` and normalise it for upload, or raise `ImageError`.

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
    if not data:
        raise ImageError(f"{name} is empty.", "empty")
    if len(data) > limits.max_bytes:
        raise _too_large(name, limits)
    bound = min(limits.target_side, limits.max_side)
    image = _open(data, name, limits)
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

    sendable_as_is = (
        source_format in _AS_IS_MIMES
        and source_mode in _AS_IS_MODES
        and not animated
        and not carries_metadata
        and orientation == 1
        and max(width, height) <= bound
    )
    if sendable_as_is and len(data) <= len(encoded):
        return PreparedImage(name, data, _AS_IS_MIMES[source_format], width, height, len(data))

    notes = []
    if animated:
        notes.append(f"{name} is animated: only its first frame was used.")
    if image.size != (width, height):
        notes.append(f"{name} was scaled down from {width}x{height} to {image.width}x{image.height}.")
    return PreparedImage(name, encoded, mime, image.width, image.height, len(data), tuple(notes))


def _open(data: bytes, name: str, limits: ImageLimits) -> Image.Image:
    """Identify the image from its content and refuse a bomb from its header, before decoding."""
    try:
        image = Image.open(io.BytesIO(data), formats=_INPUT_FORMATS)
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


async def prepare_images(
    items: Sequence[tuple[str, bytes]], limits: ImageLimits = ImageLimits()
) -> tuple[list[PreparedImage], list[ImageError]]:
    """Prepare `(name, bytes)` pairs on the decoding thread, in order; returns (prepared, refusals).

    Refusals are the `ImageError`s, in order, then one naming the images beyond `max_images`,
    which are skipped unread. Any other exception is a bug and propagates.
    """
    kept, skipped = items[: limits.max_images], items[limits.max_images :]
    loop = asyncio.get_running_loop()
    results = await asyncio.gather(
        *(loop.run_in_executor(_DECODER, prepare_image, data, name, limits) for name, data in kept),
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
        names = ", ".join(name for name, _ in skipped)
        message = f"At most {limits.max_images} images are taken per request, so these were skipped: {names}."
        refusals.append(ImageError(message, "too_many_images"))
    return prepared, refusals


# --- Getting the bytes ---------------------------------------------------------------------------


async def download_image(
    http: httpx.AsyncClient,
    url: str,
    *,
    name: str,
    limits: ImageLimits,
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """Download one image, streamed and cut off as soon as more than `max_bytes` arrived.

    Redirects are not followed (a 3xx is refused, naming where it led): the adapter decided that
    this host may receive `headers`, not wherever the host points to. `limits.timeout` bounds the
    whole download, not just each read, so a server trickling bytes cannot hold a request open.
    Checking which hosts may receive auth headers is the adapter's job.
    """
    try:
        request = http.build_request("GET", url, headers=headers, timeout=limits.timeout)
    except httpx.InvalidURL as error:
        raise ImageError(f"Could not download {name}: {_shorten(url)} is not a valid link.", "address") from error
    return await _download(http, request, name, limits)


async def _download(http: httpx.AsyncClient, request: httpx.Request, name: str, limits: ImageLimits) -> bytes:
    failed = f"Could not download {name}"
    try:
        async with asyncio.timeout(limits.timeout):
            response = await http.send(request, stream=True, follow_redirects=False)
            try:
                return await _read_body(response, name, limits)
            finally:
                await response.aclose()
    except (TimeoutError, httpx.TimeoutException) as error:
        raise ImageError(f"{failed}: it took longer than {limits.timeout:g} seconds.", "download") from error
    except httpx.UnsupportedProtocol as error:
        raise ImageError(f"{failed}: {_shorten(str(request.url))} is not an http or https link.", "address") from error
    except httpx.ConnectError as error:
        raise ImageError(f"{failed}: the server could not be reached.", "download") from error
    except httpx.HTTPError as error:  # the connection broke, or the server spoke no valid HTTP
        raise ImageError(f"{failed}: the connection broke off.", "download") from error


async def _read_body(response: httpx.Response, name: str, limits: ImageLimits) -> bytes:
    failed = f"Could not download {name}"
    if response.is_redirect or 300 <= response.status_code < 400:
        target = response.url.join(response.headers.get("location", "")).copy_with(query=None, fragment=None)
        raise ImageError(f"{failed}: the link redirects to {_shorten(str(target))}.", "download")
    if not response.is_success:
        raise ImageError(f"{failed}: the server answered HTTP {response.status_code}.", "download")
    if response.headers.get("content-type", "").lower().startswith("text/html"):
        raise ImageError(f"{failed}: an HTML page came back instead of the image.", "html")
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limits.max_bytes:
        raise _too_large(name, limits)
    # BytesIO grows in place and hands its buffer over without a copy: one image, one copy in memory.
    body = io.BytesIO()
    async for chunk in response.aiter_bytes():
        body.write(chunk)
        if body.tell() > limits.max_bytes:
            raise _too_large(name, limits)
    return body.getvalue()


async def fetch_public_image(
    http: httpx.AsyncClient, url: str, *, limits: ImageLimits, allow_loopback: bool = False
) -> tuple[str, bytes]:
    """Download a public http(s) image for `vision <url>`; returns (name from the URL, bytes).

    The host is resolved first and refused if any of its addresses is private, loopback,
    link-local, reserved or multicast (`allow_loopback`, for tests, admits loopback only), so that
    a person cannot make the bot fetch from the network it runs in. The request then goes to the
    checked address itself (the Host header and TLS name stay the URL's), so a DNS answer that
    changes between check and connection cannot slip a private address in.
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise ImageError(f"{_shorten(url)} is not a valid link.", "address") from error
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ImageError(f"{_shorten(url)} is not an http or https link.", "address")
    name = parsed.path.rsplit("/", 1)[-1][:100] or "image"
    host = parsed.raw_host.decode("ascii")
    address = await _public_address(host, parsed.port or (443 if parsed.scheme == "https" else 80),
                                    name=name, limits=limits, allow_loopback=allow_loopback)
    request = http.build_request(
        "GET",
        parsed.copy_with(host=address),
        headers={"Host": parsed.netloc.decode("ascii")},
        extensions={"sni_hostname": host},
        timeout=limits.timeout,
    )
    return name, await _download(http, request, name, limits)


async def _public_address(host: str, port: int, *, name: str, limits: ImageLimits, allow_loopback: bool) -> str:
    """An address of `host` to connect to, once every address it resolves to passed the check.

    IPv4 is preferred: the connection goes to this one address only (no fallback between
    families), and many servers have no working IPv6 route.
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
    if not addresses or not all(_may_fetch_from(address, allow_loopback) for address in addresses):
        raise ImageError(f"Could not download {name}: {host} is a private or local address.", "address")
    return str(min(addresses, key=lambda address: address.version))


def _may_fetch_from(address: ipaddress.IPv4Address | ipaddress.IPv6Address, allow_loopback: bool) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
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


def _shorten(text: str, limit: int = 100) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
