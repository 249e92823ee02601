"""Image pipeline: how fast images are normalised, and the memory people sending big images at once take.

Run from the project root: `python benchmarks/images.py`. Prints one JSON line:
- normalised_per_s: `prepare_image` on a generated 12-megapixel photo-like JPEG (4000x3000, about
  6 MB), one at a time, from the median of TURNS timings; normalised_per_s_prepare_images: ten copies
  through `prepare_images` at once, as a request with ten images is served;
- bare_pillow_per_s, ratio_to_bare_pillow: bare Pillow doing the same work in the same run, taking
  turns with the pipeline image by image (open, reduced-size JPEG decoding, the same resize, JPEG
  at the same quality), and the median over the turns of the pipeline's speed against it;
- the same three at_2000: with the long side bounded to 2000 px instead of 2048, libjpeg can decode
  the 4000-px photo at half size (at 2048 it cannot: half would be under the bound), so these show
  that the pipeline gets that speed-up as bare Pillow does;
- peak_rss_mb_1_request, peak_rss_mb_6_requests: peak resident memory (VmHWM) of a fresh
  process in which 1, then 6 people at once each send ten 20 MB PNGs through the service's whole
  vision path: the images downloaded from a local server, checked against the vision model,
  prepared within the service's image budget and sent to the API emulator. The PNG is a 3500x2600
  grainy photo saved with little compression: the worst case, every pixel decoded at full size
  (PNG has no reduced-size decoding);
- baseline_rss_mb: that process before the requests (interpreter, httpx, Pillow, the service);
  seconds_1_request, seconds_6_requests: how long the requests took; answered: replies that were
  answers (all of them, or the run did not measure what it claims);
- target_* and target_met.
The image server and the emulator run in a process of their own, so their memory is not counted: in
production the images come from Slack, Discord or the web, and the API is io.net. The peak is read
from /proc (VmHWM), not from getrusage's ru_maxrss, which Linux carries across exec: a child started
from this process would report this process's peak (about 100 MB after making the PNG) as its own.
"""

from __future__ import annotations

import asyncio
import io
import json
import multiprocessing
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from PIL import Image, ImageChops

from core.images import ImageLimits, ImageSource, prepare_image, prepare_images

TURNS = 20
IMAGES_PER_REQUEST = 10
PEOPLE = 6
TARGET_PEAK_RSS_MB_1 = 250
TARGET_PEAK_RSS_MB_6 = 400
TARGET_RATIO = 0.7  # the pipeline's normalisations per second against bare Pillow's
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


def bare_pillow(jpeg: bytes, bound: int) -> bytes:
    """The same decode, resize and encode as `prepare_image` does for a large photo, in bare Pillow.

    Reduced-size JPEG decoding (draft) included, since the pipeline uses it: like with like.
    """
    with Image.open(io.BytesIO(jpeg)) as image:
        target = fit(image.size, bound)
        image.draft(image.mode, target)
        resized = image.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    return encode(resized, "JPEG", quality=85)


def fit(size: tuple[int, int], bound: int) -> tuple[int, int]:
    scale = bound / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def normalised_per_s(limits: ImageLimits) -> dict[str, float]:
    """Normalisations per second (one at a time; ten through prepare_images), bare Pillow's beside them.

    The pipeline and bare Pillow take turns image by image, which goes first alternating, so that a
    busy machine slows both alike; the ratio is the median of the turns' ratios, robust to a burst
    of load that a ratio of two medians is not.
    """
    jpeg = encode(photo_like(4000, 3000, 24), "JPEG", quality=90)

    def pipeline() -> float:
        started = time.perf_counter()
        prepare_image(jpeg, "photo.jpg", limits)
        return time.perf_counter() - started

    def bare() -> float:
        started = time.perf_counter()
        bare_pillow(jpeg, limits.target_side)
        return time.perf_counter() - started

    pipeline(), bare()  # warm up
    turns = []
    for turn in range(TURNS):
        if turn % 2:
            bare_s, pipeline_s = bare(), pipeline()
        else:
            pipeline_s, bare_s = pipeline(), bare()
        turns.append((pipeline_s, bare_s))
    started = time.perf_counter()
    prepared, _ = asyncio.run(prepare_images([(f"{i}.jpg", jpeg) for i in range(10)], limits))
    batch = len(prepared) / (time.perf_counter() - started)
    return {
        "pipeline": 1 / statistics.median(pipeline_s for pipeline_s, _ in turns),
        "bare": 1 / statistics.median(bare_s for _, bare_s in turns),
        "ratio": statistics.median(bare_s / pipeline_s for pipeline_s, bare_s in turns),
        "batch": batch,
        "jpeg_bytes": len(jpeg),
    }


# --- Memory --------------------------------------------------------------------------------------


def serve(image: bytes, ready: Connection) -> None:
    """The image server and the API emulator, in their own process: sends (image URL, API URL) through `ready`."""
    from aiohttp import web  # imported here only, so the measured process does not carry it

    from emulator import Emulator

    async def photo(request: web.Request) -> web.Response:
        return web.Response(body=image, content_type="image/png")

    async def main() -> None:
        app = web.Application()
        app.router.add_get("/photo.png", photo)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        async with Emulator() as emulator:
            ready.send((f"http://127.0.0.1:{runner.addresses[0][1]}/photo.png", emulator.base_url))
            await asyncio.Event().wait()

    asyncio.run(main())


def serve_people(image_url: str, api_url: str, image_bytes: int, people: int) -> dict[str, float]:
    """Peak resident MB of this process while `people` each send IMAGES_PER_REQUEST images at once."""
    from core.client import IOClient
    from core.ledger import SQLiteLedger
    from core.quotas import load_quota_table
    from core.service import Request, Service, ServiceConfig

    async def run() -> dict[str, float]:
        with tempfile.TemporaryDirectory() as directory:
            ledger = await SQLiteLedger.open(f"{directory}/ledger.sqlite3", user_daily_tokens=10**9)
            async with httpx.AsyncClient() as http, IOClient(api_url, "io-v2-benchmark", timeout=300) as client:
                config = ServiceConfig(
                    model="meta-llama/Llama-3.3-70B-Instruct",
                    vision_model="meta-llama/Llama-3.2-90B-Vision-Instruct",
                    allow_loopback_images=True,
                    queue_timeout=600,
                )
                service = Service(client, ledger, load_quota_table(), config, http, store=ledger.store)
                baseline = memory_mb("VmRSS")
                started = time.perf_counter()
                replies = await asyncio.gather(
                    *(
                        service.handle(
                            Request(
                                user=f"console:person{person}",
                                text="What do these photos show?",
                                images=[
                                    ImageSource(f"{person}-{number}.png", image_url, size=image_bytes)
                                    for number in range(IMAGES_PER_REQUEST)
                                ],
                            )
                        )
                        for person in range(people)
                    )
                )
                seconds = time.perf_counter() - started
            await ledger.close()
        return {
            "baseline": baseline,
            "peak": memory_mb("VmHWM"),
            "seconds": seconds,
            "answered": sum(reply.outcome == "ok" for reply in replies),
        }

    return asyncio.run(run())


def memory_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status: VmRSS now, VmHWM its peak."""
    status = Path("/proc/self/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    assert found, field
    return int(found.group(1)) / 1024


def in_fresh_process(function: Callable[..., T], *args: object) -> T:
    """Run `function(*args)` in a new interpreter, so its peak memory is its own."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def main() -> None:
    # A 3500x2600 grainy photo saved as PNG: about 19 MB, every pixel decoded at full size.
    image = encode(photo_like(3500, 2600, 60), "PNG", compress_level=1)
    assert 18 * MB < len(image) <= LIMITS.max_bytes, len(image)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(image, sender), daemon=True)
    server.start()
    try:
        image_url, api_url = receiver.recv()
        one = in_fresh_process(serve_people, image_url, api_url, len(image), 1)
        many = in_fresh_process(serve_people, image_url, api_url, len(image), PEOPLE)
    finally:
        server.terminate()
        server.join()
    speed = normalised_per_s(LIMITS)
    speed_at_2000 = normalised_per_s(ImageLimits(target_side=2000))
    print(
        json.dumps(
            {
                "normalised_per_s": round(speed["pipeline"], 2),
                "bare_pillow_per_s": round(speed["bare"], 2),
                "ratio_to_bare_pillow": round(speed["ratio"], 2),
                "normalised_per_s_prepare_images": round(speed["batch"], 2),
                "normalised_per_s_at_2000": round(speed_at_2000["pipeline"], 2),
                "bare_pillow_per_s_at_2000": round(speed_at_2000["bare"], 2),
                "ratio_to_bare_pillow_at_2000": round(speed_at_2000["ratio"], 2),
                "photo_megapixels": 12,
                "photo_mb": round(speed["jpeg_bytes"] / MB, 2),
                "images_per_request": IMAGES_PER_REQUEST,
                "png_mb_each": round(len(image) / MB, 1),
                "people": PEOPLE,
                "baseline_rss_mb": round(one["baseline"], 1),
                "peak_rss_mb_1_request": round(one["peak"], 1),
                "peak_rss_mb_6_requests": round(many["peak"], 1),
                "seconds_1_request": round(one["seconds"], 1),
                "seconds_6_requests": round(many["seconds"], 1),
                "answered": f"{int(one['answered'])}/1, {int(many['answered'])}/{PEOPLE}",
                "target_peak_rss_mb_1_request": TARGET_PEAK_RSS_MB_1,
                "target_peak_rss_mb_6_requests": TARGET_PEAK_RSS_MB_6,
                "target_ratio_to_bare_pillow": TARGET_RATIO,
                "target_met": one["peak"] < TARGET_PEAK_RSS_MB_1
                and many["peak"] < TARGET_PEAK_RSS_MB_6
                and min(speed["ratio"], speed_at_2000["ratio"]) >= TARGET_RATIO,
            }
        )
    )


if __name__ == "__main__":
    main()
