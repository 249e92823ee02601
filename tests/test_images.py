"""core.images: the corpus is generated here with Pillow (nothing is downloaded), and downloads go
to a small aiohttp server on 127.0.0.1 started by the tests themselves."""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import socket
import struct
import threading
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from PIL import ExifTags, Image, ImageStat

from adapters.slack import SlackAdapter
from core import images
from core.client import IOClient
from core.http_transport import aiohttp_transport
from core.images import (
    ImageBudget,
    ImageError,
    ImageLimits,
    ImageSource,
    PreparedImage,
    download_image,
    may_fetch_from,
    prepare_image,
    prepare_images,
    public_image,
    read_local_image,
)
from core.ledger import Ledger, MemoryStore
from core.quotas import load_quota_table
from core.service import IMAGES_WAITING, Progress, Request, Service, ServiceConfig
from core.tokens import TOKENS_PER_MESSAGE, estimate_message_tokens, image_tokens
from emulator import Emulator

LIMITS = ImageLimits()
MB = 1024 * 1024


# --- The corpus ----------------------------------------------------------------------------------


def encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


def photo(width: int, height: int) -> Image.Image:
    """Photo-like: smooth gradients plus sensor-like noise, so it has thousands of colours."""
    return Image.merge(
        "RGB",
        (
            Image.linear_gradient("L").resize((width, height)),
            Image.radial_gradient("L").resize((width, height)),
            Image.effect_noise((width, height), 24),
        ),
    )


def png_of_zeros(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of `width` x `height` black pixels, built chunk by chunk.

    Pillow cannot make a 30000x30000 image cheaply (it would allocate 900 MB first), but a real
    bomb is exactly this: huge dimensions, a body that zlib squeezes to almost nothing.
    """

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    row = bytes(1 + (width + 7) // 8)  # filter byte, then the packed bits
    compressor = zlib.compressobj(9)
    body = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def big_photo_jpeg() -> bytes:
    return encode(photo(6000, 4000), "JPEG", quality=90)


def opened(prepared: PreparedImage) -> Image.Image:
    image = Image.open(io.BytesIO(prepared.data))
    image.load()
    return image


def channels(image: Image.Image, xy: tuple[int, int]) -> tuple[int, ...]:
    """One pixel's channel values, of an image with more than one band."""
    pixel = image.getpixel(xy)
    assert isinstance(pixel, tuple), f"a single-band pixel: {pixel!r}"
    return pixel


def assert_sendable(prepared: PreparedImage, limits: ImageLimits = LIMITS) -> Image.Image:
    """What every accepted image must be: within the limits, and exactly what it says it is."""
    assert 0 < len(prepared.data) <= limits.max_bytes
    assert max(prepared.width, prepared.height) <= min(limits.target_side, limits.max_side)
    image = opened(prepared)
    assert image.size == (prepared.width, prepared.height)
    assert image.format is not None
    assert prepared.mime == {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}[image.format]
    assert image.mode in ("L", "RGB", "RGBA")
    return image


def refusal(data: bytes, name: str, limits: ImageLimits = LIMITS) -> str:
    with pytest.raises(ImageError) as caught:
        prepare_image(data, name, limits)
    assert name in str(caught.value)
    return str(caught.value)


# --- Accepted and normalised ---------------------------------------------------------------------


def test_rgba_png_keeps_its_transparency() -> None:
    image = Image.new("RGBA", (300, 200), (200, 30, 30, 255))
    image.paste((0, 0, 0, 0), (0, 0, 150, 200))
    prepared = prepare_image(encode(image, "PNG"), "logo.png")
    result = assert_sendable(prepared)
    assert prepared.mime == "image/png" and result.mode == "RGBA"
    assert channels(result, (10, 10))[3] == 0
    assert result.getpixel((290, 10)) == (200, 30, 30, 255)


def test_opaque_rgba_png_drops_the_alpha_channel_and_shrinks() -> None:
    data = encode(photo(640, 480).convert("RGBA"), "PNG")
    prepared = prepare_image(data, "shot.png")
    result = assert_sendable(prepared)
    assert result.mode == "RGB" and prepared.mime == "image/jpeg"
    assert prepared.saved_bytes > len(data) // 2


def test_palette_gif_becomes_an_exact_png() -> None:
    source = Image.new("RGB", (64, 64), "white")
    source.paste((255, 0, 0), (0, 0, 32, 32))
    source.paste((0, 0, 255), (32, 32, 64, 64))
    gif = source.quantize(4)
    prepared = prepare_image(encode(gif, "GIF"), "chart.gif")
    result = assert_sendable(prepared)
    assert prepared.mime == "image/png" and prepared.notes == ()
    assert list(result.convert("RGB").get_flattened_data()) == list(gif.convert("RGB").get_flattened_data())


def test_cmyk_jpeg_becomes_rgb_with_the_same_colours() -> None:
    source = photo(800, 600)
    prepared = prepare_image(encode(source.convert("CMYK"), "JPEG", quality=90), "print.jpg")
    result = assert_sendable(prepared)
    assert result.mode == "RGB"
    expected = ImageStat.Stat(source.convert("CMYK").convert("RGB")).mean
    assert all(abs(a - b) < 3 for a, b in zip(ImageStat.Stat(result).mean, expected))


def test_16_bit_png_is_scaled_to_8_bits_not_clipped() -> None:
    source = Image.new("I;16", (4, 1))
    source.putdata([0, 256, 32768, 65535])
    prepared = prepare_image(encode(source, "PNG"), "scan.png")
    result = assert_sendable(prepared)
    assert result.mode == "L" and prepared.mime == "image/png"
    assert list(result.get_flattened_data()) == [0, 1, 128, 255]  # clipping would give 0, 255, 255, 255


def test_greyscale_photos_go_jpeg_and_greyscale_drawings_png() -> None:
    grey_photo = prepare_image(encode(photo(640, 480).convert("L"), "PNG"), "x-ray.png")
    assert assert_sendable(grey_photo).mode == "L" and grey_photo.mime == "image/jpeg"
    drawing = Image.new("L", (640, 480), 255)
    drawing.paste(0, (100, 100, 300, 110))
    grey_drawing = prepare_image(encode(drawing, "JPEG", quality=95), "sketch.jpg")
    assert assert_sendable(grey_drawing).mode == "L" and grey_drawing.mime == "image/png"


def test_webp_photo_is_accepted() -> None:
    data = encode(photo(640, 480), "WEBP", quality=80)
    prepared = prepare_image(data, "holiday.webp")
    assert_sendable(prepared)
    assert prepared.mime in ("image/webp", "image/jpeg")
    assert len(prepared.data) <= len(data)


def test_exif_rotated_jpeg_is_turned_upright() -> None:
    stored = Image.new("RGB", (300, 200), (220, 0, 0))
    stored.paste((0, 0, 220), (150, 0, 300, 200))  # red left half, blue right half, as stored
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6  # "rotate 90 degrees clockwise to display"
    prepared = prepare_image(encode(stored, "JPEG", exif=exif), "phone.jpg")
    result = assert_sendable(prepared)
    assert result.size == (200, 300)
    red, blue = channels(result, (100, 60)), channels(result, (100, 240))
    assert red[0] > 180 and red[2] < 60
    assert blue[2] > 180 and blue[0] < 60
    # The tag went with the rotation: a client applying it again would turn the image sideways.
    assert result.getexif().get(ExifTags.Base.Orientation, 1) == 1


def test_large_photo_is_scaled_down_and_saves_bytes(big_photo_jpeg: bytes) -> None:
    prepared = prepare_image(big_photo_jpeg, "photo.jpg")
    assert_sendable(prepared)
    assert (prepared.width, prepared.height) == (2048, 1365)
    assert prepared.mime == "image/jpeg"
    assert prepared.notes == ("photo.jpg was scaled down from 6000x4000 to 2048x1365.",)
    assert prepared.original_bytes == len(big_photo_jpeg)
    assert prepared.saved_bytes == len(big_photo_jpeg) - len(prepared.data) > 0


def test_the_downscaling_bound_is_configurable(big_photo_jpeg: bytes) -> None:
    limits = ImageLimits(target_side=512)
    prepared = prepare_image(big_photo_jpeg, "photo.jpg", limits)
    assert_sendable(prepared, limits)
    assert (prepared.width, prepared.height) == (512, 341)


def test_animated_gif_sends_its_first_frame_and_says_so() -> None:
    frames = [Image.new("RGB", (40, 40), colour) for colour in ("red", "lime", "blue")]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    prepared = prepare_image(data, "cat.gif")
    result = assert_sendable(prepared)
    assert result.convert("RGB").getpixel((20, 20)) == (255, 0, 0)
    assert prepared.notes == ("cat.gif is animated: only its first frame was used.",)


def test_mpo_photo_is_one_picture_not_an_animation() -> None:
    main, depth_map = photo(320, 240), Image.new("RGB", (320, 240), "gray")
    data = encode(main, "MPO", save_all=True, append_images=[depth_map])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    prepared = prepare_image(data, "portrait.jpg")
    result = assert_sendable(prepared)
    assert prepared.mime == "image/jpeg" and prepared.notes == ()
    assert channels(result, (0, 0))[1] != 128  # the photo, not the grey depth map


def test_format_comes_from_the_content_not_the_name() -> None:
    prepared = prepare_image(encode(photo(320, 240), "JPEG"), "really-a-jpeg.png")
    assert_sendable(prepared)
    assert prepared.mime == "image/jpeg"


def test_an_original_fit_to_send_is_sent_untouched() -> None:
    data = encode(photo(640, 480), "JPEG", quality=60, optimize=True)  # re-encoding at 85 would grow it
    prepared = prepare_image(data, "small.jpg")
    assert prepared.data is data
    assert prepared.saved_bytes == 0 and prepared.notes == ()
    assert (prepared.mime, prepared.width, prepared.height) == ("image/jpeg", 640, 480)


def test_a_photo_with_its_location_in_exif_is_reencoded_without_it() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Make] = "PhoneCo"
    exif.get_ifd(ExifTags.IFD.GPSInfo)[ExifTags.GPS.GPSLatitude] = (48.0, 51.0, 29.0)
    data = encode(photo(640, 480), "JPEG", quality=60, optimize=True, exif=exif)  # small enough to send as is
    assert Image.open(io.BytesIO(data)).getexif().get_ifd(ExifTags.IFD.GPSInfo)
    prepared = prepare_image(data, "holiday.jpg")
    assert prepared.data != data
    sent = opened(prepared)
    assert not sent.getexif() and "exif" not in sent.info


def test_reencoding_never_goes_over_max_bytes() -> None:
    noise = Image.merge("RGB", [Image.effect_noise((600, 600), 100) for _ in range(3)])
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 3  # upside down: the original cannot be sent as it is
    data = encode(noise, "JPEG", quality=30, exif=exif)
    limits = ImageLimits(max_bytes=len(data) + 1000)
    assert len(encode(noise, "JPEG", quality=85)) > limits.max_bytes  # a plain re-encode would not fit
    prepared = prepare_image(data, "noise.jpg", limits)
    assert_sendable(prepared, limits)
    assert prepared.width < 600
    assert prepared.notes == (f"noise.jpg was scaled down from 600x600 to {prepared.width}x{prepared.height}.",)


def test_data_url_carries_the_uploaded_bytes() -> None:
    prepared = prepare_image(encode(Image.new("RGB", (8, 8), "red"), "PNG"), "dot.png")
    prefix = "data:image/png;base64,"
    assert prepared.data_url.startswith(prefix)
    assert base64.b64decode(prepared.data_url[len(prefix) :]) == prepared.data


# --- Refused -------------------------------------------------------------------------------------


def test_a_25_mb_file_is_refused_before_decoding() -> None:
    data = b"\x89PNG\r\n\x1a\n" + bytes(25 * MB)
    assert refusal(data, "huge.png") == "huge.png is over the 20 MB limit for images."


def test_a_30000_by_30000_bomb_is_refused() -> None:
    bomb = png_of_zeros(30000, 30000)
    assert len(bomb) < 200_000
    assert refusal(bomb, "bomb.png") == "bomb.png has too many pixels to process safely (over 67 megapixels)."


def test_a_bomb_under_pillows_own_limit_is_refused_by_ours() -> None:
    bomb = png_of_zeros(9000, 9000)  # 81 MP: Pillow itself would decode it without a warning
    with Image.open(io.BytesIO(bomb)) as image:
        assert image.size == (9000, 9000)
    assert "too many pixels" in refusal(bomb, "big.png")
    # Under a higher bound the very same file is accepted, so the refusal was the pixel bound.
    limits = ImageLimits(max_pixels=100_000_000)
    assert_sendable(prepare_image(bomb, "big.png", limits), limits)


def test_a_truncated_png_is_refused() -> None:
    data = encode(photo(400, 300), "PNG")
    assert refusal(data[: len(data) * 2 // 3], "cut.png") == "cut.png could not be read: the file is damaged or incomplete."


def test_a_truncated_jpeg_is_refused() -> None:
    data = encode(photo(400, 300), "JPEG")
    assert "damaged or incomplete" in refusal(data[: len(data) // 2], "cut.jpg")


def test_a_pdf_renamed_png_is_refused() -> None:
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    assert refusal(pdf, "report.png") == "report.png is not a JPEG, PNG, WEBP or GIF image."


def test_an_image_in_another_format_is_refused() -> None:
    assert "is not a JPEG, PNG, WEBP or GIF image" in refusal(encode(photo(64, 64), "BMP"), "old.bmp")


def test_an_empty_file_is_refused() -> None:
    assert refusal(b"", "nothing.png") == "nothing.png is empty."


def test_limits_are_checked_when_made() -> None:
    with pytest.raises(ValueError):
        ImageLimits(target_side=5000)
    with pytest.raises(ValueError):
        ImageLimits(max_bytes=0)


# --- Several images at once ----------------------------------------------------------------------


async def test_prepare_images_keeps_order_and_collects_refusals() -> None:
    items = [
        ("a.png", encode(Image.new("RGB", (10, 10), "red"), "PNG")),
        ("b.png", b""),
        ("c.pdf", b"%PDF-1.4"),
        ("d.png", encode(Image.new("RGB", (10, 10), "blue"), "PNG")),
    ]
    prepared, refusals = await prepare_images(items, LIMITS)
    assert [image.name for image in prepared] == ["a.png", "d.png"]
    assert [(str(error), error.reason) for error in refusals] == [
        ("b.png is empty.", "empty"),
        ("c.pdf is not a JPEG, PNG, WEBP or GIF image.", "not_image"),
    ]


async def test_images_beyond_ten_are_skipped_by_name() -> None:
    colours = [(i * 20, 0, 0) for i in range(12)]
    items = [(f"p{i}.png", encode(Image.new("RGB", (16, 16), c), "PNG")) for i, c in enumerate(colours)]
    prepared, refusals = await prepare_images(items, LIMITS)
    assert [image.name for image in prepared] == [f"p{i}.png" for i in range(10)]
    # Run in parallel threads, yet each result is its own image.
    assert [opened(image).convert("RGB").getpixel((0, 0)) for image in prepared] == colours[:10]
    assert [str(error) for error in refusals] == [
        "At most 10 images are taken per request, so these were skipped: p10.png, p11.png."
    ]
    assert refusals[0].reason == "too_many_images"


async def test_images_are_decoded_one_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten people posting at once must not mean ten decodes at once (memory)."""
    lock, running, peak = threading.Lock(), [0], [0]
    real_prepare = images.prepare_image

    def counting_prepare(data: bytes, name: str, limits: ImageLimits) -> PreparedImage:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        try:
            return real_prepare(data, name, limits)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(images, "prepare_image", counting_prepare)
    items = [(f"{i}.png", encode(Image.new("RGB", (8, 8)), "PNG")) for i in range(4)]
    results = await asyncio.gather(*(prepare_images(items, LIMITS) for _ in range(3)))
    assert [len(prepared) for prepared, _ in results] == [4, 4, 4]
    assert peak[0] == 1


def test_prepare_image_is_thread_safe() -> None:
    colours = [(i * 40, 255 - i * 40, 90) for i in range(6)]
    photos = [encode(photo(800, 600), "PNG")] * 6  # many colours: these go through JPEG
    items = [encode(Image.new("RGB", (700, 500), c), "PNG") for c in colours] + photos
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda data: prepare_image(data, "x.png", ImageLimits(target_side=600)), items))
    alone = [prepare_image(data, "x.png", ImageLimits(target_side=600)) for data in items]
    assert together == alone
    assert [opened(p).convert("RGB").getpixel((5, 5)) for p in together[:6]] == colours


# --- Local files ---------------------------------------------------------------------------------


def test_read_local_image(tmp_path: Path) -> None:
    data = encode(Image.new("RGB", (8, 8)), "PNG")
    (tmp_path / "dot.png").write_bytes(data)
    assert read_local_image(tmp_path / "dot.png", LIMITS) == ("dot.png", data)


def test_read_local_image_refuses_missing_files_and_directories(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        read_local_image(tmp_path / "nope.png", LIMITS)
    with pytest.raises(ImageError, match="is not a file"):
        read_local_image(tmp_path, LIMITS)


def test_read_local_image_refuses_a_big_file_without_opening_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "huge.jpg"
    with big.open("wb") as file:
        file.truncate(25 * MB)  # sparse: costs no disk

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was opened")

    monkeypatch.setattr(Path, "open", no_open)
    with pytest.raises(ImageError, match=r"huge\.jpg is over the 20 MB limit"):
        read_local_image(big, LIMITS)


# --- Downloads from a local server ---------------------------------------------------------------

CAT = encode(Image.new("RGB", (32, 32), "orange"), "PNG")
BIG_BODY = 25 * MB
# About 6 MB that PNG cannot shrink (stored uncompressed), quick to make and to decode.
NOISE = encode(Image.merge("RGB", [Image.effect_noise((1450, 1450), 64)] * 3), "PNG", compress_level=0)


@dataclass
class Server:
    base: str
    port: int
    hits: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    sent: dict[str, int] = field(default_factory=dict)


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server("", 0)

    async def cat(request: web.Request) -> web.Response:
        state.hosts.append(request.headers.get("Host", ""))
        return web.Response(body=CAT, content_type="image/png")

    async def private(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != "Bearer xoxb-test":
            return web.Response(status=403)
        return web.Response(body=CAT, content_type="image/png")

    async def huge(request: web.Request) -> web.StreamResponse:
        return await stream(request, web.StreamResponse(headers={"Content-Type": "image/png"}))

    async def declared_huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = BIG_BODY
        return await stream(request, response)

    async def stream(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
        """25 MB of a 'PNG' in 256 KB pieces, counting what was handed to the socket."""
        # A small send buffer, so that bytes counted as sent are close to bytes the client took.
        assert request.transport is not None
        request.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        await response.prepare(request)
        state.sent[request.path] = 0
        piece = b"\x89PNG\r\n\x1a\n" + bytes(256 * 1024 - 8)
        while state.sent[request.path] < BIG_BODY:
            await response.write(piece)
            state.sent[request.path] += len(piece)
            await asyncio.sleep(0.001)
        return response

    async def short_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = 100_000  # a lie: 1,000 bytes come, then the connection closes
        await response.prepare(request)
        await response.write(CAT[:1000])
        assert request.transport is not None
        request.transport.close()
        return response

    async def trickle(request: web.Request) -> web.StreamResponse:
        """A valid image, a few bytes every 50 ms: each read is quick, the whole is slow."""
        response = web.StreamResponse(headers={"Content-Type": "image/png"})
        response.content_length = len(CAT)
        await response.prepare(request)
        for start in range(0, len(CAT), 4):
            await response.write(CAT[start : start + 4])
            await asyncio.sleep(0.05)
        return response

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(body=CAT, content_type="image/png")

    async def moved(request: web.Request) -> web.Response:
        target = f"http://localhost:{state.port}/cat.png?token=secret"
        return web.Response(status=302, headers={"Location": target})

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<html><body>Sign in</body></html>", content_type="text/html")

    async def missing(request: web.Request) -> web.Response:
        return web.Response(status=404)

    async def noise(request: web.Request) -> web.Response:
        return web.Response(body=NOISE, content_type="image/png")

    async def late(request: web.Request) -> web.Response:
        await asyncio.sleep(0.5)
        return web.Response(body=CAT, content_type="image/png")

    @web.middleware
    async def record(request: web.Request, handler: object) -> web.StreamResponse:
        state.hits.append(request.path)
        return await handler(request)  # type: ignore[operator]

    app = web.Application(middlewares=[record])
    app.router.add_get("/cat.png", cat)
    app.router.add_get("/private.png", private)
    app.router.add_get("/huge.png", huge)
    app.router.add_get("/declared-huge.png", declared_huge)
    app.router.add_get("/short.png", short_body)
    app.router.add_get("/trickle.png", trickle)
    app.router.add_get("/slow.png", slow)
    app.router.add_get("/moved.png", moved)
    app.router.add_get("/page.png", page)
    app.router.add_get("/missing.png", missing)
    app.router.add_get("/noise.png", noise)
    app.router.add_get("/late.png", late)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    state.base = f"http://127.0.0.1:{state.port}"
    yield state
    await runner.cleanup()


@pytest.fixture(params=["aiohttp", "httpcore"])
async def http(request: pytest.FixtureRequest) -> AsyncIterator[httpx.AsyncClient]:
    """The process's downloads client (httpx on aiohttp's pool) and httpx's own transport: the limits hold on both."""
    transport = aiohttp_transport() if request.param == "aiohttp" else None
    async with httpx.AsyncClient(transport=transport) as client:
        yield client


async def download(
    http: httpx.AsyncClient,
    url: str,
    limits: ImageLimits = LIMITS,
    *,
    allow_loopback: bool = True,
    headers: Mapping[str, str] | None = None,
    html_refusal: str | None = None,
) -> bytes:
    into = io.BytesIO()
    source = ImageSource("x.png", url, headers=headers or {}, html_refusal=html_refusal)
    await download_image(http, source, into, limits=limits, allow_loopback=allow_loopback)
    return into.getvalue()


async def download_refusal(
    http: httpx.AsyncClient, url: str, limits: ImageLimits = LIMITS, *, html_refusal: str | None = None
) -> str:
    with pytest.raises(ImageError) as caught:
        await download(http, url, limits, html_refusal=html_refusal)
    assert "x.png" in str(caught.value)
    return str(caught.value)


async def test_download_returns_the_bytes_and_sends_the_sources_headers(server: Server, http: httpx.AsyncClient) -> None:
    url = f"{server.base}/private.png"
    assert "HTTP 403" in await download_refusal(http, url)
    assert await download(http, url, headers={"Authorization": "Bearer xoxb-test"}) == CAT


async def test_download_stops_at_the_limit_while_streaming(server: Server, http: httpx.AsyncClient) -> None:
    message = await download_refusal(http, f"{server.base}/huge.png")
    assert message == "x.png is over the 20 MB limit for images."
    await asyncio.sleep(0.1)  # let the server notice the closed connection
    assert LIMITS.max_bytes < server.sent["/huge.png"] < LIMITS.max_bytes + 2 * MB < BIG_BODY


async def test_download_believes_a_content_length_over_the_limit(server: Server, http: httpx.AsyncClient) -> None:
    assert "over the 20 MB limit" in await download_refusal(http, f"{server.base}/declared-huge.png")
    await asyncio.sleep(0.1)
    assert server.sent["/declared-huge.png"] < 2 * MB


async def test_download_refuses_a_body_shorter_than_its_content_length(server: Server, http: httpx.AsyncClient) -> None:
    assert await download_refusal(http, f"{server.base}/short.png") == "Could not download x.png: the connection broke off."


async def test_download_reports_http_errors(server: Server, http: httpx.AsyncClient) -> None:
    assert await download_refusal(http, f"{server.base}/missing.png") == "Could not download x.png: the server answered HTTP 404."


async def test_download_does_not_follow_redirects(server: Server, http: httpx.AsyncClient) -> None:
    message = await download_refusal(http, f"{server.base}/moved.png")
    assert message == f"Could not download x.png: the link redirects to http://localhost:{server.port}/cat.png."
    assert server.hits == ["/moved.png"]  # the target was never asked


async def test_download_refuses_an_html_page(server: Server, http: httpx.AsyncClient) -> None:
    message = await download_refusal(http, f"{server.base}/page.png")
    assert message == "Could not download x.png: an HTML page came back instead of the image."
    explained = await download_refusal(http, f"{server.base}/page.png", html_refusal="x.png: sign-in page, check scopes.")
    assert explained == "x.png: sign-in page, check scopes."


async def test_download_times_out_waiting_for_an_answer(server: Server, http: httpx.AsyncClient) -> None:
    message = await download_refusal(http, f"{server.base}/slow.png", ImageLimits(timeout=0.3))
    assert message == "Could not download x.png: it took longer than 0.3 seconds."


async def test_download_timeout_covers_the_whole_body(server: Server, http: httpx.AsyncClient) -> None:
    # Each piece arrives within 50 ms, so only a deadline for the whole download can stop this.
    message = await download_refusal(http, f"{server.base}/trickle.png", ImageLimits(timeout=0.5))
    assert message == "Could not download x.png: it took longer than 0.5 seconds."


async def test_download_refuses_other_schemes(http: httpx.AsyncClient) -> None:
    message = await download_refusal(http, "ftp://files.example/x.png")
    assert message == "Could not download x.png: ftp://files.example/x.png is not an http or https link."


async def test_download_reports_an_unreachable_server(http: httpx.AsyncClient) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    message = await download_refusal(http, f"http://127.0.0.1:{port}/x.png")
    assert message == "Could not download x.png: the server could not be reached."


# --- Public addresses only (`vision <url>` and every file download) -------------------------------


@pytest.fixture
async def watched_http() -> AsyncIterator[tuple[httpx.AsyncClient, list[httpx.Request]]]:
    """A client that records every request it is about to send."""
    attempted: list[httpx.Request] = []

    async def record(request: httpx.Request) -> None:
        attempted.append(request)

    async with httpx.AsyncClient(event_hooks={"request": [record]}, timeout=1.0, transport=aiohttp_transport()) as client:
        yield client, attempted


# Every way of writing a host that is, or reaches, this machine or a private network.
PRIVATE_LINKS = [
    "http://127.0.0.1:{port}/cat.png",
    "http://localhost:{port}/cat.png",
    "http://LOCALHOST:{port}/cat.png",
    "http://10.1.2.3/cat.png",
    "http://192.168.0.1/cat.png",
    "http://100.64.0.1/cat.png",  # shared address space (carrier-grade NAT)
    "http://169.254.169.254/latest/meta-data/",  # cloud metadata
    "http://0.0.0.0:{port}/cat.png",
    "http://0:{port}/cat.png",
    "http://224.0.0.1/cat.png",
    # IPv4 written as one number, in hex, in octal, or shortened: the resolver reads them all.
    "http://2130706433:{port}/cat.png",
    "http://0x7f000001:{port}/cat.png",
    "http://0x7f.1:{port}/cat.png",
    "http://017700000001:{port}/cat.png",
    "http://127.1:{port}/cat.png",
    "http://167772161/cat.png",  # 10.0.0.1
    # IPv6 itself.
    "http://[::1]:{port}/cat.png",
    "http://[::]:{port}/cat.png",
    "http://[fe80::1]/cat.png",  # link-local
    "http://[fc00::1]/cat.png",  # unique local
    "http://[fd12:3456::1]/cat.png",
    "http://[fec0::1]/cat.png",  # site-local (deprecated, still routed by some)
    "http://[ff02::1]/cat.png",  # multicast
    # IPv6 that carries a private or loopback IPv4.
    "http://[::ffff:127.0.0.1]:{port}/cat.png",  # IPv4-mapped
    "http://[::ffff:7f00:1]:{port}/cat.png",
    "http://[::ffff:0:127.0.0.1]/cat.png",  # SIIT, IPv4-translated
    "http://[::ffff:0:a00:1]/cat.png",
    "http://[::127.0.0.1]/cat.png",  # IPv4-compatible
    "http://[::a00:1]/cat.png",
    "http://[64:ff9b::127.0.0.1]/cat.png",  # NAT64, well-known prefix
    "http://[64:ff9b::7f00:1]/cat.png",
    "http://[64:ff9b::a9fe:a9fe]/latest/meta-data/",  # 169.254.169.254
    "http://[64:ff9b:1::808:808]/cat.png",  # NAT64 for local use: private whatever it carries
    "http://[2002:7f00:1::1]/cat.png",  # 6to4 of 127.0.0.1
    "http://[2002:c0a8:1::]/cat.png",  # 6to4 of 192.168.0.1
    "http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/cat.png",  # Teredo
    "http://[2001:0:7f00:1:0:0:80ff:fffe]/cat.png",  # Teredo, server 127.0.0.1
]


@pytest.mark.parametrize("url", PRIVATE_LINKS)
async def test_private_addresses_are_refused_without_a_request(
    url: str, server: Server, watched_http: tuple[httpx.AsyncClient, list[httpx.Request]]
) -> None:
    client, attempted = watched_http
    with pytest.raises(ImageError, match="is a private or local address"):
        await download_image(client, public_image(url.format(port=server.port)), io.BytesIO(), limits=LIMITS)
    assert attempted == [] and server.hits == []


@pytest.mark.parametrize(
    ("address", "public"),
    [
        ("8.8.8.8", True),
        ("2606:4700:4700::1111", True),
        ("::ffff:8.8.8.8", True),  # a public IPv4, however it is written
        ("64:ff9b::808:808", True),  # NAT64 to a public IPv4: how IPv6-only networks reach it
        ("2002:808:808::1", True),  # 6to4 of a public IPv4
        ("127.0.0.1", False),
        ("::1", False),
        ("64:ff9b::7f00:1", False),
        ("64:ff9b::a00:1", False),
        ("64:ff9b:1::808:808", False),
        ("2002:a00:1::", False),
        ("::ffff:0:7f00:1", False),
        ("::7f00:1", False),
        ("fec0::1", False),
        ("ff0e::1", False),
        ("::", False),
    ],
)
def test_which_addresses_are_public(address: str, public: bool) -> None:
    assert may_fetch_from(ipaddress.ip_address(address)) is public


def test_loopback_allowance_covers_loopback_in_every_spelling_and_nothing_else() -> None:
    for address in ("127.0.0.1", "::1", "::ffff:127.0.0.1", "64:ff9b::7f00:1", "2002:7f00:1::"):
        assert may_fetch_from(ipaddress.ip_address(address), allow_loopback=True), address
    for address in ("10.0.0.1", "64:ff9b::a00:1", "fec0::1", "::"):
        assert not may_fetch_from(ipaddress.ip_address(address), allow_loopback=True), address


async def test_loopback_is_allowed_only_when_asked(server: Server, http: httpx.AsyncClient) -> None:
    source = public_image(f"{server.base}/cat.png?size=large")
    assert source.name == "cat.png"
    assert await download(http, source.url) == CAT
    with pytest.raises(ImageError, match="private or local"):
        await download(http, source.url, allow_loopback=False)
    with pytest.raises(ImageError, match="private or local"):
        await download(http, "http://10.1.2.3/cat.png")


async def test_download_connects_to_the_checked_address_under_the_original_name() -> None:
    """The address that passed the check is the one connected to: a second DNS answer cannot differ."""
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=CAT, headers={"Content-Type": "image/png"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
        source = public_image("http://localhost:8080/pics/")
        into = io.BytesIO()
        await download_image(client, source, into, limits=LIMITS, allow_loopback=True)
    assert (source.name, into.getvalue()) == ("image", CAT)
    [request] = seen
    assert request.url.host == "127.0.0.1" and request.url.path == "/pics/"
    assert request.headers["Host"] == "localhost:8080"
    assert request.extensions["sni_hostname"] == "localhost"


@pytest.mark.parametrize("url", ["ftp://example.com/cat.png", "file:///etc/passwd", "javascript:alert(1)", "cat.png", "http://"])
def test_only_http_links_are_taken(url: str) -> None:
    with pytest.raises(ImageError, match="is not an http or https link"):
        public_image(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://no-such-host.invalid/cat.png", r"the host no-such-host\.invalid was not found"),
        ("http://xn--zz.invalid/cat.png", r"the host xn--zz\.invalid was not found"),  # punycode that does not decode
        ("http://xn--80ak6aa92e.invalid/cat.png", r"the host xn--80ak6aa92e\.invalid was not found"),
        ("http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/cat.png", "is not a valid link"),
        ("http://0177.0.0.1/cat.png", "is not a valid link"),  # octal with a leading zero: httpx refuses it
    ],
)
async def test_unusual_hosts_get_a_clear_refusal(url: str, message: str, http: httpx.AsyncClient) -> None:
    with pytest.raises(ImageError, match=message):
        await download_image(http, ImageSource("x.png", url), io.BytesIO(), limits=LIMITS)


@pytest.mark.parametrize(
    ("url", "listed"),
    [
        ("https://files.slack.com/files-pri/T1-F1/cat.png", True),
        ("https://FILES.SLACK.COM/files-pri/T1-F1/cat.png", True),
        ("https://xn--zz.slack.com/cat.png", False),  # invalid punycode: refused, not a crash
        ("https://xn--fles-5qa.slack.com/cat.png", False),  # "fîles": a look-alike name
        ("https://xn--80ak6aa92e.com/cat.png", True),  # a listed punycode host matches as written
        ("http://files.slack.com/cat.png", False),  # never the token over plain http
        ("https://files.slack.com.evil.example/cat.png", False),
        ("https://[::ffff:127.0.0.1]/cat.png", False),
        ("not a link", False),
    ],
)
async def test_slack_sends_its_token_only_to_listed_file_hosts(url: str, listed: bool) -> None:
    async with slack_adapter() as adapter:
        assert adapter._is_file_host(url) is listed


@asynccontextmanager
async def slack_adapter() -> AsyncIterator[SlackAdapter]:
    """A Slack adapter for its file checks alone: no service, never started."""
    adapter = SlackAdapter(
        None,  # type: ignore[arg-type]
        bot_token="xoxb-test",
        signing_secret="secret",
        api_url="http://127.0.0.1:9/api/",
        file_hosts=["files.slack.com", "xn--80ak6aa92e.com"],
        image_limits=LIMITS,
        store=MemoryStore(),
    )
    try:
        yield adapter
    finally:
        await adapter.stop()


async def test_a_slack_file_becomes_a_source_with_the_token_and_its_declared_size() -> None:
    file = {
        "id": "F1",
        "name": "cat.png",
        "mimetype": "image/png",
        "url_private": "https://files.slack.com/files-pri/T1-F1/cat.png",
        "size": 12_345,
    }
    async with slack_adapter() as adapter:
        [source], notes, refusals, documents = await adapter._attachments(adapter.bolt.client, [file])
        assert notes == refusals == [] and not documents
        assert (source.url, source.size) == (file["url_private"], 12_345)
        assert source.headers == {"Authorization": "Bearer xoxb-test"}
        assert source.html_refusal is not None and "files:read" in source.html_refusal
        # Refused unread, never queued.
        huge = await adapter._attachments(adapter.bolt.client, [{**file, "size": 30 * MB}])
        assert huge == ([], [], ["cat.png is over the 20 MB limit for images."], [])


# --- One memory budget for every image in flight ----------------------------------------------------


async def test_budget_queues_first_come_first_served() -> None:
    budget = ImageBudget(100)
    order: list[str] = []
    first = budget.hold(60)
    await first.__aenter__()
    waited: list[str] = []

    async def take(name: str, amount: int) -> None:
        async def on_wait() -> None:
            waited.append(name)

        async with budget.hold(amount, on_wait):
            order.append(name)
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(take("big", 60)), asyncio.create_task(take("small", 10))]
    await asyncio.sleep(0.01)
    # "small" would fit, but waits behind "big": nobody is overtaken for ever by smaller images.
    assert order == [] and waited == ["big", "small"] and budget.used == 60
    await first.__aexit__(None, None, None)
    await asyncio.gather(*tasks)
    assert order == ["big", "small"] and budget.used == 0


async def test_an_image_bigger_than_the_budget_goes_alone() -> None:
    budget = ImageBudget(100)
    async with budget.hold(250):
        assert budget.used == 250
        late = asyncio.create_task(_enter_and_leave(budget, 1))
        await asyncio.sleep(0.01)
        assert not late.done()
    await late
    assert budget.used == 0


async def _enter_and_leave(budget: ImageBudget, amount: int) -> None:
    async with budget.hold(amount):
        pass


async def test_decoding_grows_a_share_without_waiting_and_later_images_wait() -> None:
    budget = ImageBudget(100)
    async with budget.hold(20) as share:
        share.grow_to(150)  # the image being decoded never waits: the queue always drains
        assert budget.used == 150
        share.grow_to(30)  # never shrinks while held
        assert budget.used == 150
        late = asyncio.create_task(_enter_and_leave(budget, 1))
        await asyncio.sleep(0.01)
        assert not late.done()
    await late
    assert budget.used == 0


@pytest.mark.parametrize("release_at_once", [False, True])
async def test_a_request_that_gives_up_waiting_leaves_no_hole_in_the_queue(release_at_once: bool) -> None:
    budget = ImageBudget(100)
    async with budget.hold(100):
        quitter = asyncio.create_task(_enter_and_leave(budget, 50))
        patient = asyncio.create_task(_enter_and_leave(budget, 50))
        await asyncio.sleep(0.01)
        quitter.cancel()
        if not release_at_once:  # else room frees up before the quitter has even noticed
            await asyncio.sleep(0.01)
    await patient
    await asyncio.gather(quitter, return_exceptions=True)
    assert quitter.cancelled() and budget.used == 0


async def test_downloads_wait_for_room_in_the_budget(
    server: Server, http: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    running, most = [0], [0]
    real_download = images.download_image

    async def counting_download(*args: Any, **kwargs: Any) -> None:
        running[0] += 1
        most[0] = max(most[0], running[0])
        try:
            await real_download(*args, **kwargs)
        finally:
            running[0] -= 1

    monkeypatch.setattr(images, "download_image", counting_download)
    waits: list[int] = []

    async def on_wait() -> None:
        waits.append(1)

    sources = [ImageSource(f"n{i}.png", f"{server.base}/noise.png", size=len(NOISE)) for i in range(6)]
    budget = ImageBudget(2 * len(NOISE))
    prepared, refusals = await prepare_images(
        sources, ImageLimits(target_side=256), budget=budget, http=http, allow_loopback=True, on_wait=on_wait
    )
    assert [image.name for image in prepared] == [f"n{i}.png" for i in range(6)] and not refusals
    assert most[0] <= 2 and len(waits) >= 4 and budget.used == 0


async def test_downloads_are_spooled_to_disk_not_held_in_memory(server: Server, http: httpx.AsyncClient) -> None:
    """Eight 6 MB downloads at once: each keeps at most SPOOL_IN_MEMORY in memory, the rest on disk."""
    sources = [ImageSource(f"n{i}.png", f"{server.base}/noise.png") for i in range(8)]
    tracemalloc.start()
    try:
        prepared, refusals = await prepare_images(sources, ImageLimits(target_side=256), http=http, allow_loopback=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(prepared) == 8 and not refusals
    assert peak < 8 * len(NOISE) / 2, f"{peak / MB:.1f} MB of Python objects at peak"


# --- The vision path: fitting the model, waiting for room ------------------------------------------

VISION = "meta-llama/Llama-3.2-90B-Vision-Instruct"


def vision_service(client: IOClient, ledger: Ledger, http: httpx.AsyncClient, **config: object) -> Service:
    settings = ServiceConfig(model="meta-llama/Llama-3.3-70B-Instruct", vision_model=VISION, allow_loopback_images=True, **config)  # type: ignore[arg-type]
    return Service(client, ledger, load_quota_table(), settings, http, store=MemoryStore())


def sent_images(emulator: Emulator) -> list[Image.Image]:
    [call] = [r for r in emulator.requests if r.path == "/chat/completions"]
    parts = call.body["messages"][-1]["content"]
    urls = [part["image_url"]["url"] for part in parts if part["type"] == "image_url"]
    return [Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))) for url in urls]


async def test_ten_images_fit_the_default_vision_model(client, ledger, emulator, http) -> None:
    """The documented "up to 10": with the default settings, ten big images are scaled down to fit 16,000 tokens."""
    service = vision_service(client, ledger, http)  # max_tokens 1024, images up to 2048 px
    screenshot = encode(Image.new("RGB", (3000, 2000), "navy"), "PNG")
    request = Request(
        user="console:ana", text="what changed between these?", images=[(f"s{i}.png", screenshot) for i in range(10)]
    )
    reply = await service.handle(request)
    assert reply.outcome == "ok", reply.text
    seen = sent_images(emulator)
    assert len(seen) == 10 and all(max(image.size) <= 1064 for image in seen)
    [call] = [r for r in emulator.requests if r.path == "/chat/completions"]
    assert estimate_message_tokens(call.body["messages"]) + 1024 <= 16_000
    assert reply.usage is not None


async def test_one_image_keeps_the_configured_side(client, ledger, emulator, http) -> None:
    service = vision_service(client, ledger, http)
    photo_png = encode(Image.new("RGB", (3000, 2000), "navy"), "PNG")
    reply = await service.handle(Request(user="console:ana", text="what is it?", images=[("s.png", photo_png)]))
    assert reply.outcome == "ok", reply.text
    assert [image.size for image in sent_images(emulator)] == [(2048, 1365)]


async def test_images_that_cannot_fit_are_refused_before_any_download(client, ledger, emulator, http, server: Server) -> None:
    service = vision_service(client, ledger, http, max_tokens=14_000)  # leaves 2,000 tokens for ten images
    sources = [ImageSource(f"p{i}.png", f"{server.base}/cat.png") for i in range(10)]
    reply = await service.handle(Request(user="console:ana", text="compare", images=sources))
    assert reply.outcome == "refused"
    assert reply.text == (
        "10 images with this question do not fit Llama-3.2-90B-Vision-Instruct, which takes 16,000 tokens at most: "
        "please send at most 4 at once."
    )
    assert server.hits == [] and emulator.requests == []


async def test_waiting_for_room_is_shown_and_noted(client, ledger, emulator, http, server: Server) -> None:
    service = vision_service(client, ledger, http, image_budget_bytes=1)  # one image at a time, process-wide
    seen: list[list[str]] = [[], []]

    def progress(index: int) -> Progress:
        async def show(text: str) -> None:
            seen[index].append(text)

        return show

    first = asyncio.create_task(
        service.handle(
            Request(user="console:ana", text="a", images=[ImageSource("late.png", f"{server.base}/late.png")]), progress(0)
        )
    )
    await asyncio.sleep(0.1)  # the first request's download holds the budget
    second = await service.handle(Request(user="console:bob", text="b", images=[("cat.png", CAT)]), progress(1))
    assert (await first).outcome == "ok" and second.outcome == "ok"
    assert IMAGES_WAITING not in seen[0]
    assert seen[1][0] == IMAGES_WAITING and seen[1][-1].strip() == second.text  # the answer then replaces the note
    assert any(note.startswith("Your images waited") for note in second.notes)


@pytest.mark.parametrize("format", ["PNG", "JPEG", "WEBP"])
def test_an_image_is_estimated_from_its_own_size(format: str) -> None:
    # A JPEG's size may come after a big colour profile; Pillow reads a WEBP whole.
    data = encode(photo(900, 700), format, **({"icc_profile": bytes(200_000)} if format == "JPEG" else {}))
    url = f"data:image/{format.lower()};base64,{base64.b64encode(data).decode()}"
    message = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
    assert estimate_message_tokens([message]) == TOKENS_PER_MESSAGE + image_tokens(900, 700) == TOKENS_PER_MESSAGE + 33 * 25 + 2
    unreadable = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/x.png"}}]}
    assert estimate_message_tokens([unreadable]) == TOKENS_PER_MESSAGE + image_tokens(4096, 4096)


def test_a_sources_headers_never_show_in_its_text() -> None:
    source = ImageSource("cat.png", "https://files.slack.com/cat.png", headers={"Authorization": "Bearer xoxb-secret"})
    assert "xoxb-secret" not in repr(source) and "xoxb-secret" not in str(Request(user="console:a", text="", images=[source]))
