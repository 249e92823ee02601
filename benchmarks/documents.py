"""Attached PDFs: how fast their text is read, and how long the event loop waits meanwhile.

Run from the project root: `python benchmarks/documents.py`. Prints one JSON line:
- pages_per_s: a 200-page PDF of text (the page cap) through `read_documents`, as the service reads
  an attachment: downloaded from a local server, spooled, read on the PDF threads; the median of TURNS;
- bare_pages_per_s, ratio_to_bare: bare pypdf in the same run, taking turns with the pipeline, reading
  the same bytes from memory on a thread (`PdfReader` and `extract_text` page by page), and the
  pipeline's median speed against it;
- loop_lag_ms_p99, loop_lag_ms_max_median: while the pipeline reads, a task that sleeps 5 ms at a
  time records how late it wakes (what every other person served by the process waits): the 99th
  percentile over all turns, and the median of each turn's longest wait; bare_loop_lag_ms_p99 and
  bare_loop_lag_ms_max_median: the same while bare pypdf reads on a thread, the least a thread can
  do, as it shares the interpreter's lock with the loop (on a loaded machine a thread that holds the
  lock can be descheduled, so single waits of a few hundred ms happen to both alike);
- loop_lag_ms_if_on_loop: the same read done on the event loop itself, which is the wait the PDF
  threads save (the whole read);
- target_* and target_met.
"""

from __future__ import annotations

import asyncio
import io
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
import pypdf
from aiohttp import web

from core.documents import DocumentKind, DocumentLimits, DocumentSource, read_documents
from core.images import ImageBudget
from tests.pdfs import pdf_bytes

TURNS = 7
PAGES = 200
TICK = 0.005
TARGET_RATIO = 0.8  # the pipeline's pages per second against bare pypdf's
TARGET_LAG_MS = 100  # the loop's 99th-percentile wait while a PDF is read


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def bare_read(data: bytes) -> int:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return sum(len(page.extract_text() or "") for page in reader.pages)


async def lag_while(work: asyncio.Future | asyncio.Task) -> list[float]:
    """How late, in ms, a 5-ms sleep wakes each time until `work` is done."""
    lags: list[float] = []
    while not work.done():
        start = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append((time.perf_counter() - start - TICK) * 1000)
    return lags


async def main() -> None:
    data = pdf_bytes([f"Page {number}. " + "The quarterly figures rose and costs fell. " * 60 for number in range(PAGES)])

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=data, content_type="application/pdf")

    app = web.Application()
    app.router.add_get("/report.pdf", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    source = DocumentSource(
        "report.pdf", f"http://127.0.0.1:{runner.addresses[0][1]}/report.pdf", DocumentKind.PDF, size=len(data)
    )
    budget = ImageBudget(128 * 1024 * 1024)
    pipeline: list[float] = []
    bare: list[float] = []
    lags: list[list[float]] = []
    bare_lags: list[list[float]] = []
    async with httpx.AsyncClient() as http:
        for _ in range(TURNS):
            started = time.perf_counter()
            bare_reading = asyncio.ensure_future(asyncio.to_thread(bare_read, data))
            bare_lags.append(await lag_while(bare_reading))
            await bare_reading
            bare.append(time.perf_counter() - started)

            started = time.perf_counter()
            reading = asyncio.ensure_future(
                read_documents([source], DocumentLimits(), http=http, budget=budget, allow_loopback=True)
            )
            lags.append(await lag_while(reading))
            [document], refusals = await reading
            pipeline.append(time.perf_counter() - started)
            assert not refusals and document.text.count("Page ") == PAGES
        started = time.perf_counter()
        bare_read(data)  # on the loop: every other request would wait this long
        on_loop_ms = (time.perf_counter() - started) * 1000
    await runner.cleanup()

    pages_per_s = PAGES / statistics.median(pipeline)
    bare_per_s = PAGES / statistics.median(bare)
    ratio = statistics.median(b / p for p, b in zip(pipeline, bare))
    lag_p99 = p99([lag for turn in lags for lag in turn])
    lag_max_median = statistics.median(max(turn) for turn in lags)
    print(
        json.dumps(
            {
                "pdf_bytes": len(data),
                "pages": PAGES,
                "pages_per_s": round(pages_per_s, 1),
                "bare_pages_per_s": round(bare_per_s, 1),
                "ratio_to_bare": round(ratio, 2),
                "loop_lag_ms_p99": round(lag_p99, 1),
                "loop_lag_ms_max_median": round(lag_max_median, 1),
                "bare_loop_lag_ms_p99": round(p99([lag for turn in bare_lags for lag in turn]), 1),
                "bare_loop_lag_ms_max_median": round(statistics.median(max(turn) for turn in bare_lags), 1),
                "loop_lag_ms_if_on_loop": round(on_loop_ms, 1),
                "target_ratio": TARGET_RATIO,
                "target_lag_ms": TARGET_LAG_MS,
                "target_met": ratio >= TARGET_RATIO and lag_p99 <= TARGET_LAG_MS,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
