"""Image pipeline: how fast images are normalised, and the memory ten big downloads take at once.

Run from the project root: `python benchmarks/images.py`. Prints one JSON line:
- normalised_per_s: `prepare_image` on a generated 12-megapixel photo-like JPEG (4000x3000, about
  6 MB), one at a time, median of ROUNDS rounds; normalised_per_s_prepare_images: ten copies
  through `prepare_images` at once, as a request with ten images is served;
- peak_rss_mb: peak resident memory (VmHWM) of a fresh process that runs ten downloads of a 20 MB
  image at once from a local aiohttp server, each through `download_image` then `prepare_images`,
  as ten people posting at the same moment would. The image is a 45-megapixel camera-sized
  JPEG; peak_rss_mb_png repeats it with a 20 MB PNG, the worst case (no reduced-size decoding);
- baseline_rss_mb: that process before the downloads (interpreter, httpx, Pillow), and
  downloaded_mb: the ten bodies, which are all held at once, so the peak cannot be below their sum;
- target_peak_rss_mb and target_met (for the JPEG run).
The server runs in a process of its own, so its copy of the data is not counted: in production the
image comes from Slack, Discord or the web.
"""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import re
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from PIL import Image, ImageChops

from core.images import ImageLimits, download_image, prepare_image, prepare_images

ROUNDS = 5
IMAGES_PER_ROUND = 4
DOWNLOADS = 10
TARGET_PEAK_RSS_MB = 250
LIMITS = ImageLimits()
MB = 1024 * 1024
T = TypeVar("T")


def photo_like(width: int, height: int, noise: int) -> Image.Image:
    """Smooth gradients plus sensor-like grain: many colours, and file sizes like a camera's."""
    grain = Image.effect_noise((width, height), noise)
    return Image.merge(
        "RGB",
        (
            ImageChops.add(Image.linear_gradient("L").resize((width, height)), grain, offset=-128),
            ImageChops.add(Image.radial_gradient("L").resize((width, height)), grain, offset=-128),
            grain,
        ),
    )


def encode(image: Image.Image, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **options)
    return buffer.getvalue()


# --- Throughput ----------------------------------------------------------------------------------


def normalised_per_s() -> tuple[float, float, int]:
    """Normalisations per second (one at a time; ten through prepare_images), and the JPEG's size."""
    jpeg = encode(photo_like(4000, 3000, 24), "JPEG", quality=90)
    prepare_image(jpeg, "warm-up.jpg", LIMITS)
    rates = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(IMAGES_PER_ROUND):
            prepare_image(jpeg, "photo.jpg", LIMITS)
        rates.append(IMAGES_PER_ROUND / (time.perf_counter() - started))
    started = time.perf_counter()
    prepared, _ = asyncio.run(prepare_images([(f"{i}.jpg", jpeg) for i in range(10)], LIMITS))
    batch = len(prepared) / (time.perf_counter() - started)
    return statistics.median(rates), batch, len(jpeg)


# --- Memory --------------------------------------------------------------------------------------


def serve(images: dict[str, bytes], ready: Connection) -> None:
    """The image server, in its own process: sends its port through `ready`, serves until killed."""
    from aiohttp import web  # imported here only, so the measured process does not carry it

    async def image(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        return web.Response(body=images[name], content_type=f"image/{name.rsplit('.', 1)[1]}")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/{name}", image)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ready.send(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


def memory_kb(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE).group(1))


def peak_rss_during_downloads(url: str) -> tuple[float, float]:
    """(baseline, peak) resident MB of this process around DOWNLOADS downloads of `url` at once."""

    async def run() -> float:
        async with httpx.AsyncClient() as http:
            baseline = memory_kb("VmRSS") / 1024

            async def one(number: int) -> None:
                name = f"upload-{number}"
                data = await download_image(http, url, name=name, limits=LIMITS)
                prepared, refusals = await prepare_images([(name, data)], LIMITS)
                assert prepared and not refusals, refusals

            await asyncio.gather(*(one(number) for number in range(DOWNLOADS)))
            return baseline

    baseline = asyncio.run(run())
    return baseline, memory_kb("VmHWM") / 1024


def in_fresh_process(function: Callable[..., T], *args: object) -> T:
    """Run `function(*args)` in a new interpreter, so its peak memory is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    images = {
        # 8192x5464 (45 MP) at quality 92: about 19 MB, what a high-resolution camera writes.
        "photo.jpg": encode(photo_like(8192, 5464, 14), "JPEG", quality=92),
        # A 3500x2600 grainy photo saved as PNG: about 19 MB, every pixel decoded at full size.
        "photo.png": encode(photo_like(3500, 2600, 60), "PNG", compress_level=1),
    }
    assert all(18 * MB < len(data) <= LIMITS.max_bytes for data in images.values()), [len(v) for v in images.values()]
    receiver, sender = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(images, sender), daemon=True)
    server.start()
    try:
        port = receiver.recv()
        baseline, peak = in_fresh_process(peak_rss_during_downloads, f"http://127.0.0.1:{port}/photo.jpg")
        _, peak_png = in_fresh_process(peak_rss_during_downloads, f"http://127.0.0.1:{port}/photo.png")
    finally:
        server.terminate()
        server.join()
    per_s, batch_per_s, jpeg_bytes = normalised_per_s()
    print(json.dumps({
        "normalised_per_s": round(per_s, 2),
        "normalised_per_s_prepare_images": round(batch_per_s, 2),
        "photo_megapixels": 12,
        "photo_mb": round(jpeg_bytes / MB, 2),
        "downloads": DOWNLOADS,
        "download_mb_each": round(len(images["photo.jpg"]) / MB, 1),
        "downloaded_mb": round(DOWNLOADS * len(images["photo.jpg"]) / MB, 1),
        "baseline_rss_mb": round(baseline, 1),
        "peak_rss_mb": round(peak, 1),
        "peak_rss_mb_png": round(peak_png, 1),
        "target_peak_rss_mb": TARGET_PEAK_RSS_MB,
        "target_met": peak < TARGET_PEAK_RSS_MB,
    }))


if __name__ == "__main__":
    main()
